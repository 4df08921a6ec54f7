"""TimmClassifier: shapes, gradients, fitting, offline pretrained errors, local weights, predict."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import detectors.timm_classifier as tc
from deepsift.core.errors import UserError
from deepsift.core.hub import sha256_file
from detectors.timm_classifier import TimmClassifier

SMALL = {"size": 32}


@pytest.fixture(scope="module")
def detector() -> TimmClassifier:
    torch.manual_seed(0)
    return TimmClassifier("resnet18", preprocessing=SMALL)


@pytest.mark.parametrize("size", [64, 224])
def test_forward_shapes(detector: TimmClassifier, size: int) -> None:
    detector.eval()
    with torch.no_grad():
        out = detector({"image": torch.randn(2, 3, size, size)})
    assert out["logits"].shape == (2,)
    assert out["logits"].dtype == torch.float32


def test_backward_reaches_every_parameter(detector: TimmClassifier) -> None:
    detector.train()
    detector.zero_grad(set_to_none=True)
    batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.tensor([0.0, 1.0])}
    loss = detector.training_step(batch)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in detector.named_parameters() if p.requires_grad]
    assert trainable and detector.fits_by_gradient
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    detector.zero_grad(set_to_none=True)


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    det = TimmClassifier("resnet18")
    optimizer, scheduler = det.configure_optimizers()  # the CNNSpot default: Adam
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    optimizer = torch.optim.Adam(det.parameters(), lr=1e-3)
    batch = {"image": torch.randn(8, 3, 32, 32), "label": torch.tensor([0.0, 1.0] * 4)}
    det.train()
    for _step in range(100):
        loss = det.training_step(batch)["loss"]
        if loss.item() < 0.02:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02


def test_optimizer_partial_from_config() -> None:
    import functools

    det = TimmClassifier(optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)


def test_pretrained_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        tc, "_find_cached_weights", lambda backbone: None
    )  # whatever is cached here
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        TimmClassifier("resnet18", pretrained=True)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "pretrained=true needs ImageNet weights for resnet18 from the Hugging Face hub, which "
        "cannot be reached; pass detector.pretrained_file=/path/to/resnet18.safetensors (or .pth) "
        "or set detector.pretrained=false"
    )


def test_pretrained_unreachable_hub_without_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(tc, "_find_cached_weights", lambda backbone: None)
    monkeypatch.setattr("deepsift.core.hub.hub_reachable", lambda *a, **k: False)
    with pytest.raises(UserError, match=r"cannot be reached; pass detector\.pretrained_file="):
        TimmClassifier("resnet18", pretrained=True)


def _imagenet_like_weights(tmp_path: Path, suffix: str) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    source = timm.create_model("resnet18", num_classes=1000)  # an ImageNet-shaped head
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path, state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file_loads_backbone(tmp_path: Path, suffix: str) -> None:
    path, state = _imagenet_like_weights(tmp_path, suffix)
    det = TimmClassifier("resnet18", pretrained=True, pretrained_file=str(path))
    loaded = det.model.state_dict()
    backbone_keys = [k for k in state if not k.startswith("fc.")]
    assert backbone_keys
    for key in backbone_keys:
        assert torch.equal(loaded[key], state[key]), key
    assert loaded["fc.weight"].shape == (1, 512)  # the ImageNet head was replaced


def _hf_cache_layout(tmp_path: Path, source: Path, blob_name: str) -> Path:
    """A Hugging Face cache entry: snapshots/<rev>/model.safetensors -> blobs/<sha256>."""
    blob = tmp_path / "blobs" / blob_name
    blob.parent.mkdir()
    source.rename(blob)
    link = tmp_path / "snapshots" / "rev" / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    return link


def test_cached_weights_are_used_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = _imagenet_like_weights(tmp_path, ".safetensors")
    cached = _hf_cache_layout(tmp_path, path, sha256_file(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tc, "_find_cached_weights", lambda backbone: cached)
    det = TimmClassifier("resnet18", pretrained=True)
    assert torch.equal(det.model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_corrupt_cached_weights_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _imagenet_like_weights(tmp_path, ".safetensors")
    cached = _hf_cache_layout(tmp_path, path, "0" * 64)
    monkeypatch.setattr(tc, "_find_cached_weights", lambda backbone: cached)
    with pytest.raises(UserError, match=r"cached ImageNet weights .* are corrupt .*expected 0000"):
        TimmClassifier("resnet18", pretrained=True)


def test_pretrained_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match=f"pretrained_file {missing} does not exist"):
        TimmClassifier(pretrained=True, pretrained_file=str(missing))
    other = tmp_path / "other.pth"
    torch.save({"something.else": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="does not fit timm backbone resnet18") as info:
        TimmClassifier(pretrained=True, pretrained_file=str(other))
    assert "\n" not in str(info.value)


def test_unknown_backbone_is_a_user_error() -> None:
    with pytest.raises(
        UserError, match=r"unknown timm backbone 'resnet18x'.*timm\.list_models\('resnet\*'\)"
    ):
        TimmClassifier("resnet18x")
    with pytest.raises(UserError, match=r"no pretrained tag 'resnet18\.bogus'.*list_pretrained"):
        TimmClassifier("resnet18.bogus")


def test_predict_on_pil_array_and_path(detector: TimmClassifier, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    pil = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))  # smaller: padded
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (50, 36), dtype=np.uint8)).save(path)  # grayscale file
    for images, count in ([pil, 1], [array, 1], [str(path), 1], [[pil, array, path], 3]):
        probs = detector.predict(images, batch_size=2, device="cpu")
        assert probs.shape == (count,)
        assert np.all((probs >= 0) & (probs <= 1))

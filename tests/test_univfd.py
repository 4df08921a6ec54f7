"""UnivFD: official head file, an independent forward pass, frozen backbone, offline errors."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.layers.clip import build_visual
from detectors.univfd import UnivFD

open_clip = pytest.importorskip("open_clip")  # PyPI open_clip_torch

#: a CLIP small enough for CPU tests (random weights)
TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32}
TINY_TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
TINY_EMBED = 16
TINY = {"model_name": "ViT-L-14", "vision_cfg": TINY_VISION, "embed_dim": TINY_EMBED}

# OpenAI CLIP ViT-L/14 image encoder (width 1024, 24 layers, patch 14, 224 px, 768-d
# projection), counted from its state dict:
W, LAYERS, TOKENS = 1024, 24, (224 // 14) ** 2 + 1
PER_BLOCK = 2 * 2 * W + (3 * W * W + 3 * W) + (W * W + W) + (4 * W * W + 4 * W) + (4 * W * W + W)
REFERENCE_PARAMETERS = (
    3 * 14 * 14 * W + W + TOKENS * W + 2 * W + LAYERS * PER_BLOCK + 2 * W + W * 768
)
assert REFERENCE_PARAMETERS == 303_966_208

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip(seed: int = 0, quick_gelu: bool = True) -> nn.Module:
    """A whole open_clip CLIP (image and text towers), as in open_clip_pytorch_model.bin."""
    torch.manual_seed(seed)
    return open_clip.CLIP(TINY_EMBED, TINY_VISION, TINY_TEXT, quick_gelu=quick_gelu).eval()


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(260, 300), (224, 224), (180, 240)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)
    ]


def reference_input(image: Image.Image) -> torch.Tensor:
    """validate.py: CenterCrop(224), ToTensor, CLIP Normalize (no resize)."""
    pipeline = transforms.Compose(
        [transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    return pipeline(image)


def test_vit_l14_parameter_count_on_meta() -> None:
    with torch.device("meta"):
        visual = build_visual("ViT-L-14", quick_gelu=True)
    count = sum(p.numel() for p in visual.parameters())
    assert abs(count - REFERENCE_PARAMETERS) <= 0.01 * REFERENCE_PARAMETERS
    assert count == REFERENCE_PARAMETERS
    assert visual.output_dim == 768


def test_official_head_matches_independent_forward(tmp_path: Path) -> None:
    clip = tiny_clip()
    backbone = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), backbone)
    torch.manual_seed(1)
    head = {"weight": torch.randn(1, TINY_EMBED), "bias": torch.tensor([0.3])}
    head_file = tmp_path / "fc_weights.pth"
    torch.save(head, head_file)

    det = load_detector("univfd", weights=head_file, backbone_file=str(backbone), **TINY)
    pics = images(3)
    got = torch.from_numpy(det.predict(pics, device="cpu"))

    x = torch.stack([reference_input(p) for p in pics])
    with torch.no_grad():
        features = clip.encode_image(x)  # the projected embedding, not normalised
    logits = features @ head["weight"].T + head["bias"]
    torch.testing.assert_close(got, torch.sigmoid(logits.squeeze(1)), atol=1e-5, rtol=1e-5)
    assert set(det.state_dict()) == {"fc.weight", "fc.bias"}


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_backbone_file(tmp_path: Path) -> None:
    """OpenAI's ViT-L-14.pt is a TorchScript archive of the whole model."""
    clip = tiny_clip(seed=3)

    class Images(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = clip.visual

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x)

    example = torch.zeros(1, 3, 224, 224)
    archive = tmp_path / "ViT-L-14.pt"
    torch.jit.trace(Images().eval(), example, check_trace=False).save(str(archive))
    det = UnivFD(backbone_file=str(archive), **TINY)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(det.features(x), clip.encode_image(x), atol=1e-5, rtol=1e-5)


def test_wrong_head_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1, 2048)}, bad)
    with pytest.raises(UserError, match=r"not a UnivFD head.*backbone_file"):
        load_detector("univfd", weights=bad, random_init=True, **TINY)
    shaped = tmp_path / "fc_other.pth"
    torch.save({"weight": torch.zeros(1, 512), "bias": torch.zeros(1)}, shaped)
    with pytest.raises(UserError, match="other shapes"):
        load_detector("univfd", weights=shaped, random_init=True, **TINY)


def test_offline_without_backbone_file_fails_fast_and_clearly(tmp_path: Path) -> None:
    det = load_detector("univfd")  # builds instantly: the encoder is resolved on first use
    assert det.feature_dim == 768
    start = time.monotonic()
    with pytest.raises(UserError, match=r"detector\.backbone_file="):
        det.predict(images(1), device="cpu")
    assert time.monotonic() - start < 10
    with pytest.raises(UserError, match="does not exist"):
        UnivFD(backbone_file=str(tmp_path / "missing.pt"), **TINY).load_backbone()


def test_native_size_forward_and_frozen_backbone() -> None:
    det = UnivFD(random_init=True, **TINY)
    batch = {
        "image": torch.stack([det.transform({"image": p})["image"] for p in images(3)]),
        "label": torch.tensor([0.0, 1.0, 1.0]),
    }
    assert batch["image"].shape == (3, 3, 224, 224)
    train_view = det.transform({"image": images(1)[0]}, train=True)["image"]
    assert train_view.shape == (3, 224, 224)
    det.train()
    loss = det.training_step(batch)["loss"]
    loss.backward()
    assert [name for name, _ in det.named_parameters()] == ["fc.weight", "fc.bias"]
    assert det.fc.weight.grad is not None and det.fc.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in det.backbone.parameters())
    assert not det.backbone.training
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == TINY_EMBED + 1


def test_overfits_a_tiny_batch() -> None:
    det = UnivFD(random_init=True, seed=2, **TINY)
    pics = images(4, seed=5)
    batch = {
        "image": torch.stack([det.transform({"image": p})["image"] for p in pics]),
        "label": torch.tensor([0.0, 1.0] * 2),
    }
    before = [p.detach().clone() for p in det.backbone.parameters()]
    optimizer = torch.optim.Adam(det.parameters(), lr=0.05)
    det.train()
    for _ in range(300):
        optimizer.zero_grad()
        loss = det.training_step(batch)["loss"]
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    assert all(torch.equal(a, b) for a, b in zip(before, det.backbone.parameters(), strict=True))


def test_random_init_is_reproducible_so_checkpoints_rebuild() -> None:
    a, b = UnivFD(random_init=True, **TINY), UnivFD(random_init=True, **TINY)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(a.features(x), b.features(x))


def test_official_head_keeps_validate_protocol_and_warns_on_an_override(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    head = tmp_path / "fc_weights.pth"
    torch.save({"weight": torch.zeros(1, TINY_EMBED), "bias": torch.zeros(1)}, head)
    with caplog.at_level(logging.INFO, logger="detectors.base"):
        det = load_detector("univfd", weights=head, random_init=True, **TINY)
    assert det.preprocessing.resize == "none" and det.preprocessing.crop == "center"
    assert any("UnivFD fc_weights.pth weights" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detectors.base"):
        det = load_detector(
            "univfd", weights=head, random_init=True, preprocessing={"resize": "shorter"}, **TINY
        )
    assert det.preprocessing.resize == "shorter"  # the user's choice wins
    assert any("departs from the protocol" in r.getMessage() for r in caplog.records)

"""AIDE: the patch selection against the authors' pipeline and an independent DCT, the
official checkpoint layout, an independent forward pass, the authors' whole model (made
small) on the same file, training."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.fft import dctn
from torchvision import transforms
from torchvision.models.resnet import Bottleneck, ResNet

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.aide import AIDE, TRUNK, build_trunk, select_windows, srm_filters
from detectors.formats import formats_for
from detectors.inspect import inspect_file
from tests.detector_checks import overfit, parameters_without_gradient, random_images
from tests.detector_checks import transformed_batch as engine_batch
from tests.official.images import reference_images
from tests.official.weights import HERE, seeded_state_dict

timm = pytest.importorskip("timm")
pytest.importorskip("open_clip")

REFERENCE = json.loads((HERE / "aide" / "aide_reference.json").read_text())
TINY_CONVNEXT = {"timm_model_name": "convnext_atto"}
TINY = {"convnext_cfg": TINY_CONVNEXT, "resnet_layers": [1, 1, 1, 1]}
SMALL = {**TINY, "resnet_width": 8}  # where no torchvision ResNet-50 is compared
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

# parameters of the authors' AIDE_Model (models/AIDE.py) as its state dict holds them:
# two ResNet-50s with a 30-channel stem (fc to 1000 classes included), the 30 SRM
# filters over RGB, the OpenCLIP ConvNeXt-XXLarge trunk, convnext_proj and fc
RESNET50_30 = 25_557_032 + 64 * 27 * 49
SRM = 30 * 3 * 25
CONVNEXT_XXL_TRUNK = 843_398_016  # timm convnext_xxlarge, classifier reset, head norm kept
HEADS = (3072 * 256 + 256) + (2304 * 1024 + 1024) + (1024 * 2 + 2)
REFERENCE_PARAMETERS = 2 * RESNET50_30 + SRM + CONVNEXT_XXL_TRUNK + HEADS
assert REFERENCE_PARAMETERS == 897_832_732


def picture_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def independent_windows(x: torch.Tensor) -> list[int]:
    """Lowest, highest, 2nd lowest, 2nd highest window by scipy's orthonormal DCT-II and
    explicitly counted bands (both ends inclusive), float64, numpy's stable argsort."""
    image = x.double().numpy()
    n, step = 32, 16
    weights = np.zeros((n, n))
    for g in range(6):
        start, end = 2 * n / 6 * g, 2 * n / 6 * (g + 1)
        band = np.array(
            [[1.0 if start <= i + j <= end else 0.0 for j in range(n)] for i in range(n)]
        )
        weights += 2.0**g * band / band.sum()
    windows = np.lib.stride_tricks.sliding_window_view(image, (3, n, n))[0, ::step, ::step]
    coefficients = dctn(windows, type=2, norm="ortho", axes=(-2, -1))
    scores = (np.log1p(np.abs(coefficients)) * weights).sum(axis=(-3, -2, -1)).reshape(-1)
    order = np.argsort(scores, kind="stable")
    return [int(order[0]), int(order[-1]), int(order[1]), int(order[-2])]


def test_srm_bank_is_the_references() -> None:
    bank = srm_filters()
    assert bank.shape == (30, 5, 5)
    torch.testing.assert_close(bank, torch.tensor(REFERENCE["srm"]), rtol=0, atol=1e-7)
    torch.testing.assert_close(bank.sum(dim=(1, 2)), torch.zeros(30), rtol=0, atol=1e-6)


@pytest.mark.parametrize("index", range(len(REFERENCE["selections"])))
def test_patch_selection_matches_the_reference_and_an_independent_dct(index: int) -> None:
    array = reference_images(0)[index]
    expected = REFERENCE["selections"][index]
    assert expected["size"] == [array.shape[1], array.shape[0]]
    assert expected["match_error"] < 1e-5  # the reference's patches are the windows' pixels
    x = picture_tensor(array)
    got = select_windows(x).tolist()
    assert got == expected["windows"]
    assert got == independent_windows(x)


def test_views_match_the_reference_pipeline() -> None:
    det = AIDE(random_init=True, **SMALL)
    positions = REFERENCE["sample_positions"]
    for array, expected in zip(reference_images(0), REFERENCE["selections"], strict=True):
        stack = det.transform({"image": Image.fromarray(array)})["image"]
        assert stack.shape == (5, 3, 256, 256)
        for number, (view, summary) in enumerate(
            zip(stack.double(), expected["views"], strict=True)
        ):
            # the patches (views 0-3) differ by the reference's DCT round trip (< 3e-6
            # after normalisation), the picture (view 4) by float rounding only
            atol = 1e-6 if number == 4 else 5e-6
            assert float(view.sum()) == pytest.approx(summary["sum"], abs=atol * view.numel())
            assert float((view * view).sum()) == pytest.approx(summary["sum_sq"], rel=3e-6)
            samples = [float(view[c % 3, y, x]) for c, y, x in positions]
            np.testing.assert_allclose(samples, summary["samples"], rtol=0, atol=atol)


def test_full_size_layout_is_the_authors_and_the_parameter_count_on_meta() -> None:
    with torch.device("meta"):
        det = AIDE(random_init=True)
        trunk = build_trunk("convnext_xxlarge")
    ours = {k: list(v.shape) for k, v in det.state_dict().items()}
    ours.update({TRUNK + k: list(v.shape) for k, v in trunk.state_dict().items()})
    theirs = {k: shape for k, shape, _ in REFERENCE["keys"]}
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert ours == theirs
    count = sum(p.numel() for p in det.parameters()) + sum(p.numel() for p in trunk.parameters())
    assert count == REFERENCE_PARAMETERS
    assert sum(p.numel() for p in trunk.parameters()) == CONVNEXT_XXL_TRUNK
    assert trunk.num_features == 3072


def official_file(tmp_path: Path, det: AIDE, seed: int = 0) -> tuple[Path, dict]:
    """The layout utils.save_model writes, ConvNeXt included, with an args Namespace."""
    trunk = build_trunk("convnext_xxlarge", TINY_CONVNEXT)
    spec = [
        [k, list(v.shape), "float32"] for k, v in det.state_dict().items() if v.is_floating_point()
    ]
    spec += [[TRUNK + k, list(v.shape), "float32"] for k, v in trunk.state_dict().items()]
    state = seeded_state_dict(spec, seed=seed)
    state["hpf.hpf.weight"] = srm_filters()[:, None].repeat(1, 3, 1, 1)
    for key, value in det.state_dict().items():
        if not value.is_floating_point():
            state[key] = torch.zeros_like(value)  # num_batches_tracked
    path = tmp_path / "progan_train.pth"
    payload = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 4,
        "scaler": {},
        "args": argparse.Namespace(model="AIDE", blr=1e-4, batch_size=32, resume=""),
    }
    torch.save(payload, path)
    return path, state


def independent_logits(state: dict, pictures: list[np.ndarray]) -> torch.Tensor:
    """torchvision's ResNet and timm's ConvNeXt with the file's tensors; the reference's views."""

    def resnet(prefix: str) -> torch.nn.Module:
        net = ResNet(Bottleneck, [1, 1, 1, 1])
        net.conv1 = torch.nn.Conv2d(30, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        net.fc = torch.nn.Identity()
        return net.eval()

    low_net, high_net = resnet("model_min."), resnet("model_max.")
    convnext = timm.create_model("convnext_atto", num_classes=0)
    convnext.load_state_dict({k[len(TRUNK) :]: v for k, v in state.items() if k.startswith(TRUNK)})
    convnext.eval()
    resize = transforms.Compose([transforms.Resize([256, 256]), transforms.Normalize(*IMAGENET)])
    srm = state["hpf.hpf.weight"]
    out = []
    with torch.no_grad():
        for array in pictures:
            x = picture_tensor(array)
            columns = (x.shape[2] - 32) // 16 + 1
            crops = []
            for index in independent_windows(x):
                top, left = divmod(index, columns)
                crops.append(resize(x[:, top * 16 : top * 16 + 32, left * 16 : left * 16 + 32]))
            artifacts = [
                (low_net if i % 2 == 0 else high_net)(F.conv2d(c[None], srm, padding=2))
                for i, c in enumerate(crops)
            ]
            raw = transforms.Resize([256, 256])(x)
            semantic = convnext.head.norm(
                convnext.forward_features(transforms.Normalize(*CLIP)(raw)[None])
            )
            semantic = semantic.mean(dim=(2, 3)) @ state["convnext_proj.0.weight"].T
            semantic = semantic + state["convnext_proj.0.bias"]
            h = torch.cat([semantic, sum(artifacts) / 4], dim=1)
            h = F.gelu(h @ state["fc.fc1.weight"].T + state["fc.fc1.bias"])
            z = h @ state["fc.fc2.weight"].T + state["fc.fc2.bias"]
            out.append(z[0, 1] - z[0, 0])
    return torch.stack(out)


def test_official_checkpoint_loads_strictly_and_matches_an_independent_forward(
    tmp_path: Path,
) -> None:
    path, state = official_file(tmp_path, AIDE(random_init=True, **TINY))
    assert [f.detectors for f in formats_for(state)] == [("aide",)]
    assert [f.detectors for f in inspect_file(path).formats] == [("aide",)]  # args and all
    det = load_detector("aide", weights=path, **TINY)  # no backbone_file: the file holds it
    assert det.config["backbone_file"] == str(path)  # a checkpoint trained from it rebuilds
    assert all(not p.requires_grad for p in det.backbone.parameters())
    pictures = [reference_images(0)[3], np.asarray(random_images(1, (150, 120), seed=4)[0])]
    got = det.predict([Image.fromarray(a) for a in pictures], device="cpu", batch_size=2)
    expected = torch.sigmoid(independent_logits(state, pictures))
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)
    assert abs(float(got[0]) - float(got[1])) > 1e-4  # the pictures are told apart


def test_wrong_or_incomplete_files_are_one_clear_error(tmp_path: Path) -> None:
    d3 = tmp_path / "classifier.pth"
    torch.save({"query.weight": torch.zeros(1024, 1024), "fc.weight": torch.zeros(1, 2048)}, d3)
    with pytest.raises(UserError, match="not an AIDE checkpoint"):
        load_detector("aide", weights=d3, random_init=True, **SMALL)
    path, state = official_file(tmp_path, AIDE(random_init=True, **SMALL))
    del state["model_max.layer2.0.bn1.bias"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"missing keys: model_max\.layer2\.0\.bn1\.bias"):
        load_detector("aide", weights=tmp_path / "partial.pth", random_init=True, **SMALL)
    with pytest.raises(UserError, match="other shapes"):  # ResNets of another width
        load_detector("aide", weights=path, random_init=True, **{**SMALL, "resnet_width": 16})
    with pytest.raises(UserError, match="at least 32 pixels"):
        AIDE(random_init=True, **SMALL).transform({"image": random_images(1, (40, 20))[0]})


def test_offline_without_convnext_weights_fails_fast_and_clearly(tmp_path: Path) -> None:
    start = time.monotonic()
    det = load_detector("aide")  # the ConvNeXt is built on first use
    with pytest.raises(UserError, match=r"detector\.backbone_file=.*detector\.weights="):
        det.predict(random_images(1, 64), device="cpu")
    assert time.monotonic() - start < 20
    with pytest.raises(UserError, match="does not exist"):
        AIDE(backbone_file=str(tmp_path / "missing.bin"), **SMALL).load_backbone()


def test_backbone_file_in_open_clip_layout(tmp_path: Path) -> None:
    trunk = build_trunk("convnext_xxlarge", TINY_CONVNEXT)
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    state["visual.head.proj.weight"] = torch.zeros(4, 320)
    state["text_projection"] = torch.zeros(4, 4)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    det = AIDE(backbone_file=str(path), **SMALL)
    for key, value in det.backbone.state_dict().items():
        assert torch.equal(value, trunk.state_dict()[key])


def test_only_the_resnets_and_fc_train_and_they_overfit_a_tiny_batch() -> None:
    det = AIDE(random_init=True, label_smoothing=0.0, preprocessing={"size": 64}, **SMALL)
    batch = engine_batch(det, random_images(4, (96, 80), seed=3), [0, 1, 0, 1], train=True, seed=0)
    assert batch["image"].shape == (4, 5, 3, 64, 64)
    assert parameters_without_gradient(det, batch) == []
    trainable = {n.split(".")[0] for n, p in det.named_parameters() if p.requires_grad}
    assert trainable == {"model_min", "model_max", "fc"}
    before = [p.detach().clone() for p in det.backbone.parameters()]
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 1e-4
    assert overfit(det, batch, steps=80, lr=1e-3, target=0.05) < 0.05
    assert all(torch.equal(a, b) for a, b in zip(before, det.backbone.parameters(), strict=True))
    smoothed = AIDE(random_init=True, preprocessing={"size": 64}, **SMALL)
    z = smoothed(batch)["class_logits"]
    expected = (
        0.9 * F.cross_entropy(z, batch["label"].long())
        + 0.1 * (-F.log_softmax(z, dim=1).mean(dim=1)).mean()
    )
    torch.testing.assert_close(smoothed.training_step(batch)["loss"], expected)


def test_a_checkpoint_trained_from_the_official_file_rebuilds(tmp_path: Path) -> None:
    """train.py's save path after official weights: the ConvNeXt comes back from that file."""
    from omegaconf import OmegaConf

    from deepsift.app.training import _checkpoint
    from deepsift.core.checkpoint import save_checkpoint

    path, _ = official_file(tmp_path, AIDE(random_init=True, **SMALL))
    det = load_detector("aide", weights=path, **SMALL).eval()
    cfg = OmegaConf.create({"seed": 0, "detector": det.config})
    saved = tmp_path / "best.pt"
    save_checkpoint(saved, _checkpoint(det, "aide", cfg, 1, {"frame": {"auc": 0.5}}))
    loaded = load_detector(str(saved)).eval()
    assert not any(k.startswith(TRUNK) for k in loaded.state_dict())  # the trunk stays out
    x = torch.randn(1, 5, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded({"image": x})["logits"], det({"image": x})["logits"])


def test_tiny_model_matches_the_authors_code(tmp_path: Path, monkeypatch) -> None:
    """The authors' whole AIDE_Model and TestDataset, made small by tests/official/make_aide.py
    --tiny (ResNets [1, 1, 1, 1], a two-stage-deep ConvNeXt that keeps its 3072 channels),
    against load_detector on the same seeded file in the official container."""
    tiny = REFERENCE["tiny_forward"]
    real_create = timm.create_model

    def create(name: str, *args, **kwargs):  # as the make script builds their trunk
        if name == "convnext_xxlarge":
            kwargs = {**kwargs, **tiny["trunk_kwargs"]}
        return real_create(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    state = seeded_state_dict(tiny["keys"], seed=tiny["seed"])
    state["hpf.hpf.weight"] = srm_filters()[:, None].repeat(1, 3, 1, 1)
    path = tmp_path / "progan_train.pth"
    args = argparse.Namespace(model="AIDE", resume="")
    torch.save({"model": state, "optimizer": {}, "epoch": 1, "scaler": {}, "args": args}, path)
    det = load_detector("aide", weights=path, resnet_layers=tiny["resnet_layers"]).eval()
    chosen = [0, 1, 5]  # both frames and a crop, of the six (time budget)
    pictures = [reference_images(0)[i] for i in chosen]
    with torch.no_grad():
        got = [
            float(
                det({"image": det.eval_transform({"image": Image.fromarray(a)})["image"][None]})[
                    "logits"
                ].reshape(())
            )
            for a in pictures
        ]
    z = np.array(tiny["class_logits"], dtype=np.float64)[chosen]
    expected = z[:, 1] - z[:, 0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.ptp(expected) > 1e-2  # the seeded weights tell the pictures apart

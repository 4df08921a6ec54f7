"""PatchCraft: the smash & reconstruction against the authors' code, the official key layout
and checkpoint, an independent forward pass, training, strict loading."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.formats import formats_for
from detectors.patchcraft import (
    PatchCraft,
    crop_positions,
    rich_poor_views,
    select_patches,
    texture_diversity,
)
from tests.detector_checks import batch_norm, overfit, parameters_without_gradient
from tests.official.images import reference_images
from tests.official.weights import load_reference, official_state_dict, write_official_file

#: the reference ``RPTC.py`` ``Net``: 30 frozen 5 x 5 filters, 13 3 x 3 convolutions, fc2
REFERENCE_PARAMETERS = 119_919
REFERENCE = load_reference("patchcraft")


@functools.cache
def pictures() -> tuple[np.ndarray, ...]:
    """The six pictures of ``images.py``, made once."""
    return tuple(reference_images())


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    """The seeded official tensors of ``patchcraft.json``, without the ``module.`` prefix."""
    return official_state_dict(REFERENCE)


def reference_ed(crop: torch.Tensor) -> float:
    """``data/process.py`` ``ED``, written out: four float32 sums, added as Python floats."""
    total = 0.0
    for a, b in (
        (crop[:, :-1, :], crop[:, 1:, :]),
        (crop[:, :, :-1], crop[:, :, 1:]),
        (crop[:, :-1, :-1], crop[:, 1:, 1:]),
        (crop[:, :-1, 1:], crop[:, 1:, :-1]),
    ):
        total += torch.sum(torch.abs(a - b)).item()
    return total


def reference_forward(views: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Net.forward`` functionally: per-channel SRM bank, group1_b on poor and rich, their
    difference through groups 2-5, global mean, fc2."""

    def conv_bn(x: torch.Tensor, name: str, conv: int) -> torch.Tensor:
        x = F.conv2d(x, s[f"{name}.{conv}.weight"], s[f"{name}.{conv}.bias"], padding=1)
        return batch_norm(x, s, f"{name}.{conv + 1}")

    def stem(x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = F.conv2d(x.reshape(b * c, 1, h, w), s["group1.hpf.weight"], padding=2)
        return conv_bn(x.reshape(b, 90, h, w), "group1_b", 0).clamp(-5, 5)

    x = stem(views[:, 0]) - stem(views[:, 1])
    for name, blocks, pool in (
        ("group2", 4, 1),
        ("group3", 2, 1),
        ("group4", 2, 1),
        ("group5", 2, 0),
    ):
        for i in range(blocks):
            x = F.relu(conv_bn(x, name, 3 * i))
        if pool:
            x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)
    return (x.mean(dim=(-2, -1)) @ s["fc2.weight"].T + s["fc2.bias"])[:, 0]


def test_texture_diversity_is_the_reference_ed_bit_for_bit() -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 90, 70)
    corners = [(0, 0), (58, 38), (13, 27), (40, 5)]
    crops = torch.stack([image[:, i : i + 32, j : j + 32] for i, j in corners])
    expected = [reference_ed(image[:, i : i + 32, j : j + 32]) for i, j in corners]
    assert texture_diversity(crops).tolist() == expected
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert texture_diversity(flat).tolist() == [0.0]
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # columns 0, 2 lit: 0 down, 12 along, 9 + 9 diagonally
    assert texture_diversity(stripes).tolist() == [30.0]


def test_crop_positions_are_random_crops_draws() -> None:
    image = torch.zeros(3, 70, 50)
    torch.manual_seed(7)
    expected = [transforms.RandomCrop.get_params(image, (32, 32))[:2] for _ in range(20)]
    got = crop_positions(70, 50, 32, 20, torch.Generator().manual_seed(7))
    assert got.tolist() == [list(e) for e in expected]
    state = torch.get_rng_state()
    assert crop_positions(32, 32, 32, 5).tolist() == [[0, 0]] * 5  # one patch: no draw
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="does not fit"):
        crop_positions(31, 40, 32, 1)


@pytest.mark.parametrize("index", range(6))
def test_selection_is_the_authors_on_fixed_pictures(index: int) -> None:
    """``processing_RPTC(img, seed=42)``'s tiles (``patchcraft.json``, ``make_patchcraft.py``)."""
    expected = REFERENCE["selection"][index]
    image = TF.to_tensor(Image.fromarray(pictures()[index]))
    poor, rich = select_patches(image, generator=torch.Generator().manual_seed(42))
    assert poor.tolist() == expected["poor"]
    assert rich.tolist() == expected["rich"]
    views = rich_poor_views(image, generator=torch.Generator().manual_seed(42))
    assert views.shape == (2, 3, 256, 256)
    np.testing.assert_allclose(
        [float(v.double().sum()) for v in views], expected["sums"], rtol=1e-12, atol=0
    )
    np.testing.assert_allclose(
        [float(v.double().square().sum()) for v in views],
        expected["sums_of_squares"],
        rtol=1e-12,
        atol=0,
    )


def test_reconstructions_tile_the_poorest_and_richest_crops_row_major() -> None:
    rng = np.random.default_rng(3)
    image = torch.full((3, 64, 128), 0.5)
    image[:, :, 64:] = torch.from_numpy(rng.random((3, 64, 64))).float()  # noisy right half
    gen = torch.Generator().manual_seed(1)
    poor, rich = select_patches(image, size=64, grid=2, candidates=3, generator=gen)
    corners = crop_positions(64, 128, 32, 12, torch.Generator().manual_seed(1))
    scores = [reference_ed(image[:, i : i + 32, j : j + 32]) for i, j in corners.tolist()]
    order = sorted(range(12), key=lambda k: scores[k])  # the reference's stable sort
    assert poor.tolist() == corners[order[:4]].tolist()
    assert rich.tolist() == corners[order[::-1][:4]].tolist()
    views = rich_poor_views(image, 64, 2, 3, torch.Generator().manual_seed(1))
    for view, chosen in zip(views, (poor, rich), strict=True):
        for k, (i, j) in enumerate(chosen.tolist()):
            r, c = divmod(k, 2)
            tile = view[:, 32 * r : 32 * r + 32, 32 * c : 32 * c + 32]
            assert torch.equal(tile, image[:, i : i + 32, j : j + 32])
    assert texture_diversity(views[:1]) < texture_diversity(views[1:])


def test_test_time_crops_are_fixed_and_training_crops_are_fresh() -> None:
    det = PatchCraft()
    picture = Image.fromarray(pictures()[2])
    state = torch.get_rng_state()
    first = det.eval_transform({"image": picture})["image"]
    assert torch.equal(torch.get_rng_state(), state)  # the private generator only
    assert torch.equal(det.eval_transform({"image": picture})["image"], first)
    torch.manual_seed(0)
    a = det.train_transform({"image": picture})["image"]
    b = det.train_transform({"image": picture})["image"]
    assert a.shape == b.shape == (2, 3, 256, 256) and not torch.equal(a, b)


def test_small_pictures_become_one_patch() -> None:
    """A side under 32 px: ``Resize((32, 32))`` first; every tile is then that picture."""
    det = PatchCraft()
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 45, 3), np.uint8))
    views = det.eval_transform({"image": picture})["image"]
    patch = TF.to_tensor(transforms.Resize((32, 32))(picture))
    assert torch.equal(views, patch.repeat(2, 1, 8, 8))
    views64 = det.eval_transform({"image": picture.resize((64, 64))})["image"]
    assert views64.shape == (2, 3, 256, 256)  # 64 px pictures work as they are


def test_full_size_parameter_count_and_official_keys() -> None:
    det = PatchCraft()
    assert count_parameters(det) == REFERENCE_PARAMETERS
    assert count_parameters(det, trainable_only=True) == REFERENCE_PARAMETERS - 750
    spec = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in det.state_dict().items()
    ]
    assert spec == REFERENCE["keys"]  # RPTC.py Net().state_dict(), in order
    assert not det.group1.hpf.weight.requires_grad
    bank = det.group1.hpf.weight[:, 0]
    assert torch.allclose(bank.sum(dim=(-2, -1)), torch.zeros(30), atol=1e-6)  # high-pass


def test_forward_matches_an_independent_implementation(official: dict[str, torch.Tensor]) -> None:
    det = PatchCraft().eval()
    det.load_state_dict(official)
    views = torch.rand(2, 2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = det({"image": views})["logits"]
        expected = reference_forward(views, official)
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_backward_reaches_every_parameter_and_overfits() -> None:
    torch.manual_seed(0)
    det = PatchCraft()
    views = torch.rand(4, 2, 3, 16, 16)
    batch = {"image": views, "label": torch.tensor([0.0, 1.0, 1.0, 0.0])}
    assert not parameters_without_gradient(det, batch)
    assert det.group1.hpf.weight.grad is None
    bank = det.group1.hpf.weight.clone()
    assert overfit(det, batch, steps=100, lr=1e-2) < 0.05
    assert torch.equal(det.group1.hpf.weight, bank)  # the SRM bank stays fixed


def test_training_loss_is_bce_with_logits() -> None:
    torch.manual_seed(0)
    det = PatchCraft().eval()
    batch = {"image": torch.rand(3, 2, 3, 32, 32), "label": torch.tensor([0.0, 1.0, 1.0])}
    expected = F.binary_cross_entropy_with_logits(det(batch)["logits"], batch["label"])
    torch.testing.assert_close(det.training_step(batch)["loss"], expected)


def test_config_composes_with_the_reference_defaults() -> None:
    det = load_detector("patchcraft")
    assert isinstance(det, PatchCraft) and det.config_name == "patchcraft"
    assert (det.grid, det.candidates, det.test_seed, det.patch) == (8, 3, 42, 32)
    p, t = det.preprocessing, det.train_preprocessing
    assert (p.size, p.resize, p.crop, p.mean, p.std) == (
        256,
        "none",
        "none",
        (0.0,) * 3,
        (1.0,) * 3,
    )
    assert (t.blur_prob, t.jpeg_prob, tuple(t.blur_sigma), tuple(t.jpeg_quality)) == (
        0.1,
        0.1,
        (0.0, 3.0),
        (30, 100),
    )
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 1e-4
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_official_checkpoint_predicts_like_the_authors_code(tmp_path: Path) -> None:
    """Seeded ``RPTC.pth`` (``{'netC': module.-keys}``): the authors' logits within 1e-5."""
    path = write_official_file(REFERENCE, tmp_path / "RPTC.pth")
    payload = torch.load(path, weights_only=True)
    assert list(payload) == ["netC"] and next(iter(payload["netC"])).startswith("module.")
    det = load_detector("patchcraft", weights=path).eval()
    images = list(pictures()[2:5])  # 208, 256 and 342 px: a smaller, equal and larger side
    expected = np.array(REFERENCE["outputs"]["logits"][2:5])
    assert np.ptp(REFERENCE["outputs"]["logits"]) > 0.1  # the seeded weights tell pictures apart
    views = torch.stack(
        [det.eval_transform({"image": Image.fromarray(a)})["image"] for a in images]
    )
    with torch.no_grad():
        got = det({"image": views})["logits"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    probs = det.predict(images[:1], batch_size=1, device="cpu")  # the user's path
    np.testing.assert_allclose(probs, REFERENCE["outputs"]["probs"][2:3], atol=2e-6, rtol=0)


def test_wrong_files_name_missing_and_unexpected_keys(
    official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    assert [f.name for f in formats_for(official)] == [REFERENCE["format"]]
    partial = {f"module.{k}": v for k, v in official.items() if not k.startswith("group5.3.")}
    torch.save({"netC": partial}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"missing keys: group5\.3\.bias") as info:
        load_detector("patchcraft", weights=tmp_path / "partial.pth")
    assert "\n" not in str(info.value) and "partial.pth" in str(info.value)
    extra = {**official, "group1.tlu.threshold": torch.tensor(3.0)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"unexpected keys: group1\.tlu\.threshold"):
        load_detector("patchcraft", weights=tmp_path / "extra.pth")
    wide = {**official, "fc2.weight": torch.zeros(2, 32), "fc2.bias": torch.zeros(2)}
    torch.save({"netC": wide}, tmp_path / "wide.pth")
    with pytest.raises(UserError, match=r"fc2\.\w+: file \(2"):
        load_detector("patchcraft", weights=tmp_path / "wide.pth")


def test_bad_input_gives_one_line() -> None:
    det = PatchCraft()
    with pytest.raises(UserError, match=r"\(B, 2, 3, H, W\)") as info:
        det({"image": torch.rand(1, 3, 64, 64)})
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="multiple of grid"):
        PatchCraft(preprocessing={"size": 250})

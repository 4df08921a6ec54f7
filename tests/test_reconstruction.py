"""AEROBLADE: pluggable autoencoders and distances, closed-form calibration, clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn

from datasets.embedded.generators import (
    GeneratorAE,
    embedded_autoencoder,
    synthesise,
    train_autoencoder,
)
from deepsift.core.errors import UserError
from detectors.factory import build_detector, detector_config, load_detector
from detectors.reconstruction import AEROBLADE, ResamplingAutoencoder, diffusers_vae

SIZE = 32


def _real(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Photo-like content with per-pixel sensor noise (high frequencies no decoder keeps)."""
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR), np.float64)
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)


def _resampled(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A "fake" of the resampling family: a real image through the x2 low-pass autoencoder."""
    x = torch.from_numpy(_real(rng, size)).permute(2, 0, 1)[None].float() / 255
    y = ResamplingAutoencoder(2)(x)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round()
    return y.to(torch.uint8).numpy()


def make_set(seed: int, per_class: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [_real(rng) for _ in range(per_class)] + [_resampled(rng) for _ in range(per_class)]
    return images, np.array([0] * per_class + [1] * per_class)


def batch_of(det: AEROBLADE, images: list[np.ndarray], train: bool = False) -> dict:
    samples = [
        det.transform({"image": Image.fromarray(im), "record": None}, train) for im in images
    ]
    return torch.utils.data.default_collate(samples)


def fit(det: AEROBLADE, images: list[np.ndarray], labels: np.ndarray, bs: int = 16) -> None:
    """What the engine does for a closed-form detector: one pass of training steps, then the hook."""
    det.train()
    for start in range(0, len(images), bs):
        batch = batch_of(det, images[start : start + bs], train=True)
        batch["label"] = torch.as_tensor(labels[start : start + bs], dtype=torch.float32)
        assert det.training_step(batch) == {}
    det.on_train_epoch_end()


def logits(det: AEROBLADE, images: list[np.ndarray]) -> np.ndarray:
    det.eval()
    with torch.no_grad():
        return det(batch_of(det, images))["logits"].numpy()


@pytest.fixture(scope="module")
def fitted() -> AEROBLADE:
    det = AEROBLADE(preprocessing={"size": SIZE})
    fit(det, *make_set(0, 24))
    return det


def test_config_builds_training_free() -> None:
    det = load_detector("aeroblade")
    assert isinstance(det, AEROBLADE) and det.epochs_needed == 1
    assert not det.fits_by_gradient and det.configure_optimizers() == (None, None)
    assert set(det.state_dict()) == {"scale", "bias", "fitted"}


def test_separates_fakes_of_its_autoencoder_family(fitted: AEROBLADE) -> None:
    images, labels = make_set(1, 24)
    scores = logits(fitted, images)
    assert roc_auc_score(labels, scores) > 0.98
    assert bool(fitted.fitted) and float(fitted.scale) > 0
    assert ((scores > 0) == labels).mean() > 0.9  # the calibrated threshold works too


def test_unfitted_scores_rank_and_threshold_calibrates() -> None:
    images, labels = make_set(2, 12)
    det = AEROBLADE(preprocessing={"size": SIZE})
    raw = logits(det, images)
    assert roc_auc_score(labels, raw) > 0.98 and (raw <= 0).all()  # -distance: ranking only
    distances = -raw
    middle = float(np.median(distances))
    calibrated = AEROBLADE(preprocessing={"size": SIZE}, threshold=middle, temperature=0.01)
    assert ((logits(calibrated, images) > 0) == (distances < middle)).all()


def test_state_dict_round_trip(fitted: AEROBLADE) -> None:
    images, _ = make_set(3, 4)
    clone = AEROBLADE(preprocessing={"size": SIZE})
    clone.load_state_dict(fitted.state_dict())
    assert bool(clone.fitted)
    np.testing.assert_allclose(logits(clone, images), logits(fitted, images), rtol=1e-6)


def test_predict_on_files(fitted: AEROBLADE, tmp_path: Path) -> None:
    images, labels = make_set(4, 6)
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    probs = fitted.predict(paths, batch_size=5, device="cpu")
    assert probs.shape == (12,) and ((probs >= 0) & (probs <= 1)).all()
    assert roc_auc_score(labels, probs) > 0.95


def test_trained_generator_autoencoder_plugs_in(tmp_path: Path) -> None:
    """A GeneratorAE trained briefly: its own outputs are 'fakes', noisy photos are 'reals'."""
    rng = np.random.default_rng(5)
    crops = np.stack([_real(rng) for _ in range(16)])
    torch.set_num_threads(1)
    model, _ = train_autoencoder(
        "bilinear", crops, steps=40, batch=8, patch=SIZE, lr=3e-3, width=8, seed=0, progress=False
    )
    weights = tmp_path / "ae.pt"
    torch.save(model.state_dict(), weights)
    module = embedded_autoencoder("bilinear", str(weights), width=8)
    reals = np.stack([_real(rng) for _ in range(12)])
    fakes = synthesise(model, np.stack([_real(rng) for _ in range(12)]))
    images, labels = [*reals, *fakes], np.array([0] * 12 + [1] * 12)
    det = AEROBLADE(autoencoder=module, preprocessing={"size": SIZE}, distance="l1")
    assert roc_auc_score(labels, logits(det, images)) > 0.9
    # and through a config node, as `detector.autoencoder=...` would
    cfg = detector_config("aeroblade")
    cfg.autoencoder = {  # replaces the default node (a merge would keep its keys)
        "_target_": "datasets.embedded.generators.embedded_autoencoder",
        "family": "bilinear",
        "weights": str(weights),
        "width": 8,
    }
    built = build_detector(cfg, "aeroblade")
    assert isinstance(built.autoencoders[0], GeneratorAE)


class _EncodeDecode(nn.Module):
    """An autoencoder with only encode/decode (no forward), diffusers-style."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 4)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor]:
        return (nn.functional.interpolate(z, scale_factor=4, mode="nearest"),)


def test_minimum_over_autoencoders_odd_sizes_and_patch_max() -> None:
    x = torch.rand(3, 3, 30, 30)
    det = AEROBLADE(
        autoencoder=[ResamplingAutoencoder(1), _EncodeDecode()],
        quantize=False,
        preprocessing={"size": 30},
    )
    per_ae = det.distances(x)
    assert per_ae.shape == (3, 2)
    assert torch.allclose(per_ae[:, 0], torch.zeros(3))  # identity reconstructs exactly
    assert torch.equal(det.score_distance(x), per_ae.amin(dim=1))
    patchy = AEROBLADE(autoencoder=_EncodeDecode(), reduction="max", preprocessing={"size": 30})
    mean = AEROBLADE(autoencoder=_EncodeDecode(), preprocessing={"size": 30})
    assert (patchy.score_distance(x) >= mean.score_distance(x) - 1e-6).all()


def test_clear_errors() -> None:
    with pytest.raises(UserError, match="distance must be"):
        AEROBLADE(distance="ssim")
    with pytest.raises(UserError, match="reduction"):
        AEROBLADE(reduction="median")
    with pytest.raises(UserError, match="weights"):
        embedded_autoencoder("tconv")
    with pytest.raises(UserError, match="autoencoder_path"):
        diffusers_vae(None)
    det = AEROBLADE(preprocessing={"size": SIZE})
    images, labels = make_set(6, 4)
    with pytest.raises(UserError, match=r"real \(0\) and fake \(1\)"):
        fit(det, images[:4], labels[:4])


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is not None, reason="diffusers installed")
def test_missing_diffusers_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"pip install diffusers.*autoencoder_path"):
        load_detector("aeroblade", autoencoder_path=str(tmp_path))


def test_missing_lpips_files_name_the_fix(tmp_path: Path) -> None:
    """LPIPS-vgg is deepsift's own: no package, but its two files, named in one line."""
    missing = tmp_path / "vgg16-397923af.pth"
    with pytest.raises(UserError) as info:
        load_detector("aeroblade", distance="lpips", lpips_backbone_file=str(missing))
    message = str(info.value)
    assert "\n" not in message and f"{missing} does not exist" in message
    assert "detector.lpips_backbone_file=" in message and "detector.lpips_file=" in message

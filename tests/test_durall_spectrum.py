"""DurallSpectrum: reference-faithful features, closed-form fit, buffers-only state, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.interpolate import griddata
from sklearn.metrics import roc_auc_score

from deepsift.core.errors import UserError
from detectors.durall_spectrum import DurallSpectrum, azimuthal_average, radius_bins
from detectors.factory import build_detector
from detectors.layers.closed_form import NotFittedError
from tests.detector_checks import fit_closed_form, smooth_image, upsampling_set

SIZE = 64


@pytest.fixture(scope="module")
def fitted() -> DurallSpectrum:
    det = DurallSpectrum(preprocessing={"size": SIZE})
    fit_closed_form(det, *upsampling_set(0, 40, SIZE))
    return det


def reference_features(gray: np.ndarray, n: int = 300) -> np.ndarray:
    """The reference pipeline in NumPy/SciPy: log spectrum, radial mean (bins 1..R-1), cubic resampling, / first."""
    spectrum = np.fft.fftshift(np.fft.fft2(gray))
    magnitude = 20 * np.log(np.abs(spectrum) + 1e-8)
    h, w = gray.shape
    yy, xx = np.indices((h, w))
    radius = np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2).astype(int).ravel()
    profile = (np.bincount(radius, magnitude.ravel()) / np.bincount(radius))[1:-1]
    resampled = griddata(
        np.linspace(0, n, profile.size), profile, np.linspace(0, n, n), method="cubic"
    )
    return resampled / resampled[0]


def test_feature_shape_and_reference_bins() -> None:
    det = DurallSpectrum()
    assert det.features(torch.rand(2, 3, 64, 48)).shape == (2, 300)
    # bin counts of the reference: 88 for 128 px (train_spectrum.py), 722 for 1024 px (Faces-HQ)
    assert det.spectrum_profile(torch.rand(1, 3, 128, 128)).shape == (1, 88)
    assert det.spectrum_profile(torch.rand(1, 3, 1024, 1024)).shape == (1, 722)
    small = DurallSpectrum(n_features=20, normalization="minmax")
    out = small.features(torch.rand(3, 3, 40, 40))
    assert out.shape == (3, 20)
    assert torch.allclose(out.amin(1), torch.zeros(3)) and torch.allclose(
        out.amax(1), torch.ones(3)
    )


def test_features_match_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    image = smooth_image(rng, 96)[:80]  # non-square on purpose
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    gray = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    expected = reference_features(gray)
    got = DurallSpectrum().features(tensor)[0].double().numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


def test_features_undo_the_preprocessing_normalisation() -> None:
    image = torch.rand(1, 3, 48, 48)
    plain = DurallSpectrum(preprocessing={"size": 48})
    imagenet = DurallSpectrum(
        preprocessing={"size": 48, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(
        imagenet.features((image - mean) / std), plain.features(image), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("size", [32, 33])
def test_constant_image_has_only_dc(size: int) -> None:
    constant = torch.full((1, size, size), 0.7)
    magnitude = torch.fft.fftshift(torch.fft.fft2(constant), dim=(-2, -1)).abs()
    bins = radius_bins(size, size)
    counts = torch.bincount(bins).float()
    profile = azimuthal_average(magnitude, bins, counts)[0]
    assert (
        profile[0] > 0.7 * size * size / counts[0] * 0.99
    )  # the DC term sits in the innermost bin
    assert torch.allclose(profile[1:], torch.zeros_like(profile[1:]), atol=1e-3)


def test_checkerboard_raises_high_frequency_tail() -> None:
    rng = np.random.default_rng(1)
    smooth = smooth_image(rng, SIZE).astype(np.float32) / 255
    yy, xx = np.indices((SIZE, SIZE))
    checker = 0.25 * (((xx // 2 + yy // 2) % 2) * 2 - 1) + 0.25 * ((xx + yy) % 2 * 2 - 1)
    textured = np.clip(smooth + checker[..., None], 0, 1)
    det = DurallSpectrum(normalization="none", n_features=60)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()  # noqa: E731
    low, high = det.features(torch.cat([as_tensor(smooth), as_tensor(textured)]))
    tail = slice(40, 60)
    assert high[tail].mean() > low[tail].mean() + 10  # decibel-like units of 20 ln|F|


def test_unfitted_forward_raises_clear_error() -> None:
    det = DurallSpectrum(preprocessing={"size": 32})
    assert not det.fits_by_gradient and list(det.parameters()) == []
    assert det.configure_optimizers() == (None, None)
    with pytest.raises(
        NotFittedError, match="DurallSpectrum is not fitted: train it first or load a checkpoint"
    ):
        det({"image": torch.rand(1, 3, 32, 32)})
    assert issubclass(NotFittedError, UserError) and issubclass(NotFittedError, RuntimeError)


def test_fit_separates_upsampled_images(fitted: DurallSpectrum) -> None:
    assert bool(fitted.fitted)
    assert fitted._train_features == []  # the buffer was cleared
    images, labels = upsampling_set(1, 20, SIZE)
    probs = fitted.predict(images, batch_size=16, device="cpu")
    assert roc_auc_score(labels, probs) > 0.97


def test_linear_svm_variant() -> None:
    det = DurallSpectrum(classifier="svm", preprocessing={"size": SIZE})
    fit_closed_form(det, *upsampling_set(0, 40, SIZE))
    images, labels = upsampling_set(1, 20, SIZE)
    assert roc_auc_score(labels, det.predict(images, device="cpu")) > 0.95


def test_state_dict_round_trip(fitted: DurallSpectrum, tmp_path: Path) -> None:
    state = fitted.state_dict()
    assert set(state) == {"scaler_mean", "scaler_scale", "coef", "intercept", "fitted"}
    path = tmp_path / "durall.pt"
    torch.save(state, path)
    fresh = DurallSpectrum(preprocessing={"size": SIZE})
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    images, _ = upsampling_set(2, 6, SIZE)
    np.testing.assert_array_equal(
        fresh.predict(images, device="cpu"), fitted.predict(images, device="cpu")
    )


def test_predict_on_paths_arrays_and_pil(fitted: DurallSpectrum, tmp_path: Path) -> None:
    images, _ = upsampling_set(3, 2, SIZE)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    for batch in (paths, [str(p) for p in paths], images, [Image.fromarray(images[0])], images[0]):
        probs = fitted.predict(batch, batch_size=3, device="cpu")
        expected = 1 if isinstance(batch, np.ndarray) else len(batch)
        assert probs.shape == (expected,)
        assert np.all((probs >= 0) & (probs <= 1))


def test_one_class_and_empty_training_fail_clearly() -> None:
    det = DurallSpectrum(preprocessing={"size": 32})
    images, labels = upsampling_set(4, 4, 32)
    with pytest.raises(
        UserError, match=r"needs real \(0\) and fake \(1\) training images, got only label \[0\]"
    ):
        fit_closed_form(det, images[:4], labels[:4])
    with pytest.raises(UserError, match="saw no training images"):
        det.on_train_epoch_end()
    assert not bool(det.fitted)


def test_bad_options_and_tiny_images() -> None:
    with pytest.raises(UserError, match="normalization must be one of first, minmax, none"):
        DurallSpectrum(normalization="l2")
    with pytest.raises(UserError, match="classifier must be one of logistic, svm"):
        DurallSpectrum(classifier="rbf")
    with pytest.raises(UserError, match="too small"):
        DurallSpectrum().features(torch.rand(1, 3, 6, 6))


def test_built_from_a_config() -> None:
    det = build_detector(
        {
            "_target_": "detectors.durall_spectrum.DurallSpectrum",
            "n_features": 50,
            "preprocessing": {"size": 32},
        },
        "durall",
    )
    assert isinstance(det, DurallSpectrum)
    assert det.preprocessing.size == 32 and det.preprocessing.mean == (0.0, 0.0, 0.0)
    assert det.epochs_needed == 1

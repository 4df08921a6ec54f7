"""FrankDCT: DCT against scipy and the reference pipeline, closed-form fit, buffers-only state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from scipy import fftpack
from sklearn.metrics import roc_auc_score

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.frank_dct import FrankDCT, dct2
from detectors.layers.closed_form import NotFittedError
from tests.detector_checks import fit_closed_form, smooth_image, upsampling_set

SIZE = 32
#: the reference's binary linear model (classifer.py ``log2``, ``--classes 1``): one
#: Dense unit on the flattened 128 x 128 x 3 coefficients
REFERENCE_FITTED_WEIGHTS = 128 * 128 * 3 + 1


def as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def reference_features(image: np.ndarray) -> np.ndarray:
    """prepare_dataset.py -l: src/image_np.dct2 (fftpack, axis 0 then 1) + src/math.log_scale."""
    array = fftpack.dct(np.asarray(image), type=2, norm="ortho", axis=0)
    array = fftpack.dct(array, type=2, norm="ortho", axis=1)
    return np.log(np.abs(array) + 1e-12)


@pytest.fixture(scope="module")
def fitted() -> tuple[FrankDCT, np.ndarray]:
    det = FrankDCT(preprocessing={"size": SIZE})
    images, labels = upsampling_set(0, 40, SIZE)
    fit_closed_form(det, images, labels)
    return det, det.features(as_batch(images)).double().numpy()


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 1, 7, 12), (3, 5, 4)])
def test_dct2_matches_scipy(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    expected = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(dct2(x).numpy(), expected, rtol=1e-10, atol=1e-10)
    assert dct2(x.float()).dtype == torch.float64


def test_features_match_the_reference_pipeline() -> None:
    image = smooth_image(np.random.default_rng(3), SIZE)
    got = FrankDCT(preprocessing={"size": SIZE}).features(as_batch([image]))[0].numpy()
    expected = reference_features(image)  # (H, W, 3); ours are channel-first
    np.testing.assert_allclose(
        got.reshape(3, SIZE, SIZE), expected.transpose(2, 0, 1), rtol=1e-6, atol=1e-5
    )


def test_grayscale_features() -> None:
    image = smooth_image(np.random.default_rng(4), SIZE)
    det = FrankDCT(grayscale=True, preprocessing={"size": SIZE})
    got = det.features(as_batch([image]))[0].numpy()
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(got, reference_features(luma).ravel(), rtol=1e-6, atol=1e-5)
    assert det.coef.numel() == SIZE * SIZE


def test_features_undo_imagenet_normalisation() -> None:
    image = torch.randint(0, 256, (1, 3, SIZE, SIZE)) / 255  # 8-bit pixels, as from files
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    imagenet = FrankDCT(
        preprocessing={"size": SIZE, "mean": mean.flatten().tolist(), "std": std.flatten().tolist()}
    )
    plain = FrankDCT(preprocessing={"size": SIZE})
    torch.testing.assert_close(
        imagenet.features((image - mean) / std), plain.features(image), rtol=1e-6, atol=1e-5
    )


def test_fitted_weights_match_the_reference_count() -> None:
    det = FrankDCT()  # the reference's 128 x 128 colour input
    assert det.input_shape == (3, 128, 128)
    assert det.coef.numel() + det.intercept.numel() == REFERENCE_FITTED_WEIGHTS
    assert list(det.parameters()) == [] and not det.fits_by_gradient
    assert det.configure_optimizers() == (None, None)


def test_fit_standardises_and_separates_upsampled_images(
    fitted: tuple[FrankDCT, np.ndarray],
) -> None:
    det, train_x = fitted
    assert bool(det.fitted) and det._train_features == []
    # per-coefficient training mean and population std (the reference's Welford)
    np.testing.assert_allclose(det.scaler_mean.numpy(), train_x.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(det.scaler_scale.numpy(), train_x.std(0), rtol=1e-4, atol=1e-4)
    images, labels = upsampling_set(1, 20, SIZE)
    probs = det.predict(images, batch_size=16, device="cpu")
    assert roc_auc_score(labels, probs) > 0.97


def test_fit_minimises_the_reference_objective(fitted: tuple[FrankDCT, np.ndarray]) -> None:
    """Mean cross-entropy + l2 * |w|^2 (Keras' L2 kernel penalty, bias free) is stationary."""
    det, train_x = fitted
    z = (train_x - det.scaler_mean.double().numpy()) / det.scaler_scale.double().numpy()
    w, b = det.coef.double().numpy(), det.intercept.double().numpy()
    y = np.array([0] * 40 + [1] * 40)
    p = 1 / (1 + np.exp(-(z @ w + b)))
    penalty = 2 * det.l2 * w
    grad_w = z.T @ (p - y) / len(y) + penalty
    assert np.linalg.norm(grad_w) < 0.1 * np.linalg.norm(penalty)  # the two terms cancel
    assert abs(np.mean(p - y)) < 1e-4


def test_unfitted_and_wrong_sizes_fail_clearly() -> None:
    det = FrankDCT(preprocessing={"size": SIZE})
    with pytest.raises(NotFittedError, match="FrankDCT is not fitted"):
        det({"image": torch.rand(1, 3, SIZE, SIZE)})
    with pytest.raises(UserError, match="configured for 32 x 32 images, got 40 x 32"):
        det.features(torch.rand(1, 3, 40, 32))
    with pytest.raises(UserError, match="needs images of one size"):
        FrankDCT(preprocessing={"crop": "none"})
    with pytest.raises(UserError, match="l2 must be positive"):
        FrankDCT(l2=0)
    images, labels = upsampling_set(5, 3, SIZE)
    with pytest.raises(UserError, match=r"needs real \(0\) and fake \(1\) training images"):
        fit_closed_form(det, images[:3], labels[:3])
    with pytest.raises(UserError, match="saw no training images"):
        det.on_train_epoch_end()


def test_state_dict_round_trip(fitted: tuple[FrankDCT, np.ndarray], tmp_path: Path) -> None:
    det, _ = fitted
    state = det.state_dict()
    assert set(state) == {"scaler_mean", "scaler_scale", "coef", "intercept", "fitted"}
    torch.save(state, tmp_path / "frank.pt")
    fresh = FrankDCT(preprocessing={"size": SIZE})
    fresh.load_weights(tmp_path / "frank.pt")
    images, _ = upsampling_set(2, 4, SIZE)
    np.testing.assert_array_equal(
        fresh.predict(images, device="cpu"), det.predict(images, device="cpu")
    )


def test_config_composes_and_runs_at_its_size() -> None:
    det = load_detector("frank_dct")
    assert isinstance(det, FrankDCT) and det.epochs_needed == 1
    assert det.input_shape == (3, 64, 64) and det.l2 == 0.01
    assert det.preprocessing.mean == (0.0, 0.0, 0.0)
    images, labels = upsampling_set(6, 8, 64)
    fit_closed_form(det, images, labels)
    out = det({"image": as_batch(images[:2])})
    assert out["logits"].shape == (2,) and out["logits"].dtype == torch.float32

"""Exact preprocessing of the CNNDetection-family detectors on small crafted images.

Expected tensors are written out by hand (offsets, padding, normalisation), not
computed with the code under test.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from deepsift.core.images import load_rgb
from detectors.cnnspot import CNNSpot
from detectors.frank_dct import FrankDCT
from detectors.layers.cnndetection import cnndetection_train_transform
from detectors.layers.forensynths import npr_residual, trim_to_even
from detectors.npr import NPR
from detectors.preprocessing import Preprocessing

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def normalised(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) ImageNet-normalised float64, by hand."""
    return ((rgb.astype(np.float64) / 255 - MEAN) / STD).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def cnnspot() -> CNNSpot:
    return CNNSpot()


@pytest.fixture(scope="module")
def uncropped() -> CNNSpot:
    return CNNSpot(preprocessing={"crop": "none"})


@pytest.fixture(scope="module")
def npr() -> NPR:
    return NPR()


def _save(tmp_path: Path, name: str, array: np.ndarray, mode: str | None = None) -> Path:
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_cnnspot_test_transform_pads_a_small_grayscale_image(
    cnnspot: CNNSpot, tmp_path: Path
) -> None:
    # 5 rows x 7 columns, grayscale: load_rgb replicates it into three channels
    gray = (np.arange(35, dtype=np.uint8).reshape(5, 7) * 7).astype(np.uint8)
    image = load_rgb(_save(tmp_path, "g.png", gray))
    got = cnnspot.eval_transform({"image": image, "record": None})["image"]
    assert got.shape == (3, 224, 224) and got.dtype == torch.float32
    # torchvision CenterCrop semantics: zero padding, (224-5)//2 = 109 rows above,
    # (224-7)//2 = 108 columns on the left, then the zeros are normalised too
    canvas = np.zeros((224, 224, 3), dtype=np.uint8)
    canvas[109:114, 108:115] = gray[..., None]
    np.testing.assert_allclose(got.numpy(), normalised(canvas), atol=1e-6)
    assert got[0, 0, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-6)


def test_cnnspot_test_transform_centre_crops_odd_sizes(cnnspot: CNNSpot) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (227, 231, 3), dtype=np.uint8)
    got = cnnspot.eval_transform({"image": Image.fromarray(rgb), "record": None})["image"]
    # top = round((227-224)/2) = round(1.5) = 2, left = round((231-224)/2) = round(3.5) = 4
    np.testing.assert_allclose(got.numpy(), normalised(rgb[2:226, 4:228]), atol=1e-6)


def test_cnnspot_no_crop_keeps_the_whole_image(uncropped: CNNSpot) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    got = uncropped.eval_transform({"image": Image.fromarray(rgb), "record": None})["image"]
    np.testing.assert_allclose(got.numpy(), normalised(rgb), atol=1e-6)


def test_cnnspot_train_transform_resizes_shorter_side_then_crops(cnnspot: CNNSpot) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    p = Preprocessing(
        **{
            **cnnspot.train_preprocessing.to_dict(),
            "blur_prob": 0.0,
            "jpeg_prob": 0.0,
            "hflip": 0.0,
        }
    )
    random.seed(5)
    got = cnndetection_train_transform(Image.fromarray(rgb), p)
    random.seed(5)
    top, left = random.randint(0, 256 - 224), random.randint(0, 341 - 224)
    resized = np.asarray(Image.fromarray(rgb).resize((341, 256), Image.BILINEAR))  # 300 -> 256
    np.testing.assert_allclose(
        got.numpy(), normalised(resized[top : top + 224, left : left + 224]), atol=1e-6
    )


def test_cnnspot_blur_comes_after_the_resize() -> None:
    """CNNDetection's order: resize, then scipy Gaussian blur of each uint8 channel."""
    rgb = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    p = Preprocessing(
        size=40,
        resize="shorter",
        resize_to=40,
        crop="none",
        blur_prob=1.0,
        blur_sigma=(1.5, 1.5),
    )
    got = cnndetection_train_transform(Image.fromarray(rgb), p)
    resized = np.array(Image.fromarray(rgb).resize((60, 40), Image.BILINEAR))
    for c in range(3):
        gaussian_filter(resized[:, :, c], output=resized[:, :, c], sigma=1.5)
    np.testing.assert_allclose(got.numpy(), normalised(resized), atol=1e-6)


def test_cnnspot_jpeg_augmentation_changes_pixels() -> None:
    rgb = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    p = Preprocessing(size=32, crop="none", jpeg_prob=1.0, jpeg_quality=(30, 30))
    got = cnndetection_train_transform(Image.fromarray(rgb), p)
    assert got.shape == (3, 32, 32)
    assert not np.allclose(got.numpy(), normalised(rgb), atol=1e-3)


def test_npr_test_transform_is_a_bilinear_square_resize(npr: NPR, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    got = npr.eval_transform({"image": load_rgb(_save(tmp_path, "x.png", rgb)), "record": None})
    expected = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BILINEAR))
    np.testing.assert_allclose(got["image"].numpy(), normalised(expected), atol=1e-6)


def test_npr_test_transform_of_a_constant_odd_grayscale_image(npr: NPR, tmp_path: Path) -> None:
    gray = np.full((45, 31), 200, dtype=np.uint8)
    got = npr.eval_transform({"image": load_rgb(_save(tmp_path, "c.png", gray)), "record": None})
    assert got["image"].shape == (3, 256, 256)
    expected = (200 / 255 - MEAN) / STD
    np.testing.assert_allclose(
        got["image"].numpy(), np.broadcast_to(expected[:, None, None], (3, 256, 256)), atol=1e-6
    )


def test_npr_train_transform_crops_224_of_the_resized_image(npr: NPR) -> None:
    rgb = np.random.default_rng(6).integers(0, 256, (301, 199, 3), dtype=np.uint8)
    got = npr.train_transform({"image": Image.fromarray(rgb), "record": None})["image"]
    assert got.shape == (3, 224, 224)


def test_npr_trims_odd_sizes_and_subtracts_the_block_corner() -> None:
    x = torch.arange(35, dtype=torch.float32).reshape(1, 1, 5, 7)
    assert trim_to_even(x).shape == (1, 1, 4, 6)
    assert torch.equal(trim_to_even(x)[0, 0], x[0, 0, :4, :6])
    residual = npr_residual(x)[0, 0]
    # x[r, c] = 7 r + c; the corner of its 2x2 block is (r - r % 2, c - c % 2)
    expected = torch.tensor(
        [[7 * (r % 2) + (c % 2) for c in range(6)] for r in range(4)], dtype=torch.float32
    )
    assert torch.equal(residual, expected)
    even = torch.rand(2, 3, 6, 8)
    assert npr_residual(even).shape == even.shape
    assert torch.equal(npr_residual(even)[..., ::2, ::2], torch.zeros(2, 3, 3, 4))


def test_rgba_is_composited_on_white(uncropped: CNNSpot, tmp_path: Path) -> None:
    rgba = np.zeros((3, 5, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, :, 3] = 0  # transparent -> white
    rgba[1, :, 3] = 255  # opaque -> the colour
    rgba[2, :, 3] = 128  # half: black-ish colour over white
    rgba[2, :, :3] = 0
    image = load_rgb(_save(tmp_path, "a.png", rgba, mode="RGBA"))
    assert image.mode == "RGB"
    rgb = np.asarray(image)
    assert (rgb[0] == 255).all()
    assert (rgb[1] == (10, 20, 30)).all()
    assert np.abs(rgb[2].astype(int) - 127).max() <= 1
    got = uncropped.eval_transform({"image": image, "record": None})["image"]
    np.testing.assert_allclose(got.numpy(), normalised(rgb), atol=1e-6)


def test_frank_preprocessing_keeps_pixels_and_pads_small_images() -> None:
    det = FrankDCT(preprocessing={"size": 8})
    rgb = np.random.default_rng(7).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    got = det.eval_transform({"image": Image.fromarray(rgb), "record": None})["image"]
    canvas = np.zeros((8, 8, 3), dtype=np.float64)
    canvas[1:6, 0:7] = rgb / 255  # (8-5)//2 = 1 row above, (8-7)//2 = 0 columns left
    np.testing.assert_allclose(got.numpy(), canvas.transpose(2, 0, 1), atol=1e-6)

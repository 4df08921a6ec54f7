"""The resize backends feed the network exactly what the references feed theirs.

DeepfakeBench, icpr2020dfdc and SBI resize the uint8 array with ``cv2.resize``;
CNNDetection, NPR and UnivFD resize the PIL image (Pillow's filters, through
torchvision). ``Preprocessing(resize_backend=...)`` must give those pixels bit for
bit: one grey level is enough to move a logit (issue: parity with official code).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from detectors.preprocessing import Preprocessing

FLAGS = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus texture, so that kernels differ where they should."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 127 + 80 * np.sin(x / 7.0)[..., None] * np.cos(y / 11.0)[..., None]
    noise = rng.normal(0, 25, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 255.0


def plain(**kwargs) -> Preprocessing:
    return Preprocessing(crop="none", mean=(0, 0, 0), std=(1, 1, 1), **kwargs)


@pytest.mark.parametrize("interpolation", sorted(FLAGS))
@pytest.mark.parametrize(("width", "height"), [(342, 297), (208, 208), (640, 480), (120, 150)])
def test_cv2_backend_is_cv2_resize_bit_for_bit(interpolation: str, width: int, height: int) -> None:
    array = photo_like(width, height)
    pre = plain(size=256, resize="square", resize_backend="cv2", interpolation=interpolation)
    expected = cv2.resize(array, (256, 256), interpolation=FLAGS[interpolation])
    assert torch.equal(pre(Image.fromarray(array)), as_tensor(expected))


@pytest.mark.parametrize("interpolation", sorted(PIL_FILTERS))
def test_pil_backend_is_pillow_resize_bit_for_bit(interpolation: str) -> None:
    array = photo_like(342, 297)
    pre = plain(size=224, resize="square", resize_backend="pil", interpolation=interpolation)
    expected = np.asarray(Image.fromarray(array).resize((224, 224), PIL_FILTERS[interpolation]))
    assert torch.equal(pre(Image.fromarray(array)), as_tensor(expected))


def test_the_two_backends_differ_so_the_choice_matters() -> None:
    image = Image.fromarray(photo_like(342, 297))
    pil = plain(size=256, resize="square", resize_backend="pil", interpolation="bicubic")(image)
    ocv = plain(size=256, resize="square", resize_backend="cv2", interpolation="bicubic")(image)
    assert (pil - ocv).abs().max() > 1 / 255


def test_area_needs_cv2() -> None:
    """Checked when used (and by build_detector after the weights' protocol), not at
    construction: a file's protocol may still switch the backend to cv2."""
    pil_area = Preprocessing(interpolation="area", resize="square")
    for check in (pil_area.validate, lambda: pil_area(Image.fromarray(photo_like(40, 30)))):
        with pytest.raises(
            UserError, match=r"needs preprocessing\.resize_backend=cv2.*backend is pil"
        ):
            check()
    array = photo_like(400, 300)
    pre = plain(size=100, resize="square", resize_backend="cv2", interpolation="area")
    expected = cv2.resize(array, (100, 100), interpolation=cv2.INTER_AREA)
    assert torch.equal(pre(Image.fromarray(array)), as_tensor(expected))


def test_longest_side_then_zero_pad_is_albumentations_tight_policy() -> None:
    """icpr2020dfdc's ``tight`` face policy: LongestMaxSize(224) then PadIfNeeded(224, 224,
    BORDER_CONSTANT 0), written out with cv2 and numpy as albumentations does it."""
    array = photo_like(150, 205)
    pre = Preprocessing(
        size=224,
        resize="longest",
        resize_backend="cv2",
        interpolation="bilinear",
        crop="center",
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    scale = 224 / 205.0
    w, h = round(150 * scale), round(205 * scale)
    resized = cv2.resize(array, (w, h), interpolation=cv2.INTER_LINEAR)
    top, left = (224 - h) // 2, (224 - w) // 2
    padded = np.zeros((224, 224, 3), np.uint8)
    padded[top : top + h, left : left + w] = resized
    assert torch.equal(pre(Image.fromarray(array)), as_tensor(padded))


@pytest.mark.parametrize(("width", "height"), [(208, 208), (150, 205), (300, 180), (342, 299)])
def test_zero_pad_then_square_resize_is_albumentations_scale_policy(
    width: int, height: int
) -> None:
    """icpr2020dfdc's ``scale`` face policy (its test-time default): PadIfNeeded(224,
    224, BORDER_CONSTANT, 0) then Resize(224, 224) (cv2 INTER_LINEAR), written out with
    numpy and cv2 as albumentations 0.4-1.x does it: each short side padded on its own,
    the odd pixel bottom/right; no resize call when the padded picture is 224 x 224."""
    array = photo_like(width, height)
    pre = plain(size=224, resize="square", resize_backend="cv2", pad="to_size")
    h, w = max(height, 224), max(width, 224)
    top, left = (h - height) // 2, (w - width) // 2
    padded = np.zeros((h, w, 3), np.uint8)
    padded[top : top + height, left : left + width] = array
    if (h, w) != (224, 224):
        padded = cv2.resize(padded, (224, 224), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(pre(Image.fromarray(array)), as_tensor(padded))


def test_shorter_side_follows_torchvision_rounding() -> None:
    pre = plain(size=224, resize="shorter", resize_backend="cv2", interpolation="bilinear")
    assert pre.target_size(213, 300) == (224, 315)
    assert pre.target_size(300, 213) == (315, 224)
    out = pre(Image.fromarray(photo_like(213, 300)))
    assert tuple(out.shape) == (3, 315, 224)


def test_unknown_backend_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="resize_backend must be pil or cv2"):
        Preprocessing(resize_backend="skimage")

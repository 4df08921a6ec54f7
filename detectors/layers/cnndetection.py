"""CNNDetection's training augmentation (Wang et al., CVPR 2020), shared by the detectors
trained with its recipe (CNNSpot, NPR, FreqNet, UnivFD, CLIP face probe)."""

from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
import torch
from PIL import Image

from detectors.preprocessing import (
    Preprocessing,  # likewise
)


# -- shared by the CNNDetection family ------------------------------------------------
def cnndetection_augment(image: Image.Image, p: Preprocessing) -> Image.Image:
    """CNNDetection's ``data_augment``: Gaussian blur, then JPEG, each with its probability.

    Blur: ``scipy.ndimage.gaussian_filter`` on each 8-bit channel with sigma ~
    U(``blur_sigma``), as the reference does. JPEG: quality drawn uniformly from
    the integers in ``jpeg_quality`` (inclusive), encoded with PIL (the reference
    picks OpenCV or PIL at random; OpenCV is not a deepsift dependency).
    """
    blur = p.blur_prob and random.random() < p.blur_prob
    jpeg = p.jpeg_prob and random.random() < p.jpeg_prob
    if not (blur or jpeg):
        return image
    array = np.array(image)  # (H, W, 3) uint8, a writable copy
    if blur:
        from scipy.ndimage import gaussian_filter

        low, high = p.blur_sigma
        sigma = random.random() * (high - low) + low
        for channel in range(array.shape[2]):
            gaussian_filter(array[:, :, channel], output=array[:, :, channel], sigma=sigma)
    if jpeg:
        quality = random.choice(range(int(p.jpeg_quality[0]), int(p.jpeg_quality[-1]) + 1))
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="jpeg", quality=quality)
        buffer.seek(0)
        array = np.array(Image.open(buffer).convert("RGB"))
    return Image.fromarray(array)


def cnndetection_train_transform(image: Image.Image, p: Preprocessing) -> torch.Tensor:
    """The official training pipeline, in the official order.

    ``Resize`` (``p.resize``) -> blur/JPEG (:func:`cnndetection_augment`) ->
    ``RandomCrop(p.size)`` -> ``RandomHorizontalFlip(p.hflip)`` -> ``ToTensor``
    -> ``Normalize``. (:class:`Preprocessing` on its own augments *before* resizing.)
    """
    image = p.resize_image(image)
    image = cnndetection_augment(image, p)
    tail = dataclasses.replace(p, resize="none", blur_prob=0.0, jpeg_prob=0.0)
    return tail(image, train=True)


def cnndetection_sample(
    sample: dict, train: bool, test: Preprocessing, training: Preprocessing
) -> dict[str, torch.Tensor]:
    """``{"image": ...}`` of a detector trained with CNNDetection's pipeline: in training
    :func:`cnndetection_train_transform` with ``training``, else ``test`` (no augmentation)."""
    if train:
        return {"image": cnndetection_train_transform(sample["image"], training)}
    return {"image": test(sample["image"], train=False)}

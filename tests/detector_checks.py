"""Checks every detector's tests share: backward reach, tiny-batch overfitting, real batches.

Each detector's test file writes its own reference figures (parameter counts,
expected shapes); these helpers only run the detector through the interface
that ``train.py`` uses (``transform`` -> collate -> ``training_step``), or make
the synthetic images several detectors' tests fit on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deepsift.core.records import Record, collate_samples
from detectors.base import Detector


def random_images(n: int, size: int | tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """``n`` RGB PIL images of noise, ``size`` = side or (width, height)."""
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(n)
    ]


def transformed_batch(
    detector: Detector,
    images: Sequence[Image.Image],
    labels: Sequence[int],
    records: Sequence[Record] | None = None,
    train: bool = False,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """A batch exactly as the engine builds it: the detector's transform, then the collate.

    Training augmentations draw from Python's, NumPy's and torch's global generators:
    ``seed`` seeds all three first, so the batch does not depend on which tests ran before.
    """
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
    records = records or [Record(f"mem{i}.png", int(y)) for i, y in enumerate(labels)]
    samples = []
    for index, (image, label, record) in enumerate(zip(images, labels, records, strict=True)):
        sample = {"image": image, "label": int(label), "record": record, "index": index}
        out = detector.transform(sample, train=train)
        out["label"] = torch.tensor(float(label))
        out["index"] = torch.tensor(index)
        samples.append(out)
    batch = collate_samples(samples)
    return {k: v for k, v in batch.items() if torch.is_tensor(v)}


def parameters_without_gradient(detector: Detector, batch: dict[str, torch.Tensor]) -> list[str]:
    """Names of trainable parameters that one ``training_step`` backward leaves without a finite grad."""
    detector.train()
    detector.zero_grad(set_to_none=True)
    detector.training_step(batch)["loss"].backward()
    missing = [
        name
        for name, p in detector.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    detector.zero_grad(set_to_none=True)
    return missing


def overfit(
    detector: Detector,
    batch: dict[str, torch.Tensor],
    steps: int = 60,
    lr: float = 1e-3,
    target: float = 0.05,
    seed: int = 0,
) -> float:
    """Adam on one batch until the training loss is below ``target``; returns the last loss."""
    torch.manual_seed(seed)
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    detector.train()
    loss = float("inf")
    for _ in range(steps):
        out = detector.training_step(batch)["loss"]
        loss = out.item()
        if loss < target:
            break
        optimizer.zero_grad(set_to_none=True)
        out.backward()
        optimizer.step()
    return loss


# -- closed-form detectors: a separable toy set and one training pass -------------------
def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Photo-like content: low-resolution noise upsampled bilinearly, plus sensor-like noise."""
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR), np.float64)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def upsampled_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """The same content through a nearest-neighbour x2 up-sampler (a generator's fingerprint)."""
    half = Image.fromarray(smooth_image(rng, size)).resize((size // 2, size // 2), Image.BILINEAR)
    return np.asarray(half.resize((size, size), Image.NEAREST))


def upsampling_set(seed: int, per_class: int, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``per_class`` smooth (label 0) then ``per_class`` up-sampled (label 1) uint8 images."""
    rng = np.random.default_rng(seed)
    images = [smooth_image(rng, size) for _ in range(per_class)]
    images += [upsampled_image(rng, size) for _ in range(per_class)]
    return images, np.array([0] * per_class + [1] * per_class)


def fit_closed_form(
    detector: Detector, images: Sequence[np.ndarray], labels: np.ndarray, batch_size: int = 16
) -> None:
    """What the engine does for a closed-form detector: one pass of training steps, then the hook."""
    detector.train()
    for start in range(0, len(images), batch_size):
        samples = [
            detector.train_transform({"image": Image.fromarray(im), "record": None})
            for im in images[start : start + batch_size]
        ]
        batch = torch.utils.data.default_collate(samples)
        batch["label"] = torch.as_tensor(labels[start : start + batch_size], dtype=torch.float32)
        assert detector.training_step(batch) == {}
    detector.on_train_epoch_end()


# -- an independent forward pass: torchvision's ResNet Bottleneck, functionally ---------------
def batch_norm(x: torch.Tensor, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Eval-mode ``BatchNorm2d`` ``name`` of ``state`` (eps 1e-5), functionally."""
    return F.batch_norm(
        x,
        state[f"{name}.running_mean"],
        state[f"{name}.running_var"],
        state[f"{name}.weight"],
        state[f"{name}.bias"],
        training=False,
        eps=1e-5,
    )


def bottleneck(
    x: torch.Tensor, state: dict[str, torch.Tensor], name: str, stride: int
) -> torch.Tensor:
    """torchvision's ``Bottleneck`` ``name`` of ``state`` (stride on the 3x3 conv), functionally."""
    out = F.relu(batch_norm(F.conv2d(x, state[f"{name}.conv1.weight"]), state, f"{name}.bn1"))
    out = F.conv2d(out, state[f"{name}.conv2.weight"], stride=stride, padding=1)
    out = F.relu(batch_norm(out, state, f"{name}.bn2"))
    out = batch_norm(F.conv2d(out, state[f"{name}.conv3.weight"]), state, f"{name}.bn3")
    identity = x
    if f"{name}.downsample.0.weight" in state:
        identity = F.conv2d(x, state[f"{name}.downsample.0.weight"], stride=stride)
        identity = batch_norm(identity, state, f"{name}.downsample.1")
    return F.relu(out + identity)


# -- learning-rate schedules ------------------------------------------------------------------
def step_decay_every_10_epochs(lr: float, factor: float, epochs: int) -> list[float]:
    """Each epoch's lr under the NPR/FreqNet ``train.py`` (``delr_freq 10``): multiplied by
    ``factor`` at the end of epoch ``e`` (from 0) when ``e % 10 == 0`` and ``e != 0``."""
    lrs = []
    for epoch in range(epochs):
        lrs.append(lr)
        if epoch % 10 == 0 and epoch != 0:
            lr *= factor
    return lrs


def lrs_per_epoch(optimizer: torch.optim.Optimizer, scheduler: Any, epochs: int) -> list[float]:
    """Each epoch's lr as deepsift trains: the scheduler stepped once per epoch."""
    lrs = []
    for _epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: a no-op that keeps the step order torch expects
        scheduler.step()
    return lrs

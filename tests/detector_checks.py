"""Checks every detector's tests share: backward reach, tiny-batch overfitting, real batches.

Each detector's test file writes its own reference figures (parameter counts,
expected shapes); these helpers only run the detector through the interface
that ``train.py`` uses (``transform`` -> collate -> ``training_step``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from datasets.base import Record, collate_samples
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
) -> dict[str, torch.Tensor]:
    """A batch exactly as the engine builds it: the detector's transform, then the collate."""
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

"""The loops: inference over records (sharded over ranks) and training epochs.

One code path for one process and for ``torchrun``: evaluation shards the
records without padding and gathers every rank's scores, so metrics over N
processes equal metrics over one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from deepsift.core import distributed as dist
from deepsift.core.inference import fake_probabilities, move_batch
from deepsift.core.progress import progress_bar
from deepsift.core.records import Record, RecordDataset, collate_by_shape, collate_samples
from deepsift.core.runtime import autocast, fork_safe_opencv
from detectors.base import Detector

log = logging.getLogger(__name__)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a dataset: no padding, no duplicates."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class InferenceResult:
    """Scores for the records that could be read, in record order, plus the files skipped."""

    indices: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def subset(self, records: Sequence[Record]) -> dict[str, list[Any]]:
        chosen = [records[i] for i in self.indices]
        return {
            "videos": [r.video for r in chosen],
            "generators": [r.generator for r in chosen],
            "paths": [r.path for r in chosen],
        }


def good_batches(
    loader: Iterable[dict[str, Any]],
    skipped: list[tuple[str, str]],
    device: torch.device,
    channels_last: bool = False,
    limit_batches: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Batches moved to ``device``; unreadable files are appended to ``skipped``, never raised."""
    for step, batch in enumerate(loader):
        if limit_batches is not None and step >= limit_batches:
            return
        skipped.extend(batch.pop("errors"))
        if "index" in batch:  # at least one readable sample
            yield move_batch(batch, device, channels_last)


def make_loader(
    dataset: RecordDataset,
    batch_size: int,
    num_workers: int,
    sampler: Sampler[int],
    seed: int | None = None,
    pin_memory: bool = False,
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] = collate_samples,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if num_workers > 0:
        fork_safe_opencv()  # the workers fork from this process
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=generator,
        pin_memory=pin_memory,
        # a new loader per epoch (reseeded from the seed and the epoch, so a resumed run
        # replays its epochs exactly): persistent workers would carry RNG state across
        persistent_workers=False,
    )


@torch.no_grad()
def run_inference(
    detector: Detector,
    records: Sequence[Record],
    device: torch.device,
    batch_size: int = 128,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    limit_batches: int | None = None,
    desc: str = "eval",
    perturb: Callable[[Any, str], Any] | None = None,
    log_skipped: bool = True,
) -> InferenceResult:
    """Fake probabilities for ``records`` with the detector's test-time preprocessing.

    Each loader batch is split by tensor shape (:func:`collate_by_shape`), so detectors
    that keep the native size are evaluated on mixed sizes; every part goes through
    :func:`deepsift.core.inference.fake_probabilities`, the forward pass of
    ``Detector.predict`` and ``score.py``. ``perturb`` (a
    :class:`deepsift.core.perturb.Perturbation`, for robustness sweeps) degrades every
    loaded image before the detector's transform; ``log_skipped=False`` keeps unreadable
    files out of the log (a sweep's plain evaluation has already named them).
    """
    dataset = RecordDataset(records, detector.eval_transform, perturb)
    sampler = ShardSampler(len(dataset), dist.rank(), dist.world_size())
    loader = make_loader(
        dataset,
        batch_size,
        num_workers,
        sampler,
        pin_memory=device.type == "cuda",
        collate_fn=collate_by_shape,
    )
    indices, probs, skipped = [], [], []
    for step, collated in enumerate(progress_bar(loader, desc)):
        if limit_batches is not None and step >= limit_batches:
            break
        skipped.extend(collated["errors"])
        for batch in collated["batches"]:
            probs.append(fake_probabilities(detector, batch, device, amp_dtype, channels_last))
            indices.append(batch["index"])
    local_idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    local_prob = torch.cat(probs) if probs else torch.zeros(0)
    all_idx = torch.cat([t for t in dist.all_gather_objects(local_idx)])
    all_prob = torch.cat([t for t in dist.all_gather_objects(local_prob)])
    all_skipped = [item for part in dist.all_gather_objects(skipped) for item in part]
    order = torch.argsort(all_idx)
    idx = all_idx[order].numpy()
    labels = np.array([records[i].label for i in idx], dtype=np.int64)
    for path, reason in all_skipped:
        if log_skipped and dist.is_main():
            log.warning("skipped unreadable image %s (%s)", path, reason)
    return InferenceResult(
        idx, all_prob[order].numpy().astype(np.float64), labels, sorted(all_skipped)
    )


class _StepModule(nn.Module):
    """Routes ``forward`` to ``training_step`` so DDP's gradient hooks see the detector's loss."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.detector.training_step(batch)


def wrap_for_training(
    detector: Detector, device: torch.device, find_unused: bool = False
) -> Callable:
    """The callable that runs one training step: DDP-wrapped under torchrun when there are gradients."""
    step_module = _StepModule(detector)
    if dist.world_size() > 1 and detector.fits_by_gradient:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            step_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )
    return step_module


def train_one_epoch(
    step_fn: Callable,
    detector: Detector,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None = None,
    channels_last: bool = False,
    limit_batches: int | None = None,
    desc: str = "train",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """One pass over ``loader``; returns the mean of each loss term and the skipped files."""
    detector.train()
    sums: dict[str, float] = {}
    count = 0
    skipped: list[tuple[str, str]] = []
    bar = progress_bar(loader, desc)
    for step, batch in enumerate(good_batches(bar, skipped, device, channels_last, limit_batches)):
        with autocast(device, amp_dtype):
            outputs = step_fn(batch)
        loss = outputs.get("loss")
        if loss is not None and optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(detector.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        scalars = {
            k: float(v.detach()) for k, v in outputs.items() if torch.is_tensor(v) and v.ndim == 0
        }
        for key, value in scalars.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        if scalars:
            bar.set_postfix({k: f"{v:.4f}" for k, v in scalars.items()}, refresh=False)
        if on_step is not None:
            on_step(step, scalars)
    means = {k: v / max(count, 1) for k, v in sums.items()}
    # average the epoch means over ranks so every rank logs and decides alike
    gathered = dist.all_gather_objects(means)
    keys = set().union(*gathered)
    means = {k: float(np.mean([g[k] for g in gathered if k in g])) for k in keys}
    all_skipped = [item for part in dist.all_gather_objects(skipped) for item in part]
    return means, all_skipped

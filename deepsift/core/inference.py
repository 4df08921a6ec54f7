"""The one inference path: transformed samples in, fake probabilities out.

Training's validation, ``evaluate.py``, :meth:`detectors.base.Detector.predict` and
``score.py`` all call :func:`fake_probabilities` on batches made by
:func:`batches_by_shape`, so a detector gives the same score for the same image
whichever of them asked:

* the batch moves to the device (channels-last for 4-D float tensors when asked:
  on CUDA by default);
* the forward pass runs under the same autocast (:func:`deepsift.core.runtime.autocast_dtype`:
  bf16, or fp16, on CUDA; fp32 on CPU) and without gradients;
* ``sigmoid(logits)`` is taken in float32 and returned on the CPU, one value per sample.

Samples are grouped by the shapes of their tensors before they are stacked, so
detectors that read images at their native size (no resize) batch images of equal
size together instead of failing on a mixed batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from deepsift.core.runtime import autocast


def move_batch(
    batch: Mapping[str, Any], device: torch.device, channels_last: bool = False
) -> dict[str, Any]:
    """Tensors of ``batch`` on ``device`` (4-D float ones channels-last when asked); others as they are."""
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


@torch.no_grad()
def fake_probabilities(
    model: nn.Module,
    batch: Mapping[str, Any],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """``sigmoid(model(batch)["logits"])`` in float32 on the CPU, shape ``(N,)``.

    ``model`` is put in eval mode; it must already be on ``device``.
    """
    model.eval()
    moved = move_batch(batch, device, channels_last)
    with autocast(device, amp_dtype):
        logits = model(moved)["logits"]
    return torch.sigmoid(logits.float()).reshape(-1).cpu()


def shape_key(sample: Mapping[str, Any]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The names and shapes of a sample's tensors: samples with equal keys stack."""
    return tuple(
        (key, tuple(value.shape)) for key, value in sorted(sample.items()) if torch.is_tensor(value)
    )


def batches_by_shape(
    samples: Iterable[tuple[int, Mapping[str, Any]]], batch_size: int
) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """``(positions, batch)`` of at most ``batch_size`` samples of one shape each.

    ``samples`` yields ``(position, sample)``; a group is stacked as soon as it is
    full, the partial groups at the end. Samples of one shape keep their order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    groups: dict[tuple, list[tuple[int, Mapping[str, Any]]]] = {}
    for position, sample in samples:
        group = groups.setdefault(shape_key(sample), [])
        group.append((position, sample))
        if len(group) == batch_size:
            yield _stack(group)
            group.clear()
    for group in groups.values():
        if group:
            yield _stack(group)


def _stack(group: list[tuple[int, Mapping[str, Any]]]) -> tuple[list[int], dict[str, Any]]:
    positions = [position for position, _ in group]
    tensors = [{k: v for k, v in sample.items() if torch.is_tensor(v)} for _, sample in group]
    return positions, default_collate(tensors)

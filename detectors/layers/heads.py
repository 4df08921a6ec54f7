"""Classifier heads of community checkpoints as deepsift's one fake logit, and the batch-norm
counters that old torch files lack."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from deepsift.core.errors import UserError


# -- community checkpoints --------------------------------------------------------------
def fake_logit_head(
    weight: torch.Tensor, bias: torch.Tensor | None, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, F) fake-logit head from a 1- or 2-class one (class 1 = fake).

    ``softmax(z)[1] = sigmoid(z1 - z0)``, so ``(w[1] - w[0], b[1] - b[0])`` gives
    the same probability.
    """
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
    if weight.ndim != 2 or weight.shape[0] not in (1, 2) or bias.shape != weight.shape[:1]:
        raise UserError(
            f"{source} has a classifier of shape {tuple(weight.shape)}; expected 1 (fake logit) "
            f"or 2 (real, fake) outputs. An ImageNet file goes to detector.pretrained_file"
        )
    if weight.shape[0] == 2:
        return (weight[1] - weight[0])[None], (bias[1] - bias[0])[None]
    return weight, bias


def fill_num_batches_tracked(state: dict[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Add zero ``num_batches_tracked`` counters when the file has none (torch < 0.4.1 files)."""
    counters = [k for k in expected if k.endswith("num_batches_tracked")]
    if counters and not any(k.endswith("num_batches_tracked") for k in state):
        state = {**state, **{k: torch.zeros((), dtype=torch.long) for k in counters}}
    return state

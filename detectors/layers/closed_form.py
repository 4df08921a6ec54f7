"""Bookkeeping shared by detectors fitted in closed form (scikit-learn on features).

Such a detector collects features and labels in ``training_step``; at epoch end
every rank's share is gathered, rank 0 fits, and the result (plain arrays, or
``{"error": ...}``) is broadcast so that every rank stores the same weights or
raises the same one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from deepsift.core import distributed as dist
from deepsift.core.errors import UserError


def gathered_training_set(
    features: list[torch.Tensor], labels: list[torch.Tensor], empty_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's collected features and labels; the collecting lists are emptied."""
    local_x = torch.cat(features) if features else torch.zeros(empty_shape)
    local_y = torch.cat(labels) if labels else torch.zeros(0)
    features.clear()
    labels.clear()
    return dist.all_gather_cat(local_x), dist.all_gather_cat(local_y)


def fit_on_main(
    fit: Callable[[np.ndarray, np.ndarray], dict[str, Any]], x: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    """Run ``fit`` on rank 0 and share its result; a returned ``error`` becomes a UserError everywhere."""
    result = fit(x, y) if dist.is_main() else None
    result = dist.broadcast_object(result)
    if "error" in result:
        raise UserError(result["error"])
    return result


def training_set_problem(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    purpose: str = "",
    hint: str = "check the training split",
    what: str = "features",
) -> str | None:
    """Why ``x``/``y`` cannot be fitted (no images, one class, non-finite values), or None."""
    if x.shape[0] == 0:
        return f"{name} saw no training images; check the training split"
    present = sorted(int(v) for v in np.unique(np.rint(y).astype(np.int64)))
    if present != [0, 1]:
        return f"{name} needs real (0) and fake (1) training images{purpose}, got only label {present}; {hint}"
    bad = int((~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)).sum())
    if bad:
        return f"{name} computed non-finite {what} for {bad} training images; check them for empty or constant content"
    return None


def linear_classifier(kind: str, C: float, max_iter: int, random_state: int) -> Any:
    """An unfitted scikit-learn linear classifier: ``"svm"`` or ``"logistic"``.

    ``svm``: ``LinearSVC`` with the hinge loss (dual); anything else:
    ``LogisticRegression`` with the liblinear solver.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if kind == "svm":
        return LinearSVC(C=C, loss="hinge", dual=True, max_iter=max_iter, random_state=random_state)
    return LogisticRegression(C=C, solver="liblinear", max_iter=max_iter, random_state=random_state)


class NotFittedError(UserError, RuntimeError):
    """Raised when an unfitted closed-form detector is asked for scores."""

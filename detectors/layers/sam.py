"""Sharpness-Aware Minimisation (Foret et al., ICLR 2021) and SBI's linear learning-rate
decay, as torch optimiser and scheduler classes (SBI trains with them)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


@functools.cache
def _warn_nonfinite() -> None:
    """Said once per process: the step goes on without the ascent."""
    log.warning("SAM: non-finite first gradient; skipping the ascent")


# -- sharpness-aware minimisation through the Detector interface ----------------------
class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al., ICLR 2021) split across the engine's step.

    The reference (``src/utils/sam.py``, ``src/model.py``) does both passes in
    its training step: loss and gradient at ``w``, an ascent to ``w + e(w)``
    with ``e = rho * g / ||g||`` (global L2 norm), loss and gradient there,
    back to ``w``, then the base optimiser's step with the second gradient.
    Here :meth:`SBI.training_step` computes the first gradient with
    ``torch.autograd.grad`` (leaving ``.grad`` untouched), calls :meth:`ascend`
    and returns the loss at ``w + e``; the engine back-propagates it and calls
    :meth:`step`, which returns to ``w`` (:meth:`restore`) and steps the base
    optimiser. The parameter updates are the reference's (a test compares
    them). Under DDP the engine averages the second gradient over ranks; each
    rank ascends along its own first gradient (the "m-sharpness" of the SAM
    paper). :meth:`state_dict` is the base optimiser's (momentum buffers),
    which the reference's checkpoints leave out.

    Args:
        params: parameters or parameter groups.
        base_optimizer: the optimiser class or partial (default SGD).
        rho: the ascent radius (0.05, the reference's).
        adaptive: ASAM's element-wise scaling (off in the reference).
        **kwargs: the base optimiser's arguments (``lr``, ``momentum`` ...).
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        **kwargs: Any,
    ) -> None:
        if rho < 0:
            raise ValueError(f"SAM's rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._perturbation: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, saved w)

    def params(self) -> list[torch.Tensor]:
        """Every parameter, in group order (the order :meth:`ascend` expects its gradients in)."""
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def ascend(self, grads: Sequence[torch.Tensor | None]) -> bool:
        """Move to ``w + e(w)`` along ``grads`` (one per :meth:`params` entry, ``None`` = unused).

        Returns False (and stays at ``w``) when no parameter has a gradient or
        the gradient norm is not finite.
        """
        self.restore()
        pairs = []
        flat = iter(grads)
        for group in self.param_groups:
            for p in group["params"]:
                g = next(flat)
                if g is not None:
                    pairs.append((group, p, g))
        if not pairs:
            return False
        norm = torch.norm(
            torch.stack(
                [
                    ((p.abs() if group["adaptive"] else 1.0) * g).norm(2).to(pairs[0][1].device)
                    for group, p, g in pairs
                ]
            ),
            2,
        )
        if not torch.isfinite(norm):
            _warn_nonfinite()
            return False
        for group, p, g in pairs:
            scale = group["rho"] / (norm + 1e-12)
            e = (p.pow(2) if group["adaptive"] else 1.0) * g * scale.to(p)
            self._perturbation.append((p, p.detach().clone()))
            p.add_(e)
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """Return to ``w`` if an ascent is pending.

        ``w`` is copied back, not recomputed as ``(w + e) - e`` (the reference's
        subtraction, off by rounding), so DDP ranks stay bit-identical.
        """
        for p, saved in self._perturbation:
            p.copy_(saved)
        self._perturbation = []

    @property
    def perturbed(self) -> bool:
        return bool(self._perturbation)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Return to ``w`` and take the base optimiser's step with the current gradients."""
        self.restore()
        return self.base_optimizer.step(closure)

    def state_dict(self) -> dict[str, Any]:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)


class LinearDecayLR(torch.optim.lr_scheduler.LRScheduler):
    """The reference's ``LinearDecayLR``: constant, then linear decay after ``start_decay`` epochs.

    In epoch ``e`` (from 0): ``lr = base`` for ``e <= start_decay``, else
    ``base - base / (n_epochs - start_decay) * (e - start_decay)``; stepped
    once per epoch (``LinearDecayLR(optimizer, 100, 75)`` in ``train_sbi.py``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        n_epochs: int = 100,
        start_decay: int = 75,
        last_epoch: int = -1,
    ) -> None:
        if not 0 <= start_decay < n_epochs:
            raise ValueError(f"need 0 <= start_decay < n_epochs, got {start_decay}, {n_epochs}")
        self.n_epochs, self.start_decay = n_epochs, start_decay
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        e, start = self.last_epoch, self.start_decay
        if e <= start:
            return list(self.base_lrs)
        return [base - base / (self.n_epochs - start) * (e - start) for base in self.base_lrs]

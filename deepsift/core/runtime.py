"""Device, precision and seeding choices shared by training, evaluation and scoring."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from deepsift.core.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu`` forces the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.device={name} but no CUDA GPU is visible; use trainer.device=cpu or auto"
        )
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"trainer.device={name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Mixed precision on CUDA (bf16 where supported, else fp16); none on CPU or with precision=32."""
    if precision not in ("auto", "32", "bf16", "16"):
        raise UserError(f"trainer.precision={precision!r} is not one of auto, 32, bf16, 16")
    if device.type != "cuda" or precision == "32":
        return None
    if precision == "16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: resuming at an epoch boundary replays it exactly."""
    return (int(seed) * 1_000_003 + epoch * 1_009 + rank) % (2**31 - 1)


def fork_safe_opencv() -> None:
    """Stop OpenCV's thread pool in this process before it forks workers.

    A process forked while OpenCV's pool threads exist deadlocks at its first OpenCV
    call that touches the pool (``cv2.setNumThreads`` included): the threads are not
    copied into the child, their locks are. Setting one thread joins the pool's threads,
    so forked workers start clean (and run one OpenCV thread each, which is what a pool
    of workers wants). Called by every fork-based pool: the DataLoader workers, the
    preprocessing and scoring pools.
    """
    import cv2

    cv2.setNumThreads(1)

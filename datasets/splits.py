"""Split names and helpers shared by the benchmark loaders: split checks, deterministic
held-out slices (:func:`bucket`), and the one-line message for bad lines of a list file."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from deepsift.core.errors import UserError


def bucket(key: str) -> float:
    """A stable number in [0, 1) for ``key`` (crc32), for deterministic held-out slices."""
    return zlib.crc32(key.encode("utf-8")) / 2**32


def format_bad_lines(bad: Sequence[tuple[int, str]], limit: int = 5) -> str:
    shown = "; ".join(f"line {n}: {why}" for n, why in bad[:limit])
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return shown + more


SPLITS = ("train", "val", "test")


def check_split(split: str, available: Sequence[str], name: str, why: str = "") -> None:
    if split in available:
        return
    if split in SPLITS:
        raise UserError(
            f"data {name!r} has no {split!r} split{why}; its splits: {', '.join(available)}"
        )
    raise UserError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")

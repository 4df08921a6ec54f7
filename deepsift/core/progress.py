"""Progress bars: live in a terminal, a line every 30 s in logs and CI, silent on ranks > 0."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` that does not flood non-interactive output."""
    from deepsift.core import distributed

    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        disable=not enabled or not distributed.is_main(),
        leave=False,
        dynamic_ncols=True,
        mininterval=0.1 if interactive else 30.0,
        **kwargs,
    )

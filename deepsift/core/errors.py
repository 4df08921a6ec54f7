"""User-facing errors: one clear line naming the problem and the fix, no stack trace."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger("deepsift")


class UserError(Exception):
    """A problem the user can fix (bad name, missing file, wrong checkpoint).

    The message is one line that says what is wrong and what to do instead.
    Entry points print it as ``error: <message>`` and exit with status 2.
    """


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn :class:`UserError` into one line on stderr and exit status 2."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)

"""User-facing errors: one clear line naming the problem and the fix, no stack trace."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

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


def instantiate(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a constructor's :class:`UserError` through.

    Hydra wraps every constructor exception in ``InstantiationException``, which
    would turn a one-line user error (bad ``methods``, unknown generator) into a
    stack trace; a mandatory setting left at ``???`` becomes one line too.
    """
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf.errors import MissingMandatoryValue

    try:
        return hydra_instantiate(config, **kwargs)
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, UserError):
                raise cause from None
            if isinstance(cause, MissingMandatoryValue):
                key = getattr(cause, "full_key", None) or "a setting"
                raise UserError(
                    f"{key} is required and not set; pass {key}=<value> on the command line"
                ) from None
            cause = cause.__cause__
        raise

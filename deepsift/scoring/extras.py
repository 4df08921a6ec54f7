"""Provenance signals and the PDQ hash, through adapters that tolerate their absence.

* ``deepsift.scoring.provenance.read_provenance(raw, image, fmt)``: C2PA manifest, the
  Stable Diffusion invisible watermark, generator metadata (PNG ``parameters`` /
  ``prompt`` / ``workflow`` chunks, EXIF Software and UserComment, IPTC/XMP
  digitalSourceType), as a JSON-able dict;
* ``deepsift.scoring.pdq.pdq_hash(image)``: ``{"hash": 64 hex digits, "quality": int}``.

When a module (or the package it needs) is missing, its record field is ``null``
and the summary says why; an exception on one image becomes
``{"error": "<reason>"}`` in that image's field and never stops the run.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from typing import Any

from PIL import Image


def load_optional(module: str, function: str) -> tuple[Callable[..., Any] | None, str | None]:
    """``(function, None)`` when ``module.function`` imports, else ``(None, why not)``."""
    try:
        return getattr(importlib.import_module(module), function), None
    except ImportError as exc:
        return None, f"{module} unavailable ({exc})"
    except AttributeError:
        return None, f"{module} has no {function}()"
    except Exception as exc:  # a broken optional module must not stop scoring
        return None, f"{module} failed to import ({type(exc).__name__}: {exc})"


def jsonable(value: Any) -> Any:
    """Plain JSON types (NaN/inf as null; bytes as hex; unknown objects as their str)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:160]}"


def safe_provenance(
    reader: Callable[..., Any], raw: bytes, image: Image.Image | None, fmt: str | None
) -> dict[str, Any]:
    try:
        out = jsonable(reader(raw, image, fmt))
    except Exception as exc:
        return {"error": _short(exc)}
    out = out if isinstance(out, dict) else {"value": out}
    json.dumps(out)  # guaranteed by jsonable; fail loudly in tests if not
    return out


def safe_pdq(hasher: Callable[..., Any], image: Image.Image) -> dict[str, Any]:
    try:
        out = jsonable(hasher(image))
    except Exception as exc:
        return {"error": _short(exc)}
    return out if isinstance(out, dict) else {"value": out}

"""Re-encode images identically for both classes (the class-dependent format pitfall).

In several benchmarks reals and fakes differ in file format (GenImage and
DiffusionForensics reals are JPEG, their fakes PNG), which a detector can learn
instead of generation traces. A data source's ``reencode`` setting (``null``,
``png``, ``jpeg<quality>`` such as ``jpeg95``) is stored in
``Record.extra["reencode"]`` and applied to every image when it is loaded.
"""

from __future__ import annotations

import functools
import io

from PIL import Image

from deepsift.core.errors import UserError


@functools.lru_cache(maxsize=32)
def parse_reencode(spec: str | None) -> tuple[str, int] | None:
    """``None``/``"none"`` -> ``None``; ``"png"`` -> ``("png", 0)``; ``"jpeg95"`` -> ``("jpeg", 95)``.

    ``"jpeg"`` alone means quality 95; ``jpg`` and ``jpeg_95`` are accepted too.
    """
    if spec is None:
        return None
    text = str(spec).strip().lower().replace("_", "").replace("-", "")
    if text in ("", "none", "null"):
        return None
    if text == "png":
        return ("png", 0)
    for prefix in ("jpeg", "jpg"):
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            quality = int(rest) if rest.isdigit() else (95 if not rest else -1)
            if 1 <= quality <= 100:
                return ("jpeg", quality)
    raise UserError(
        f"reencode={spec!r} is not one of null, png, jpeg<quality 1-100> (for example jpeg95)"
    )


def reencode(image: Image.Image, spec: str | None) -> Image.Image:
    """``image`` encoded per ``spec`` (see :func:`parse_reencode`) and decoded again, as RGB."""
    parsed = parse_reencode(spec)
    if parsed is None:
        return image
    fmt, quality = parsed
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return decoded.convert("RGB")

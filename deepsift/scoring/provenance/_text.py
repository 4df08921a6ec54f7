"""Small helpers shared by the provenance readers: bounded, JSON-safe values."""

from __future__ import annotations

import re

MAX_TEXT = 300
MAX_ITEMS = 20
_ADDRESS = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def clip(value: object, limit: int = MAX_TEXT) -> str:
    """``value`` as a string of at most ``limit`` characters, NULs removed."""
    text = value if isinstance(value, str) else str(value)
    text = text.replace("\x00", "")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def reason(exc: BaseException) -> str:
    """A short, one-line description of an exception for an output record.

    Object addresses (``<_io.BytesIO object at 0x7f...>``) are dropped so that
    the same failure reads the same in every record.
    """
    message = " ".join(_ADDRESS.sub("", str(exc)).split())
    name = type(exc).__name__.lstrip("_")
    return clip(f"{name}: {message}" if message else name, 200)


def decode_bytes(data: bytes, encoding: str = "utf-8") -> str:
    """Decode without raising; undecodable bytes become U+FFFD."""
    return data.decode(encoding, errors="replace")


def sniff_format(raw: bytes) -> str | None:
    """The container format from the first bytes, as Pillow names it."""
    head = raw[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM":
        return "BMP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIF"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return "JXL"
    return None

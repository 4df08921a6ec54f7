"""Light laundering, as social networks apply it, to tell stable verdicts from fragile ones.

Two copies of each scored image (or face crop) are re-scored: a JPEG re-encoding
at quality 90 (Pillow's default 4:2:0 chroma subsampling) and a 0.75x bicubic
down-scaling. A record is ``unstable`` when either copy lands in another band
than the original: a verdict that one re-upload would flip should not be acted on
alone. Off by default (``--stability``) because it triples the model's work.
"""

from __future__ import annotations

import io

from PIL import Image

#: laundering name -> what it does (record keys of ``stability``)
VARIANTS = ("jpeg90", "resize0.75")
ORIGINAL = "original"


def jpeg(image: Image.Image, quality: int = 90) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as reopened:
        return reopened.convert("RGB")


def downscale(image: Image.Image, factor: float = 0.75) -> Image.Image:
    width, height = image.size
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC)


def launder(image: Image.Image) -> dict[str, Image.Image]:
    """The laundered copies of an RGB image, keyed by :data:`VARIANTS`."""
    return {"jpeg90": jpeg(image, 90), "resize0.75": downscale(image, 0.75)}


def is_unstable(band: str | None, laundered_bands: dict[str, str | None]) -> bool | None:
    """True when a laundered copy's band differs from the original's; None when unscored."""
    if band is None:
        return None
    return any(other is not None and other != band for other in laundered_bands.values())

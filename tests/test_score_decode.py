"""score.py decoding: unusual but valid images become the right RGB; broken ones get a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from datasets.video import frame_indices
from deepsift.core.images import to_rgb
from deepsift.scoring.decode import ItemError, decode_frames, decode_image
from tests.scoring_fixtures import GOOD, animated, encode, make_zoo, noise, png16, png_bomb_header


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_format_comes_from_content_not_extension() -> None:
    decoded = decode_image(encode(Image.fromarray(noise(0)), "JPEG"))
    assert decoded.format == "JPEG" and decoded.image.mode == "RGB"
    assert decoded.image.size == (48, 40)


def test_cmyk_palette_gray_become_pillow_rgb() -> None:
    cmyk = Image.frombytes("CMYK", (48, 40), noise(1, channels=4).tobytes())
    raw = encode(cmyk, "JPEG", quality=95)
    with Image.open(__import__("io").BytesIO(raw)) as reference:
        expected = pixels(reference)
    decoded = decode_image(raw)
    assert decoded.mode == "CMYK"
    np.testing.assert_array_equal(pixels(decoded.image), expected)
    gray = noise(2, channels=1)
    np.testing.assert_array_equal(
        pixels(decode_image(encode(Image.fromarray(gray), "PNG")).image),
        np.repeat(gray[..., None], 3, -1),
    )
    palette = Image.fromarray(noise(3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    np.testing.assert_array_equal(
        pixels(decode_image(encode(palette, "PNG")).image), pixels(palette)
    )


def test_16_bit_images_are_scaled_not_clipped() -> None:
    ramp = (np.arange(40 * 48, dtype=np.uint32).reshape(40, 48) * 34).astype(np.uint16)
    gray = decode_image(png16(ramp))
    assert gray.mode.startswith("I")
    np.testing.assert_array_equal(pixels(gray.image)[..., 0], ramp >> 8)
    rgb = np.stack([ramp, ramp[::-1], 65535 - ramp], axis=-1)
    np.testing.assert_array_equal(pixels(decode_image(png16(rgb)).image), rgb >> 8)
    # Pillow's own conversion would clip: most of the ramp would be white
    assert (pixels(gray.image) == 255).mean() < 0.01


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[0], [255], [128], [64]]
    out = pixels(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")).image)
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent -> white
    assert tuple(out[1, 0]) == (200, 0, 0)  # opaque -> itself
    assert abs(int(out[2, 0, 1]) - 127) <= 1  # half -> halfway to white
    palette = Image.fromarray(noise(4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    transparent = decode_image(encode(palette, "PNG", transparency=0)).image
    mask = np.asarray(palette) == 0
    assert mask.any() and (pixels(transparent)[mask] == 255).all()


def test_exif_orientation_is_applied() -> None:
    stored = Image.fromarray(noise(5, 24, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = encode(stored, "JPEG", quality=95, exif=exif)
    decoded = decode_image(raw)
    assert decoded.image.size == (24, 40)  # rotated: width and height swap
    with Image.open(__import__("io").BytesIO(raw)) as reference:
        np.testing.assert_array_equal(
            pixels(decoded.image), pixels(ImageOps.exif_transpose(reference))
        )
    assert decoded.stored.size == (40, 24)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame_and_sampled_frames(fmt: str) -> None:
    raw = animated(fmt, n=5)
    decoded = decode_image(raw)
    assert decoded.animated
    first, frames = decode_frames(raw, lambda n: frame_indices(n, 3))
    assert [i for i, _ in frames] == [0, 2, 4]
    np.testing.assert_array_equal(pixels(frames[0][1]), pixels(first.image))
    assert not np.array_equal(pixels(frames[1][1]), pixels(frames[2][1]))
    if fmt == "WEBP":  # lossless enough to recognise each frame's source
        for index, frame in frames:
            assert np.abs(pixels(frame) - noise(100 + index)).mean() < 30


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty file (0 bytes)"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "corrupt image header"),
        (b"%PDF-1.4 not an image" * 5, "not an image (format not recognised)"),
        (png_bomb_header(), "decompression bomb refused: 2500000000 pixels > --max-pixels"),
    ],
)
def test_refused_before_decoding(raw: bytes, reason: str) -> None:
    with pytest.raises(ItemError) as caught:
        decode_image(raw)
    assert str(caught.value).startswith(reason)


def test_pixel_limit_is_an_option() -> None:
    raw = encode(Image.fromarray(noise(6)), "PNG")
    assert decode_image(raw, max_pixels=48 * 40).image.size == (48, 40)
    with pytest.raises(ItemError, match="--max-pixels 1000"):
        decode_image(raw, max_pixels=1000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(fmt: str) -> None:
    raw = encode(Image.fromarray(noise(7, 64, 64)), fmt)
    with pytest.raises(ItemError, match="truncated or corrupt"):
        decode_image(raw[: len(raw) // 2])


def test_float_and_32_bit_modes() -> None:
    as_float = Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), "F")
    assert pixels(to_rgb(as_float))[..., 0].max() == 255
    as_int = Image.fromarray(np.full((2, 2), 70000, np.int32), "I")
    assert pixels(to_rgb(as_int))[0, 0, 0] == 255


def test_training_loader_reads_what_scoring_decodes(tmp_path: Path) -> None:
    """evaluate.py (load_rgb) and score.py (decode_image) must see the same pixels, or a
    threshold calibrated on one would not hold on the other."""
    from deepsift.core.images import load_rgb

    make_zoo(tmp_path)
    for name in GOOD:
        path = tmp_path / name
        decoded = decode_image(path.read_bytes()).image
        np.testing.assert_array_equal(pixels(load_rgb(path)), pixels(decoded), err_msg=name)
    with Image.open(tmp_path / "rotated.jpg") as reference:
        upright = pixels(ImageOps.exif_transpose(reference).convert("RGB"))
    np.testing.assert_array_equal(pixels(load_rgb(tmp_path / "rotated.jpg")), upright)

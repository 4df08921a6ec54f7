"""Generated inputs and stub models for the score.py tests (tests/test_score_*.py).

Every hard case of the issue is built here from scratch: images in unusual
modes, broken files, archives with hostile members, videos, odd file names.
Stub detectors and a stub face detector make scores predictable, so bands,
faces, stability and aggregation can be checked exactly.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.scoring.models import Ensemble, Member
from detectors.base import Detector


def tiny_ensemble() -> Ensemble:
    """One ResNet-18 timm_classifier at 32 px with seeded weights: the scoring tests' model."""
    from detectors import load_detector

    torch.manual_seed(0)
    detector = load_detector(
        "timm_classifier", backbone="resnet18", preprocessing={"size": 32}
    ).eval()
    return Ensemble([Member("tiny", detector, False, {"detector": "tiny"})])


TINY = [
    "--detector",
    "timm_classifier",
    "--set",
    "backbone=resnet18",
    "--set",
    "preprocessing.size=32",
]


@pytest.fixture
def one_thread():
    """One torch thread while scoring: tiny batches on a shared CPU run ~10x faster than with
    spinning OpenMP threads competing for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- bytes ------------------------------------------------------------------------
def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale (H, W) or RGB (H, W, 3)) written by hand, as cameras and scanners do."""
    color = 2 if array.ndim == 3 else 0
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    header = struct.pack(">IIBBBBB", array.shape[1], array.shape[0], 16, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def png_bomb_header(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG that claims ``width x height`` pixels (2.5 gigapixels) in a few dozen bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def noise(seed: int, height: int = 40, width: int = 48, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def animated(fmt: str, n: int = 3) -> bytes:
    frames = [Image.fromarray(noise(100 + i)) for i in range(n)]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra
    )


def write_video(path: Path, n_frames: int = 20, size: tuple[int, int] = (64, 48)) -> bool:
    """An MJPG AVI whose frame ``i`` has brightness ``12 * i`` (False without OpenCV)."""
    try:
        import cv2
    except ImportError:
        return False
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(n_frames):
        writer.write(np.full((size[1], size[0], 3), 12 * i, np.uint8))
    writer.release()
    return path.is_file() and path.stat().st_size > 0


# -- the zoo ------------------------------------------------------------------------
def expected_rgb(name: str, path: Path) -> Image.Image:
    """What the pipeline must score for a good zoo image: training's loader, plus EXIF rotation."""
    from PIL import ImageOps

    from deepsift.core.images import load_rgb

    if name == "rotated.jpg":
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    return load_rgb(path)


GOOD = (
    "plain.png",
    "photo.jpg",
    "lying.png",
    "cmyk.jpg",
    "gray16.png",
    "rgb16.png",
    "palette.png",
    "palette_t.png",
    "alpha.png",
    "gray.png",
    "rotated.jpg",
    "animated.gif",
    "animated.webp",
    "nested/deeper/x.png",
    "név ünicode.png",
    "new\nline.png",
)

#: bad files: name -> a substring of the error reason
BAD = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated or corrupt",
    "truncated.png": "truncated or corrupt",
    "text.jpg": "not an image",
    "bomb.png": "decompression bomb",
    "broken_link.png": "broken symbolic link",
    "self_link.png": "symbolic link loop",
    "fifo": "not a regular file",
    "corrupt.zip": "corrupt zip archive",
}


def make_zoo(root: Path) -> dict[str, Any]:
    """Write every case under ``root``; returns what the tests check against."""
    root.mkdir(parents=True, exist_ok=True)

    def put(name: str, data: bytes) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    rgb = Image.fromarray(noise(1))
    put("plain.png", encode(rgb, "PNG"))
    put("photo.jpg", encode(Image.fromarray(noise(2)), "JPEG", quality=92))
    put("lying.png", encode(Image.fromarray(noise(3)), "JPEG", quality=92))
    cmyk = Image.frombytes("CMYK", (48, 40), noise(4, channels=4).tobytes())
    put("cmyk.jpg", encode(cmyk, "JPEG", quality=95))
    ramp = (np.arange(40 * 48, dtype=np.uint32).reshape(40, 48) * 34).astype(np.uint16)
    put("gray16.png", png16(ramp))
    put("rgb16.png", png16(np.stack([ramp, ramp[::-1], 65535 - ramp], axis=-1)))
    palette = Image.fromarray(noise(5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    put("palette.png", encode(palette, "PNG"))
    put("palette_t.png", encode(palette, "PNG", transparency=3))
    rgba = np.concatenate([noise(6), noise(7, channels=1)[..., None]], axis=-1)
    put("alpha.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    put("gray.png", encode(Image.fromarray(noise(8, channels=1)), "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    put("rotated.jpg", encode(Image.fromarray(noise(9, 24, 40)), "JPEG", quality=95, exif=exif))
    put("animated.gif", animated("GIF"))
    put("animated.webp", animated("WEBP"))
    put("nested/deeper/x.png", encode(Image.fromarray(noise(10)), "PNG"))
    put("név ünicode.png", encode(Image.fromarray(noise(11)), "PNG"))
    put("new\nline.png", encode(Image.fromarray(noise(12)), "PNG"))
    shutil.copy(root / "plain.png", root / "zz_duplicate.png")
    # a name that is not UTF-8 (Linux allows any bytes but / and NUL)
    non_utf8 = os.fsdecode(os.fsencode(str(root)) + b"/bad\xff.png")
    Path(non_utf8).write_bytes(encode(Image.fromarray(noise(13)), "PNG"))

    jpeg = (root / "photo.jpg").read_bytes()
    png = (root / "plain.png").read_bytes()
    put("empty.jpg", b"")
    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    put("truncated.png", png[: len(png) // 2])
    put("text.jpg", b"this is a text file, not a JPEG\n" * 20)
    put("bomb.png", png_bomb_header())
    os.symlink(root / "absent.png", root / "broken_link.png")
    os.symlink(root / "self_link.png", root / "self_link.png")
    os.symlink(root, root / "loop")  # a directory symlink back to the root
    os.mkfifo(root / "fifo")
    put("corrupt.zip", b"PK\x03\x04" + b"\x00" * 60)

    members = make_zip(root / "archive.zip")
    tar_members = make_tar(root / "archive.tar.gz")
    return {"root": root, "non_utf8": non_utf8, "zip": members, "tar": tar_members}


def make_zip(path: Path) -> dict[tuple[str, int], str | None]:
    """A zip with good, hostile and broken members; ``(name, index) -> error substring``."""
    good = encode(Image.fromarray(noise(20)), "PNG")
    corrupt_target = encode(Image.fromarray(noise(21)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate name
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.png", good, compress_type=zipfile.ZIP_DEFLATED)
            archive.writestr("../escape.png", encode(Image.fromarray(noise(22)), "PNG"))
            archive.writestr("/abs/evil.png", encode(Image.fromarray(noise(23)), "PNG"))
            archive.writestr("dir/", b"")
            archive.writestr("dir/b.jpg", encode(Image.fromarray(noise(24)), "JPEG"))
            archive.writestr("bomb.bin", b"\x00" * 3_000_000, compress_type=zipfile.ZIP_DEFLATED)
            archive.writestr("corrupt.png", corrupt_target, compress_type=zipfile.ZIP_STORED)
            archive.writestr("a.png", encode(Image.fromarray(noise(25)), "PNG"))
            archive.writestr("notes.txt", b"hello")
    data = bytearray(path.read_bytes())
    at = data.find(corrupt_target)
    data[at + 100 : at + 110] = b"\xff" * 10  # damaged bytes: the CRC no longer matches
    path.write_bytes(bytes(data))
    return {
        ("a.png", 0): None,
        ("../escape.png", 1): None,
        ("/abs/evil.png", 2): None,
        ("dir/b.jpg", 4): None,
        ("bomb.bin", 5): "max-member-bytes",
        ("corrupt.png", 6): "corrupt archive member",
        ("a.png", 7): None,
        ("notes.txt", 8): "not an image",
    }


def make_tar(path: Path) -> dict[tuple[str, int], str | None]:
    def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w:gz") as archive:
        add(archive, "c.png", encode(Image.fromarray(noise(30)), "PNG"))
        add(archive, "../../evil.png", encode(Image.fromarray(noise(31)), "PNG"))
        link = tarfile.TarInfo("link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    return {
        ("c.png", 0): None,
        ("../../evil.png", 1): None,
        ("link.png", 2): "link or special file",
    }


# -- stub models ------------------------------------------------------------------------
class StubDetector(Detector):
    """Scores from simple image statistics, so tests know every probability in advance.

    ``rule="brightness"``: logit = 20 * (mean pixel in [0, 1] - 0.5);
    ``rule="width"``: logit = width - 40 (a 0.75x resize of a 48-px-wide image flips it).
    No resizing or cropping, pixels / 255. ``crash_width`` / ``hang_width``: the transform
    kills its process / sleeps for a minute on images of that width (worker isolation tests).
    """

    def __init__(
        self, rule: str = "brightness", crash_width: int = -1, hang_width: int = -1
    ) -> None:
        super().__init__(
            preprocessing={
                "size": 8,
                "resize": "none",
                "crop": "none",
                "mean": [0, 0, 0],
                "std": [1, 1, 1],
            }
        )
        self.rule = rule
        self.crash_width = crash_width
        self.hang_width = hang_width
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        width = sample["image"].width
        if width == self.crash_width:
            os._exit(3)
        if width == self.hang_width:
            import time

            time.sleep(60)
        return super().transform(sample, train)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if self.rule == "width":
            logits = torch.full((x.shape[0],), float(x.shape[-1] - 40))
        else:
            logits = 20.0 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return {"logits": logits + self.anchor}


def stub_probability(image: Image.Image, rule: str = "brightness") -> float:
    if rule == "width":
        return float(torch.sigmoid(torch.tensor(float(image.width - 40))))
    mean = np.asarray(image.convert("RGB"), dtype=np.float32).mean() / 255.0
    return float(torch.sigmoid(torch.tensor(20.0 * (mean - 0.5))))


def stub_ensemble(*rules: str, faces: tuple[bool, ...] = (), **kwargs: Any) -> Ensemble:
    members = []
    for i, rule in enumerate(rules or ("brightness",)):
        face = faces[i] if i < len(faces) else False
        members.append(
            Member(f"stub_{rule}", StubDetector(rule, **kwargs), face, {"detector": f"stub_{rule}"})
        )
    return Ensemble(members)


class BoxFaces:
    """A stub face detector: faces are given per image width, largest first."""

    def __init__(self, boxes_by_width: dict[int, list[tuple[int, int, int, int]]]) -> None:
        self.boxes = boxes_by_width

    def detect(self, image: np.ndarray) -> list[dict[str, Any]]:
        boxes = self.boxes.get(image.shape[1], [])
        faces = [{"box": box, "score": 0.99, "landmarks": None} for box in boxes]
        return sorted(
            faces, key=lambda f: -(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])
        )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]

"""Celeb-DF (v1 and v2) as face-crop caches.

Li, Yang, Sun, Qi and Lyu, "Celeb-DF: A Large-scale Challenging Dataset for DeepFake
Forensics", CVPR 2020. Access on request at https://github.com/yuezunli/celeb-deepfakeforensics
(v1: 408 Celeb-real, 300 YouTube-real, 795 Celeb-synthesis videos; v2: 590, 300 and
5639). Layout under ``root`` (the same for both versions)::

    Celeb-real/id0_0000.mp4 ...           celebrity interviews (reals)
    YouTube-real/00000.mp4 ...            other YouTube videos (reals)
    Celeb-synthesis/id0_id16_0000.mp4 ... fakes: the face of id16 swapped into id0_0000
    List_of_testing_videos.txt            "<label> <folder>/<file>.mp4", label 1 = REAL, 0 = fake

``test`` is exactly the videos of ``List_of_testing_videos.txt`` with its labels;
``train`` is every other video of the three folders. Celeb-DF has no validation
split: ``val`` is carved out of that remainder by **identity**: a video goes to
``val`` when the identity of the real footage it comes from (``id<k>`` for
``Celeb-real/id<k>_*`` and ``Celeb-synthesis/id<k>_id*_*``; the video itself for
YouTube-real) falls in a fixed crc32 bucket of size ``val_fraction`` (0 disables
``val``). So a real video and every fake made on it land on the same side; the
swapped-in faces can still appear on both sides, as they do between Celeb-DF's own
train and test lists.
"""

from __future__ import annotations

import re
from pathlib import Path

from datasets.crop_cache import VideoCropSource, VideoItem
from datasets.splits import bucket, format_bad_lines
from deepsift.core.errors import UserError
from deepsift.core.records import FAKE, REAL

FOLDERS = ("Celeb-real", "YouTube-real", "Celeb-synthesis")
CELEB_REAL = re.compile(r"^id(\d+)_(\d+)$")
CELEB_FAKE = re.compile(r"^id(\d+)_id(\d+)_(\d+)$")
URL = "https://github.com/yuezunli/celeb-deepfakeforensics"


class CelebDF(VideoCropSource):
    """Celeb-DF v1 / v2 videos per ``List_of_testing_videos.txt``, read as face crops.

    Config (``configs/data/celebdf_v1.yaml``, ``celebdf_v2.yaml``): ``root``,
    ``crops_root``, ``version`` (1 or 2, informational), ``test_list`` (default
    ``<root>/List_of_testing_videos.txt``), ``val_fraction`` (default 0.1),
    ``max_frames``. ``Record.generator`` is ``Celeb-synthesis`` for fakes;
    ``Record.extra["folder"]`` names the video's folder.
    """

    name = "celebdf_v2"
    layout_hint = "Celeb-real/, YouTube-real/, Celeb-synthesis/ and List_of_testing_videos.txt"

    def __init__(
        self,
        root: str | None,
        crops_root: str | None = None,
        version: int = 2,
        test_list: str | None = None,
        val_fraction: float = 0.1,
        max_frames: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, crops_root, max_frames, name or f"celebdf_v{int(version)}")
        self.version = int(version)
        self.test_list = (
            Path(test_list).expanduser()
            if test_list
            else (self.root / "List_of_testing_videos.txt" if self.root else None)
        )
        if not 0 <= float(val_fraction) < 1:
            raise UserError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        self.val_fraction = float(val_fraction)

    def read_test_list(self) -> dict[str, int]:
        """``{rel: label}`` of the official test list (its ``1`` means real: label 0 here)."""
        path = self.test_list
        if path is None or not path.is_file():
            raise UserError(
                f"Celeb-DF test list {path} not found; it ships with the dataset ({URL}) "
                "as List_of_testing_videos.txt, or set data.test_list"
            )
        out: dict[str, int] = {}
        bad: list[tuple[int, str]] = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[0] not in ("0", "1"):
                bad.append((n, f"{line.strip()!r} is not '<0|1> <folder>/<file>.mp4'"))
                continue
            rel = parts[1].replace("\\", "/").lstrip("./")
            folder = rel.split("/", 1)[0]
            label = REAL if parts[0] == "1" else FAKE
            if folder not in FOLDERS or "/" not in rel:
                bad.append((n, f"{rel!r} is not in {', '.join(FOLDERS)}"))
            elif (folder == "Celeb-synthesis") != (label == FAKE):
                bad.append((n, f"label {parts[0]} (1 = real) contradicts folder {folder}"))
            else:
                out.setdefault(rel, label)
        if bad:
            raise UserError(f"{path}: {len(bad)} bad lines ({format_bad_lines(bad)})")
        if not out:
            raise UserError(f"{path} lists no videos; re-download it from {URL}")
        return out

    def identity(self, rel: str) -> str:
        """The identity a video's real footage shows (the key of the val slice)."""
        folder, stem = rel.split("/", 1)[0], Path(rel).stem
        m = CELEB_FAKE.match(stem) or CELEB_REAL.match(stem)
        if folder != "YouTube-real" and m:
            return f"id{int(m.group(1))}"
        return f"{folder}/{stem}"

    def _video(self, rel: str, label: int) -> VideoItem:
        folder, stem = rel.split("/", 1)[0], Path(rel).stem
        source = None
        if label == FAKE:
            m = CELEB_FAKE.match(stem)
            source = f"Celeb-real/id{m.group(1)}_{m.group(3)}" if m else None
        return self._item(
            rel,
            label,
            "real" if label == REAL else "Celeb-synthesis",
            f"{folder}/{stem}",
            source,
            folder=folder,
        )

    def _list_videos(self, split: str) -> list[VideoItem]:
        tests = self.read_test_list()
        if split == "test":
            return [self._video(rel, label) for rel, label in sorted(tests.items())]
        items = []
        for folder in FOLDERS:
            label = FAKE if folder == "Celeb-synthesis" else REAL
            for rel in self._list_video_files(folder):
                if rel in tests:
                    continue
                in_val = self.val_fraction > 0 and bucket(self.identity(rel)) < self.val_fraction
                if in_val == (split == "val"):
                    items.append(self._video(rel, label))
        return items

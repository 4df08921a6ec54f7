"""The Deepfake Detection Challenge dataset (DFDC) and its preview (DFDC-P), as face-crop caches.

**DFDC** (``data=dfdc``): Dolhansky, Bitton, Pflaum, Lu, Howes, Wang and Canton Ferrer,
"The DeepFake Detection Challenge (DFDC) Dataset", arXiv:2006.07397, 2020. Download
from https://ai.meta.com/datasets/dfdc/ (the full training set, 50 parts, is also on
Kaggle: https://www.kaggle.com/c/deepfake-detection-challenge/data). Layout under
``root``::

    dfdc_train_part_<k>/metadata.json   {"<name>.mp4": {"label": "FAKE"|"REAL", "split": "train",
    dfdc_train_part_<k>/<name>.mp4       "original": "<real>.mp4" (fakes only)}}
    test/labels.csv                     the public test set's labels: filename,label (1 = fake)
    test/<filename>.mp4                 its 5000 videos

``train`` is every part not in ``val_parts`` (or exactly ``train_parts``); ``val`` is
``val_parts`` (default parts 45-49: DFDC has no official validation split and a
fake and its original always share a part, so a split by part keeps them together);
``test`` is the public test set read from ``test_labels`` (default
``<root>/test/labels.csv``) with videos in ``test_dir`` (default ``<root>/test``;
point it at ``test/videos`` if your copy nests them).

**DFDC preview** (``data=dfdc_preview``): Dolhansky, Howes, Pflaum, Baram and Canton
Ferrer, "The Deepfake Detection Challenge (DFDC) Preview Dataset", arXiv:1910.08854,
2019 (https://ai.meta.com/datasets/dfdc/). ``<root>/dataset.json`` maps each video path
(relative to ``root``, e.g. ``method_A/...``, ``original_videos/...``) to
``{"label": "fake"|"real", "set": "train"|"test", ...}``. ``train`` and ``test`` follow
``set``; ``val`` is a deterministic crc32 slice (``val_fraction``) of ``train`` by
identity (the entry's ``target_id`` when given, else the second folder of the path,
else the file name).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets.crop_cache import VideoCropSource, VideoItem
from datasets.splits import bucket, format_bad_lines
from deepsift.core.errors import UserError
from deepsift.core.records import FAKE, REAL

PART = re.compile(r"^dfdc_train_part_(\d+)$")
DFDC_URL = "https://ai.meta.com/datasets/dfdc/"


def parse_label(value: Any, fake_words: Sequence[str], real_words: Sequence[str]) -> int | None:
    text = str(value).strip().lower()
    if text in fake_words:
        return FAKE
    if text in real_words:
        return REAL
    return None


class DFDC(VideoCropSource):
    """DFDC training parts (train / val by part) and public test set, read as face crops.

    Config (``configs/data/dfdc.yaml``): ``root``, ``crops_root``, ``val_parts``
    (default 45-49), ``train_parts`` (``null``: every other part found), ``test_dir``,
    ``test_labels``, ``max_frames``. DFDC does not name its methods: fakes have
    ``generator="fake"``; ``Record.source`` is the original real video.
    """

    name = "dfdc"
    layout_hint = "dfdc_train_part_<k>/metadata.json and test/labels.csv"

    def __init__(
        self,
        root: str | None,
        crops_root: str | None = None,
        val_parts: Sequence[int] = (45, 46, 47, 48, 49),
        train_parts: Sequence[int] | None = None,
        test_dir: str | None = None,
        test_labels: str | None = None,
        max_frames: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, crops_root, max_frames, name)
        self.val_parts = {int(p) for p in val_parts}
        self.train_parts = None if train_parts is None else {int(p) for p in train_parts}
        if self.train_parts is not None and self.train_parts & self.val_parts:
            raise UserError(
                f"parts {sorted(self.train_parts & self.val_parts)} are in both data.train_parts and data.val_parts"
            )
        self.test_dir = (
            Path(test_dir).expanduser() if test_dir else (self.root / "test" if self.root else None)
        )
        self.test_labels = (
            Path(test_labels).expanduser()
            if test_labels
            else (self.test_dir / "labels.csv" if self.test_dir else None)
        )

    def parts(self) -> dict[int, Path]:
        """The training part folders under ``root``, by number."""
        root = self._require_root()
        found = {
            int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := PART.match(p.name))
        }
        if not found:
            raise UserError(
                f"no dfdc_train_part_<k>/ folders under {root}; pass data.root=<folder holding the extracted DFDC parts>"
            )
        return dict(sorted(found.items()))

    def _split_parts(self, split: str) -> list[Path]:
        parts = self.parts()
        if split == "val":
            wanted = self.val_parts
        else:
            wanted = (
                self.train_parts if self.train_parts is not None else set(parts) - self.val_parts
            )
        absent = sorted(wanted - set(parts))
        if absent:
            raise UserError(
                f"DFDC {split} wants {len(absent)} parts that {self.root} lacks "
                f"(dfdc_train_part_{absent[0]}, ...); download them or change data.{split}_parts"
            )
        return [parts[k] for k in sorted(wanted)]

    def _list_videos(self, split: str) -> list[VideoItem]:
        if split == "test":
            return self._test_videos()
        items = []
        for folder in self._split_parts(split):
            meta_path = folder / "metadata.json"
            if not meta_path.is_file():
                raise UserError(
                    f"{meta_path} not found; re-extract {folder.name} from the DFDC download"
                )
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{meta_path} is not valid JSON ({exc})") from None
            bad: list[tuple[int, str]] = []
            for n, (fname, entry) in enumerate(sorted(meta.items()), 1):
                label = parse_label(
                    (entry or {}).get("label") if isinstance(entry, dict) else None,
                    ("fake",),
                    ("real",),
                )
                if label is None:
                    bad.append((n, f"{fname}: label is not FAKE or REAL"))
                    continue
                stem = Path(fname).stem
                original = entry.get("original") if label == FAKE else None
                source = f"{folder.name}/{Path(original).stem}" if original else None
                items.append(
                    self._item(
                        f"{folder.name}/{fname}",
                        label,
                        "real" if label == REAL else "fake",
                        f"{folder.name}/{stem}",
                        source,
                        part=int(PART.match(folder.name).group(1)),  # type: ignore[union-attr]
                    )
                )
            if bad:
                raise UserError(f"{meta_path}: {len(bad)} bad entries ({format_bad_lines(bad)})")
        return items

    def _test_videos(self) -> list[VideoItem]:
        path = self.test_labels
        if path is None or not path.is_file():
            raise UserError(
                f"DFDC test labels {path} not found; extract the public test set ({DFDC_URL}) "
                "to <root>/test with its labels.csv, or set data.test_dir and data.test_labels"
            )
        assert self.test_dir is not None and self.root is not None
        try:
            prefix = self.test_dir.relative_to(self.root).as_posix()
        except ValueError:
            prefix = "test"
        items, bad = [], []
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
                raise UserError(
                    f"{path}: expected a header 'filename,label'; found {reader.fieldnames}"
                )
            for row in reader:
                fname = (row.get("filename") or "").strip()
                label = parse_label(row.get("label"), ("1", "fake"), ("0", "real"))
                if not fname or label is None:
                    bad.append((reader.line_num, f"{row} is not '<file>.mp4,<0|1>'"))
                    continue
                stem = Path(fname).stem
                items.append(
                    VideoItem(
                        str(self.test_dir / fname),
                        f"{prefix}/{fname}",
                        label,
                        "real" if label == REAL else "fake",
                        f"test/{stem}",
                        f"test/{stem}",
                        {},
                    )
                )
        if bad:
            raise UserError(f"{path}: {len(bad)} bad rows ({format_bad_lines(bad)})")
        return items


class DFDCPreview(VideoCropSource):
    """DFDC preview videos per ``dataset.json``, read as face crops (see the module doc).

    Config (``configs/data/dfdc_preview.yaml``): ``root``, ``crops_root``, ``index``
    (default ``<root>/dataset.json``), ``val_fraction`` (default 0.1), ``max_frames``.
    ``Record.generator`` is the fake's top folder (``method_A``, ``method_B``).
    """

    name = "dfdc_preview"
    layout_hint = "dataset.json, method_A/, method_B/ and original_videos/"

    def __init__(
        self,
        root: str | None,
        crops_root: str | None = None,
        index: str | None = None,
        val_fraction: float = 0.1,
        max_frames: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, crops_root, max_frames, name)
        self.index = (
            Path(index).expanduser()
            if index
            else (self.root / "dataset.json" if self.root else None)
        )
        if not 0 <= float(val_fraction) < 1:
            raise UserError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        self.val_fraction = float(val_fraction)

    def _entries(self) -> list[tuple[str, int, str, str]]:
        """``(rel, label, set, identity)`` for every entry of ``dataset.json``."""
        path = self.index
        if path is None or not path.is_file():
            raise UserError(
                f"DFDC preview index {path} not found; it ships with the preview ({DFDC_URL}), or set data.index"
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected an object mapping video paths to entries")
        out, bad = [], []
        for n, (rel, entry) in enumerate(sorted(raw.items()), 1):
            entry = entry if isinstance(entry, dict) else {}
            label = parse_label(entry.get("label"), ("fake",), ("real",))
            which = str(entry.get("set", "")).strip().lower()
            if label is None or which not in ("train", "test"):
                bad.append((n, f"{rel}: needs label fake|real and set train|test"))
                continue
            parts = rel.replace("\\", "/").split("/")
            identity = str(
                entry.get("target_id") or (parts[1] if len(parts) >= 3 else Path(rel).stem)
            )
            out.append((rel.replace("\\", "/"), label, which, identity))
        if bad:
            raise UserError(f"{path}: {len(bad)} bad entries ({format_bad_lines(bad)})")
        return out

    def _list_videos(self, split: str) -> list[VideoItem]:
        items = []
        for rel, label, which, identity in self._entries():
            if split == "test":
                if which != "test":
                    continue
            else:
                if which != "train":
                    continue
                in_val = self.val_fraction > 0 and bucket(identity) < self.val_fraction
                if in_val != (split == "val"):
                    continue
            method = "real" if label == REAL else (rel.split("/")[0] if "/" in rel else "fake")
            video_id = rel.rsplit(".", 1)[0]
            items.append(self._item(rel, label, method, video_id, identity=identity))
        return items

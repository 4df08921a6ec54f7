"""The face-crop cache of ``datasets.preprocess``, read as records: the base of every video benchmark.

:class:`VideoCropSource` lists a benchmark's videos (each subclass knows its official
layout), finds their crops under ``crops_root`` (``<rel video path without suffix>/<frame>[_<face>].png``,
indexed by ``index.jsonl``) and turns them into :class:`~deepsift.core.records.Record` s, frames
spread evenly over each video. FaceForensics++, DFD, Celeb-DF and DFDC build on it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets.folder import IMAGE_SUFFIXES
from datasets.splits import SPLITS, check_split
from deepsift.core.errors import UserError
from deepsift.core.records import Record

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})


@dataclass(frozen=True)
class VideoItem:
    """One video of a benchmark split, before any frame is read.

    ``path`` is the video file (it may be absent once the crop cache is built);
    ``rel`` is its path relative to ``data.root``, which also names its crop folder
    (``<crops_root>/<rel without suffix>/``). ``method`` is the manipulation method of
    a fake or ``"real"``; ``video_id`` is unique within the benchmark; ``source_id``
    is the ``video_id`` of the real video this one was made from (itself for reals),
    so a real and its fakes share a ``source_id``. ``extra`` holds small per-video
    values copied into every frame's ``Record.extra`` (``mask_rel``, a mask video's
    ``rel``, becomes a per-frame ``mask`` path instead).
    """

    path: str
    rel: str
    label: int
    method: str
    video_id: str
    source_id: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


CROP_INDEX = "index.jsonl"


_FRAME_STEM = re.compile(r"^(\d+)(?:_(\d+))?$")


def parse_frame_stem(stem: str) -> tuple[int, int] | None:
    """``"000012"`` -> ``(12, 0)``, ``"000012_2"`` -> ``(12, 2)`` (frame, face); else ``None``."""
    m = _FRAME_STEM.match(stem)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def _frame_key(path: Path) -> tuple[int, int, str]:
    parsed = parse_frame_stem(path.stem)
    return (*parsed, path.stem) if parsed else (1 << 62, 0, path.stem)


def read_crop_index(crops_root: Path) -> dict[str, list[dict[str, Any]]] | None:
    """``{video rel: its index lines}`` from ``<crops_root>/index.jsonl``; ``None`` without one.

    A video processed twice keeps its last block of lines (lines of one block share
    ``run``); unreadable lines (a run killed mid-write) are skipped.
    """
    path = Path(crops_root) / CROP_INDEX
    if not path.is_file():
        return None
    blocks: dict[str, list[dict[str, Any]]] = {}
    runs: dict[str, Any] = {}
    bad = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("video"), str):
                bad += 1
                continue
            rel = entry["video"]
            if rel not in runs or runs[rel] != entry.get("run"):
                runs[rel] = entry.get("run")
                blocks[rel] = []
            blocks[rel].append(entry)
    if bad:
        log.debug("%s: %d unreadable lines skipped", path, bad)
    return blocks


@dataclass(frozen=True)
class CachedCrop:
    """One face crop of the cache: its image, frame number, face number and side files."""

    path: Path
    frame: int
    face: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


#: the sub-folder of a video's crop folder that holds its mouth crops (``datasets.preprocess``
#: with ``mouths=true``), named like the face crops
MOUTH_DIR = "_mouth"


def list_frames(folder: Path) -> list[Path]:
    """Crop images in ``folder`` (not recursive), in frame order; ``[]`` if it does not exist."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    frames = [
        Path(e.path)
        for e in entries
        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
    ]
    return sorted(frames, key=_frame_key)


def spread_frames(crops: Sequence[CachedCrop], k: int | None) -> list[CachedCrop]:
    """The crops of at most ``k`` evenly spaced frames (every face of a chosen frame)."""
    frames = sorted({c.frame for c in crops})
    chosen = set(spread(frames, k))
    return [c for c in crops if c.frame in chosen]


def spread(items: Sequence[Any], k: int | None) -> list[Any]:
    """At most ``k`` items, evenly spaced over ``items`` (all of them when ``k`` is falsy)."""
    n = len(items)
    if not k or n <= k:
        return list(items)
    if k == 1:
        return [items[n // 2]]
    return [items[round(i * (n - 1) / (k - 1))] for i in range(k)]


class VideoCropSource:
    """Base of the video benchmarks: videos per split, frames read from a face-crop cache.

    Subclasses implement :meth:`_list_videos` (the videos a split holds, with labels,
    exactly per the benchmark's official split or label files) and set
    ``layout_hint``. ``crops_root`` defaults to ``<root>/deepsift_crops``;
    ``max_frames`` keeps at most that many evenly spaced frames per video.
    """

    name = "video"
    layout_hint = "the benchmark's folders"
    splits: tuple[str, ...] = SPLITS
    split_note = ""

    def __init__(
        self,
        root: str | None,
        crops_root: str | None = None,
        max_frames: int | None = None,
        name: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser() if root else None
        if crops_root:
            self.crops_root: Path | None = Path(crops_root).expanduser()
        else:
            self.crops_root = self.root / "deepsift_crops" if self.root else None
        self.max_frames = int(max_frames) if max_frames else None
        if name:
            self.name = name
        self._videos: dict[str, list[VideoItem]] = {}
        self._missing: dict[str, list[str]] = {}
        self._warned: set[str] = set()
        self._index: dict[str, list[dict[str, Any]]] | None = None
        self._index_read = False

    # -- what subclasses provide ------------------------------------------------
    def _list_videos(self, split: str) -> list[VideoItem]:
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------
    def videos(self, split: str) -> list[VideoItem]:
        """The videos of ``split`` per the official layout (whether or not the files are here)."""
        check_split(split, self.splits, self.name, self.split_note)
        if split not in self._videos:
            self._require_root()
            self._videos[split] = self._list_videos(split)
        return list(self._videos[split])

    def missing_videos(self, split: str) -> list[str]:
        """``rel`` paths of the videos that ``split`` names but ``root`` lacks."""
        return [v.rel for v in self.videos(split) if not Path(v.path).is_file()]

    def crop_dir(self, item: VideoItem) -> Path:
        assert self.crops_root is not None
        return self.crops_root / strip_suffix(item.rel)

    def missing(self, split: str) -> list[str]:
        """``rel`` paths of the videos of ``split`` that have no crops in the cache."""
        if split not in self._missing:
            self.records(split)
        return list(self._missing[split])

    def uncached(self, split: str) -> list[tuple[str, str]]:
        """``(video, reason)`` for each video of ``split`` without crops (:meth:`missing`),
        ``video`` without its suffix (as a clip's ``Record.video``), the reason from its
        index lines (shorter than one preprocessing window, no face, failed) with the fix."""
        index = self.crop_index() or {}
        out = []
        for rel in self.missing(split):
            statuses = sorted({str(line.get("status")) for line in index.get(rel, [])})
            if "too_short" in statuses:
                reason = (
                    "shorter than one preprocessing window, no crops cached (index status "
                    f"too_short); re-run {self.preprocess_command()} with shorter windows "
                    "(lower clip_len or stride)"
                )
            elif statuses:
                reason = (
                    f"no face crop in the cache (index status {', '.join(statuses)}); "
                    f"python -m datasets.summary data={self.name} lists why"
                )
            else:
                reason = f"not in the face-crop cache; run {self.preprocess_command()}"
            out.append((strip_suffix(rel), reason))
        return out

    def records(self, split: str) -> list[Record]:
        """One record per cached face crop of every video of ``split``.

        A video without crops is skipped, counted, logged once and listed by
        :meth:`missing`; a split none of whose videos has crops is an error.
        """
        items = self.videos(split)
        self._require_crops()
        records: list[Record] = []
        missing: list[str] = []
        for item in items:
            crops = spread_frames(self.cached_crops(item), self.max_frames)
            if not crops:
                missing.append(item.rel)
                continue
            records.extend(self._frame_records(item, crops))
        self._missing[split] = missing
        if items and len(missing) == len(items):
            raise UserError(
                f"none of the {len(items)} videos of {self.name}/{split} has crops under {self.crops_root} "
                f"(first: {self.crop_dir(items[0])}); run {self.preprocess_command()} first"
            )
        if missing and split not in self._warned:
            self._warned.add(split)
            log.warning(
                "%s/%s: %d of %d videos have no crops under %s and are skipped (first: %s); "
                "run %s, or list them with python -m datasets.summary data=%s",
                self.name,
                split,
                len(missing),
                len(items),
                self.crops_root,
                missing[0],
                self.preprocess_command(),
                self.name,
            )
        return records

    def preprocess_command(self) -> str:
        return f"python -m datasets.preprocess data={self.name} data.root={self.root}"

    def face_crop(self, split: str = "train") -> dict[str, Any] | None:
        """How the cached crops of ``split`` were cut: the ``face_crop`` of the index.

        Plain data (``align``, ``margin``, ``size``, ``detector``; see
        :class:`datasets.faces.CropSettings`) that training writes into the checkpoint so
        that ``score.py`` cuts faces the same way. ``None`` when the cache has no index or
        an index written before crop settings were recorded. When the videos of the split
        were cut with different settings (preprocessing re-run with other options on part
        of the benchmark), the most common ones are returned, with a warning.
        """
        index = self.crop_index()
        if not index:
            return None
        counts: dict[str, int] = {}
        found: dict[str, dict[str, Any]] = {}
        for item in self.videos(split):
            lines = index.get(item.rel) or ()
            settings = next((ln["face_crop"] for ln in lines if ln.get("face_crop")), None)
            if not isinstance(settings, dict):
                continue
            key = json.dumps(settings, sort_keys=True)
            counts[key] = counts.get(key, 0) + 1
            found[key] = settings
        if not counts:
            log.warning(
                "%s/%s: the crop index under %s does not record how the crops were cut "
                "(made before face_crop was recorded); score.py falls back to the detector "
                "config's face_crop (rebuild with overwrite=true to record it)",
                self.name, split, self.crops_root,
            )  # fmt: skip
            return None
        ranked = sorted(counts, key=lambda k: -counts[k])
        if len(ranked) > 1:
            log.warning(
                "%s/%s: videos were cropped with %d different settings (%s); the checkpoint "
                "records the most common one",
                self.name, split, len(ranked),
                "; ".join(f"{counts[k]} videos: {k}" for k in ranked),
            )  # fmt: skip
        return dict(found[ranked[0]])

    # -- helpers --------------------------------------------------------------------
    def crop_index(self) -> dict[str, list[dict[str, Any]]] | None:
        """The cache's ``index.jsonl`` by video (read once), or ``None`` when there is none."""
        if not self._index_read and self.crops_root is not None:
            self._index = read_crop_index(self.crops_root)
            self._index_read = True
        return self._index

    def cached_crops(self, item: VideoItem) -> list[CachedCrop]:
        """The face crops of ``item`` in frame order: from the index, else from its folder."""
        index = self.crop_index()
        if index is not None and item.rel in index:
            return self._indexed_crops(index[item.rel])
        return self._scanned_crops(item)

    def _indexed_crops(self, lines: Sequence[dict[str, Any]]) -> list[CachedCrop]:
        assert self.crops_root is not None
        root = self.crops_root
        crops = []
        for line in lines:
            if line.get("status") != "ok" or not line.get("crop"):
                continue
            extra: dict[str, Any] = {}
            for key in ("landmarks", "mask", "mouth"):
                if line.get(key):
                    extra[key] = str(root / line[key])
            for key in ("box", "score", "window", "window_stride"):
                if line.get(key) is not None:
                    extra[key] = line[key]
            crops.append(
                CachedCrop(
                    root / line["crop"], int(line["frame"]), int(line.get("face") or 0), extra
                )
            )
        return sorted(crops, key=lambda c: (c.frame, c.face))

    def _scanned_crops(self, item: VideoItem) -> list[CachedCrop]:
        folder = self.crop_dir(item)
        frames = list_frames(folder)
        if not frames:
            return []
        npys = {p.stem for p in folder.glob("*.npy")}
        mouth_names = {p.name for p in list_frames(folder / MOUTH_DIR)}
        mask_names: set[str] = set()
        mask_dir: Path | None = None
        if "mask_rel" in item.extra and self.crops_root is not None:
            mask_dir = self.crops_root / strip_suffix(item.extra["mask_rel"])
            mask_names = {p.name for p in list_frames(mask_dir)}
        crops = []
        for position, path in enumerate(frames):
            frame, face = parse_frame_stem(path.stem) or ((1 << 62) + position, 0)
            extra: dict[str, Any] = {}
            if path.stem in npys:
                extra["landmarks"] = str(folder / f"{path.stem}.npy")
            if mask_dir is not None and path.name in mask_names:
                extra["mask"] = str(mask_dir / path.name)
            if path.name in mouth_names:
                extra["mouth"] = str(folder / MOUTH_DIR / path.name)
            crops.append(CachedCrop(path, frame, face, extra))
        return crops

    def _frame_records(self, item: VideoItem, crops: Sequence[CachedCrop]) -> list[Record]:
        extra = {k: v for k, v in item.extra.items() if k != "mask_rel"}
        return [
            Record(
                str(crop.path),
                item.label,
                video=item.video_id,
                generator=item.method,
                source=item.source_id,
                extra={**extra, "frame": crop.path.stem, "face": crop.face, **crop.extra},
            )
            for crop in crops
        ]

    def _require_root(self) -> Path:
        if self.root is None or not self.root.is_dir():
            raise UserError(
                f"data.root={self.root} is not a folder; pass data.root=<folder holding {self.layout_hint}>"
            )
        return self.root

    def _require_crops(self) -> Path:
        if self.crops_root is None or not self.crops_root.is_dir():
            raise UserError(
                f"face-crop cache {self.crops_root} does not exist: run {self.preprocess_command()} "
                "first (or point data.crops_root at an existing cache)"
            )
        return self.crops_root

    def _item(
        self,
        rel: str,
        label: int,
        method: str,
        video_id: str,
        source_id: str | None = None,
        base: Path | None = None,
        **extra: Any,
    ) -> VideoItem:
        base = base if base is not None else self.root
        assert base is not None
        return VideoItem(
            str(base / rel), rel, label, method, video_id, source_id or video_id, extra
        )

    def _list_video_files(self, rel_folder: str) -> list[str]:
        """``rel`` paths of the videos in ``<root>/<rel_folder>``, sorted.

        When the video folder is gone but the crop cache has it (videos deleted after
        preprocessing), the cached folders stand for the videos (as ``<name>.mp4``).
        """
        assert self.root is not None
        folder = self.root / rel_folder
        if folder.is_dir():
            return sorted(
                f"{rel_folder}/{e.name}"
                for e in os.scandir(folder)
                if e.is_file() and os.path.splitext(e.name)[1].lower() in VIDEO_SUFFIXES
            )
        cached = self.crops_root / rel_folder if self.crops_root else None
        if cached is not None and cached.is_dir():
            return sorted(f"{rel_folder}/{e.name}.mp4" for e in os.scandir(cached) if e.is_dir())
        raise UserError(
            f"video folder {folder} does not exist (nor its crops under {cached}); "
            f"check data.root, the compression level, and that the download is complete"
        )


def strip_suffix(rel: str) -> str:
    """``a/b/c.mp4`` -> ``a/b/c``."""
    head, tail = os.path.split(rel)
    stem = os.path.splitext(tail)[0]
    return f"{head}/{stem}" if head else stem

"""Build the face-crop cache of a video benchmark, so that training never decodes video.

    python -m datasets.preprocess data=<name> data.root=<path> [overrides]
    python -m datasets.preprocess data=ffpp data.root=/data/FaceForensics++ frames=32 num_workers=8

The ``data`` config is the one ``train.py`` would use; the other options are the keys
of ``configs/preprocess.yaml`` (``frames``, ``margin``, ``align``, ``size``, ``faces``,
``face_detector.*``, ``num_workers``, ``splits``, ``overwrite``).
Every video of every split (``splits``) is processed once, in parallel
(``num_workers`` processes, one video each at a time):

1. ``frames`` frames evenly spaced over the whole video are decoded
   (:func:`datasets.video.sample_frames`: the centres of ``frames`` equal segments);
   or, for clip detectors, with ``clip_len`` set: ``clips_per_video`` windows of
   ``clip_len`` frames ``stride`` apart, evenly spaced over the video
   (:func:`datasets.video.window_indices`; ``frames`` is then unused). Each frame's index
   line gets its ``window`` number and ``window_stride``, and the video's lines the
   ``clip`` options; :func:`datasets.clips.clip_records` cuts clips inside one window. A
   video shorter than one window (``(clip_len - 1) * stride + 1`` frames) gets one
   ``status: too_short`` line (so a re-run skips it), one warning line, and is counted
   in the summary's ``too_short`` (listed in ``short``); the run goes on;
2. faces are detected with 68 landmarks (:mod:`datasets.faces`, dlib HOG by default);
   the largest face is kept, or every face with ``faces=all``;
3. each face is cropped (aligned on five landmarks with ``align=true``, else the box's
   square), with the side ``margin`` times the face, resized to ``size`` (``null``:
   about the frame's resolution), and written as PNG to
   ``<crops_root>/<video rel without suffix>/<frame:06d>.png`` (``<frame>_<k>.png`` for
   the ``k``-th further face), with its landmarks in crop pixels in ``<frame>.npy``
   (float32, 68 x 2: the full-frame landmarks mapped by the crop's transform, where
   DeepfakeBench detects them again on the crop). With ``mouths=true`` (lip-motion
   detectors: LipForensics; needs windows), each face also gets a 96 x 96 grayscale mouth
   crop, ``<crop folder>/_mouth/<frame>.png`` (index field ``mouth``), cut as the
   LipForensics authors cut theirs (:mod:`datasets.mouths`: landmarks smoothed over 12
   frames of the face's track in its window, aligned to LRW's mean face). FF++ and DFD fakes also get their
   mask crop, cut with the same transform from the same frame of the mask video, under
   the mask video's own folder with the same name (single-channel PNG, values as
   decoded; DeepfakeBench binarises at 1, which a detector can do on reading);
4. one JSON line per frame goes to ``<crops_root>/index.jsonl``: the video ``rel``, the
   ``frame`` index, ``status`` (``ok``, ``no_face`` or ``error``), the ``face`` number,
   ``crop`` / ``landmarks`` / ``mask`` paths relative to ``crops_root``, the face
   ``box`` in frame pixels and the detector's ``score``, the frame-to-crop ``transform``
   (2 x 3, row-major), ``detector`` and ``margin``, and per video ``frames`` (sampled),
   ``total`` (decoded), ``announced`` (container count), ``settings`` (a hash of the
   options), ``face_crop`` (the options themselves that decide the crop pixels, as
   plain data: ``align``, ``margin``, ``size`` and the face ``detector``'s options, see
   :class:`datasets.faces.CropSettings`; training copies them into the checkpoint and
   ``score.py`` crops with them) and ``video_size`` (bytes). A video that cannot be
   read gets one line with ``frame: null`` and ``status: error``.

The index is appended one video at a time, so a killed run loses at most the videos in
flight. A second run does only what is missing: a video whose last block of lines is
complete, was made with the same settings and whose file has the same size is skipped;
others are redone (their old crops removed first). ``overwrite=true`` redoes
everything. An unreadable video, or one that decodes fewer frames than its container
announces (truncated), is logged as an error with its path and the run goes on; the
summary at the end counts videos done / skipped / failed / missing and frames with
and without a face.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.crop_cache import MOUTH_DIR, read_crop_index, strip_suffix
from datasets.faces import (
    DEFAULT_DETECTOR,
    CropSettings,
    FaceDetector,
    apply_crop,
    crop_transform,
    face_detector,
    transform_points,
)
from datasets.mouths import mouth_crops
from datasets.tracks import link_tracks
from datasets.video import VideoError, read_frames, sample_frames, window_indices
from deepsift.core.configs import CONFIG_DIR, config_names
from deepsift.core.errors import UserError, user_errors
from deepsift.core.runtime import fork_safe_opencv

log = logging.getLogger(__name__)

INDEX_NAME = "index.jsonl"
PNG_COMPRESSION = 3
FACES = ("largest", "all")
# bulk video preprocessing: no up-sampling, frames shrunk to 960 px for detection
# (boxes down to ~40 px at that scale); 3.5x faster than the single-image default
# (one up-sampling at 640 px) with the same hits on the FF++ examples
# (benchmarks/preprocess_throughput.py --compare)
VIDEO_FACE_DETECTOR: dict[str, Any] = {"name": "dlib_hog", "upsample": 0, "max_side": 960}


@dataclass(frozen=True)
class Job:
    """One video to process: its ``rel`` (names its crop folder) and file, and its mask video."""

    rel: str
    path: str
    mask_rel: str | None = None
    mask_path: str | None = None


@dataclass(frozen=True)
class Options:
    """What decides the crops (hashed into ``settings`` so a change redoes the videos)."""

    frames: int | None = 32
    margin: float = 1.3
    align: bool = True
    size: int | None = 256
    faces: str = "largest"
    detector: dict[str, Any] = field(default_factory=lambda: dict(VIDEO_FACE_DETECTOR))
    # windows of consecutive frames for clip detectors (None: ``frames`` single frames)
    clip_len: int | None = None
    clips_per_video: int = 4
    stride: int = 1
    # grayscale mouth crops beside the face crops (lip-motion detectors: LipForensics)
    mouths: bool = False

    def __post_init__(self) -> None:
        if self.mouths and not self.clip_len:
            raise UserError(
                "mouths=true smooths landmarks over consecutive frames: pass windows too "
                "(clip_len=<frames per window>, e.g. clip_len=25 stride=1 for LipForensics)"
            )
        if self.clip_len is not None and int(self.clip_len) < 1:
            raise UserError(f"clip_len={self.clip_len}: pass frames per window (or null)")
        if int(self.clips_per_video) < 1:
            raise UserError(f"clips_per_video={self.clips_per_video}: pass a positive number")
        if int(self.stride) < 1:
            raise UserError(f"stride={self.stride}: pass a positive frame step (1: consecutive)")
        if self.frames is not None and int(self.frames) < 1:
            raise UserError(f"frames={self.frames}: pass a positive number (or null for all)")
        if float(self.margin) < 1:
            raise UserError(f"margin={self.margin}: the crop must hold the face (1.3 is usual)")
        if self.size is not None and int(self.size) < 8:
            raise UserError(f"size={self.size}: pass a crop side in pixels, or null")
        if self.faces not in FACES:
            raise UserError(f"faces={self.faces!r}: use largest or all")

    def fingerprint(self) -> str:
        fields = asdict(self)
        if self.clip_len is None:  # caches made before windows existed keep their hash
            for key in ("clip_len", "clips_per_video", "stride"):
                fields.pop(key)
        if not self.mouths:  # nor those made before mouth crops existed
            fields.pop("mouths")
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def face_crop(self) -> dict[str, Any]:
        """The crop settings as plain data (``face_crop`` of the index and of checkpoints)."""
        detector = dict(self.detector)
        if detector.get("name") in (None, "", "default"):
            detector["name"] = DEFAULT_DETECTOR
        return CropSettings(self.align, self.margin, self.size, detector).to_dict()

    def span(self) -> int:
        """Video frames one window covers (0 without windows)."""
        return (int(self.clip_len) - 1) * int(self.stride) + 1 if self.clip_len else 0

    def windows(self, total: int) -> list[list[int]]:
        """The frame windows of a video of ``total`` frames (empty without windows)."""
        if not self.clip_len:
            return []
        return window_indices(total, int(self.clip_len), int(self.clips_per_video), self.stride)

    def wanted(self, total: int) -> list[int]:
        """The frames to decode of a video of ``total`` frames, sorted."""
        return sorted({i for window in self.windows(total) for i in window})


@dataclass
class VideoResult:
    rel: str
    path: str
    lines: list[dict[str, Any]]
    error: str | None = None
    truncated: str | None = None
    short: str | None = None


# ---------------------------------------------------------------------------------------
# one video
# ---------------------------------------------------------------------------------------


def _clear(folder: Path) -> None:
    """Remove the crops, landmarks, masks and mouth crops an earlier run left in ``folder``."""
    if not folder.is_dir():
        return
    if (folder / MOUTH_DIR).is_dir():
        _clear(folder / MOUTH_DIR)
    for entry in os.scandir(folder):
        name, suffix = os.path.splitext(entry.name)
        if entry.is_file() and suffix in (".png", ".npy") and name.split("_")[0].isdigit():
            os.unlink(entry.path)


def _rounded(values: Any, digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in np.ravel(values)]


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    array = image[..., ::-1] if image.ndim == 3 else image  # RGB -> BGR
    if not cv2.imwrite(
        str(path), np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
    ):
        raise OSError(f"cannot write {path}")


class CropWriter:
    """Writes one video's crops, landmarks and mask crops; gives their index fields."""

    def __init__(self, crops_root: Path, job: Job) -> None:
        self.root = crops_root
        self.rel = strip_suffix(job.rel)
        self.mask_rel = strip_suffix(job.mask_rel) if job.mask_rel else None
        for rel in (self.rel, self.mask_rel):  # what an earlier run left
            if rel is not None:
                _clear(crops_root / rel)
        (crops_root / self.rel).mkdir(parents=True, exist_ok=True)

    def write(
        self, name: str, crop: np.ndarray, landmarks: np.ndarray | None, mask: np.ndarray | None
    ) -> dict[str, Any]:
        _write_png(self.root / self.rel / f"{name}.png", crop)
        out: dict[str, Any] = {"crop": f"{self.rel}/{name}.png", "landmarks": None}
        if landmarks is not None:
            np.save(self.root / self.rel / f"{name}.npy", landmarks.astype(np.float32))
            out["landmarks"] = f"{self.rel}/{name}.npy"
        if mask is not None and self.mask_rel is not None:
            (self.root / self.mask_rel).mkdir(parents=True, exist_ok=True)
            _write_png(self.root / self.mask_rel / f"{name}.png", mask)
            out["mask"] = f"{self.mask_rel}/{name}.png"
        return out

    def write_mouth(self, name: str, mouth: np.ndarray) -> str:
        """Write one mouth crop (grayscale); its path relative to the cache root."""
        folder = self.root / self.rel / MOUTH_DIR
        folder.mkdir(exist_ok=True)
        _write_png(folder / f"{name}.png", mouth)
        return f"{self.rel}/{MOUTH_DIR}/{name}.png"


def frame_lines(
    index: int,
    frame: np.ndarray,
    mask: np.ndarray | None,
    detector: FaceDetector,
    options: Options,
    writer: CropWriter,
    points: dict[tuple[int, int], np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Detect, crop and write the faces of one frame; its index lines (without video fields).
    ``points`` (when given) gets each face's 68 landmarks in frame pixels, by (frame, face)."""
    faces = detector.detect(frame)
    if not faces:
        return [{"frame": index, "face": None, "status": "no_face"}]
    lines = []
    for k, face in enumerate(faces if options.faces == "all" else faces[:1]):
        matrix, side = crop_transform(face, options.margin, options.size, options.align)
        landmarks = transform_points(face.landmarks, matrix) if face.landmarks is not None else None
        if points is not None and face.landmarks is not None and len(face.landmarks) == 68:
            points[(index, k)] = np.asarray(face.landmarks, np.float32)  # as the .npy holds them
        files = writer.write(
            f"{index:06d}" if k == 0 else f"{index:06d}_{k}",
            apply_crop(frame, matrix, side),
            landmarks,
            apply_crop(mask, matrix, side) if mask is not None else None,
        )
        lines.append(
            {
                "frame": index,
                "face": k,
                "status": "ok",
                **files,
                "box": _rounded(face.box, 2),
                "score": round(face.score, 4),
                "transform": _rounded(matrix, 6),
                "detector": detector.name,
                "margin": options.margin,
            }
        )
    return lines


def _read_masks(job: Job, indices: Sequence[int]) -> dict[int, np.ndarray]:
    if not job.mask_path or not Path(job.mask_path).is_file():
        return {}
    try:
        return read_frames(job.mask_path, indices, gray=True)
    except VideoError as exc:
        log.warning("%s: mask video unreadable (%s); no mask crops", job.mask_path, exc)
        return {}


def process_video(
    job: Job, options: Options, crops_root: Path, detector: FaceDetector
) -> VideoResult:
    """Decode, detect, crop and write one video; its index lines come back, nothing is raised
    for an unreadable video (an ``error`` line instead)."""
    try:
        size_bytes: int | None = os.path.getsize(job.path)
    except OSError:
        size_bytes = None
    video = {
        "video": job.rel,
        "run": uuid.uuid4().hex[:12],
        "settings": options.fingerprint(),
        "video_size": size_bytes,
        "face_crop": options.face_crop(),
    }
    pick = options.wanted if options.clip_len else None
    try:
        sampled = sample_frames(job.path, options.frames, pick)
    except (VideoError, OSError) as exc:
        line = {**video, "frame": None, "status": "error", "error": str(exc)}
        return VideoResult(job.rel, job.path, [line], error=str(exc))
    video.update(frames=len(sampled.wanted), total=sampled.total, announced=sampled.announced)
    window_of: dict[int, int] = {}
    if options.clip_len:
        video["clip"] = {
            "clip_len": int(options.clip_len),
            "clips_per_video": int(options.clips_per_video),
            "stride": int(options.stride),
        }
        for w, window in reversed(list(enumerate(options.windows(sampled.total)))):
            window_of.update(dict.fromkeys(window, w))
        if not sampled.wanted:  # shorter than one window: recorded, so a re-run skips it
            reason = (
                f"{sampled.total} frames, shorter than one window (clip_len={options.clip_len} "
                f"x stride={options.stride} needs {options.span()}); lower clip_len or stride"
            )
            line = {**video, "frame": None, "status": "too_short", "error": reason}
            return VideoResult(job.rel, job.path, [line], short=reason)
    if sampled.truncated:
        video["truncated"] = True
    masks = _read_masks(job, sampled.indices)
    writer = CropWriter(crops_root, job)
    decoded = dict(zip(sampled.indices, sampled.frames, strict=True))
    lines: list[dict[str, Any]] = []
    points: dict[tuple[int, int], np.ndarray] | None = {} if options.mouths else None
    for index in sampled.wanted:
        if index in decoded:
            found = frame_lines(
                index, decoded[index], masks.get(index), detector, options, writer, points
            )
        else:
            found = [{"frame": index, "face": None, "status": "error", "error": "did not decode"}]
        if index in window_of:
            for line in found:
                line.update(window=window_of[index], window_stride=int(options.stride))
        lines.extend({**video, **line} for line in found)
    if points is not None:
        write_mouths(lines, decoded, points, writer)
    truncated = None
    if sampled.truncated:
        truncated = (
            f"decoded {sampled.total} of the {sampled.announced} frames its container announces "
            "(truncated or corrupt); frames sampled from the part that decodes"
        )
    return VideoResult(job.rel, job.path, lines, truncated=truncated)


def write_mouths(
    lines: Sequence[dict[str, Any]],
    decoded: dict[int, np.ndarray],
    points: dict[tuple[int, int], np.ndarray],
    writer: CropWriter,
) -> None:
    """Cut and write the mouth crops of one video's faces (:mod:`datasets.mouths`): per window,
    the faces are linked into tracks by box overlap (:func:`datasets.tracks.link_tracks`), and
    each track's run of frames is smoothed and aligned as LipForensics does. A face whose
    landmarks are missing, or whose mouth cannot be cut, gets ``mouth: null``."""
    by_window: dict[Any, dict[int, list[dict[str, Any]]]] = {}
    for line in lines:
        if line.get("frame") is None:
            continue
        frames = by_window.setdefault(line.get("window"), {})
        faces = frames.setdefault(int(line["frame"]), [])
        if line.get("status") == "ok" and (line["frame"], line["face"]) in points:
            faces.append(line)
    for frames in by_window.values():
        order = sorted(frames)
        boxes = [[tuple(line["box"]) for line in frames[f]] for f in order]
        for track in link_tracks(boxes):
            run = [frames[order[f]][b] for f, b in track]
            crops = mouth_crops(
                [decoded[line["frame"]] for line in run],
                [points[(line["frame"], line["face"])] for line in run],
            )
            for line, crop in zip(run, crops, strict=True):
                if crop is not None:
                    line["mouth"] = writer.write_mouth(Path(line["crop"]).stem, crop)
    for line in lines:
        if line.get("status") == "ok":
            line.setdefault("mouth", None)


# ---------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(options: Options, crops_root: str, detector: FaceDetector) -> None:
    import cv2

    cv2.setNumThreads(1)
    _WORKER.update(options=options, crops_root=Path(crops_root), detector=detector)


def _work(job: Job) -> VideoResult:
    try:
        return process_video(job, _WORKER["options"], _WORKER["crops_root"], _WORKER["detector"])
    except Exception as exc:  # one video must not stop the run
        message = f"{type(exc).__name__}: {exc}"
        line = {
            "video": job.rel,
            "run": uuid.uuid4().hex[:12],
            "frame": None,
            "status": "error",
            "error": message,
        }
        return VideoResult(job.rel, job.path, [line], error=message)


def _results(
    jobs: Sequence[Job], options: Options, crops_root: Path, detector: FaceDetector, workers: int
) -> Iterator[VideoResult]:
    """Each job's result as it completes: in this process (``workers=0``) or in a pool."""
    if workers <= 0 or len(jobs) <= 1:
        _init_worker(options, str(crops_root), detector)
        for job in jobs:
            yield _work(job)
        return
    # fork on Linux: workers inherit the loaded models instead of reading 100 MB each
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    fork_safe_opencv()
    with ProcessPoolExecutor(
        min(workers, len(jobs)),
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(options, str(crops_root), detector),
    ) as pool:
        futures = [pool.submit(_work, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool:
            raise UserError(
                "a worker process died (out of memory?); what finished is in the index: "
                "run the same command again to go on (num_workers=<fewer> uses less memory)"
            ) from None
        finally:
            for future in futures:
                future.cancel()


# ---------------------------------------------------------------------------------------
# the index
# ---------------------------------------------------------------------------------------


def is_complete(
    lines: Sequence[dict[str, Any]] | None, settings: str, video_size: int | None
) -> bool:
    """A video's last block of index lines covers all its sampled frames, with these settings."""
    if not lines:
        return False
    first = lines[0]
    if first.get("settings") != settings or first.get("video_size") != video_size:
        return False
    if len(lines) == 1 and first.get("status") == "too_short":
        return True
    wanted = first.get("frames")
    seen = {line.get("frame") for line in lines if line.get("frame") is not None}
    return isinstance(wanted, int) and wanted > 0 and len(seen) == wanted


class IndexWriter:
    """Appends one video's lines at a time to ``index.jsonl``; holds a lock for the run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115
        try:
            import fcntl

            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            self._lock.close()
            raise UserError(
                f"another preprocessing run is writing {path}; wait for it to end"
            ) from None
        needs_newline = path.is_file() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
        self._handle = path.open("a", encoding="utf-8")
        if needs_newline:  # a run killed mid-line: end that line so the next one parses
            self._handle.write("\n")

    def write(self, lines: Sequence[dict[str, Any]]) -> None:
        self._handle.write(
            "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        )
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def compact(self) -> None:
        """Rewrite the index with only the last block of each video (atomic replace)."""
        blocks = read_crop_index(self.path.parent) or {}
        kept = sum(len(b) for b in blocks.values())
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            total = sum(1 for line in handle if line.strip())
        if kept == total:
            return
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index-", suffix=".jsonl")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for lines in blocks.values():
                out.write("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
        self._handle.close()
        os.replace(tmp, self.path)
        self._handle = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._handle.close()
        self._lock.close()


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


# ---------------------------------------------------------------------------------------
# a benchmark
# ---------------------------------------------------------------------------------------


def collect_jobs(source: Any, splits: Sequence[str] | None = None) -> list[Job]:
    """The videos of ``splits`` (default: all of the source's), each once, in split order."""
    chosen = list(splits) if splits else list(getattr(source, "splits", ("train", "val", "test")))
    root = Path(source.root) if source.root is not None else None
    jobs: dict[str, Job] = {}
    for split in chosen:
        for item in source.videos(split):
            if item.rel in jobs:
                continue
            mask_rel = item.extra.get("mask_rel")
            mask_path = str(root / mask_rel) if mask_rel and root is not None else None
            jobs[item.rel] = Job(item.rel, item.path, mask_rel, mask_path)
    return list(jobs.values())


def preprocess(
    source: Any,
    options: Options,
    num_workers: int = 0,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build or complete ``source``'s crop cache; returns the summary (see the module doc)."""
    from deepsift.core.progress import progress_bar

    if getattr(source, "crops_root", None) is None:
        raise UserError("data.crops_root is not set (it defaults to <data.root>/deepsift_crops)")
    crops_root = Path(source.crops_root)
    detector = face_detector(**options.detector)
    jobs = collect_jobs(source, splits)
    present = [j for j in jobs if Path(j.path).is_file()]
    missing = [j.path for j in jobs if not Path(j.path).is_file()]
    if missing:
        log.warning(
            "%d of %d videos are not in %s and are left out (first: %s); "
            "python -m datasets.summary lists them",
            len(missing), len(jobs), source.root, missing[0],
        )  # fmt: skip
    crops_root.mkdir(parents=True, exist_ok=True)
    writer = IndexWriter(crops_root / INDEX_NAME)
    summary: dict[str, Any] = {
        "crops_root": str(crops_root),
        "index": str(writer.path),
        "videos": len(jobs),
        "done": 0,
        "skipped": 0,
        "failed": 0,
        "truncated": 0,
        "missing": len(missing),
        "faces": 0,
        "frames_with_face": 0,
        "frames_without_face": 0,
        "frame_errors": 0,
        "too_short": 0,
        "errors": [],
        "short": [],
    }
    try:
        settings = options.fingerprint()
        index = {} if overwrite else (read_crop_index(crops_root) or {})
        todo = [
            j
            for j in present
            if not is_complete(index.get(j.rel), settings, os.path.getsize(j.path))
        ]
        summary["skipped"] = len(present) - len(todo)
        log.info(
            "%s: %d videos, %d already in %s, %d to do with %d workers",
            getattr(source, "name", "data"), len(present), summary["skipped"], crops_root,
            len(todo), num_workers,
        )  # fmt: skip
        started = time.perf_counter()
        if todo:
            detector.load()  # once here: forked workers share the loaded models
        bar = progress_bar(
            _results(todo, options, crops_root, detector, num_workers),
            desc="preprocess",
            enabled=progress,
            total=len(todo),
            unit="video",
        )
        for result in bar:
            writer.write(result.lines)
            _count(summary, result)
            bar.set_postfix(
                faces=summary["faces"],
                no_face=summary["frames_without_face"],
                failed=summary["failed"],
                refresh=False,
            )
        bar.close()
        summary["seconds"] = round(time.perf_counter() - started, 2)
        writer.compact()
    finally:
        writer.close()
    return summary


def _count(summary: dict[str, Any], result: VideoResult) -> None:
    if result.error:
        summary["failed"] += 1
        summary["errors"].append({"video": result.path, "error": result.error})
        log.error("%s: %s; skipped, the run goes on", result.path, result.error)
        return
    if result.short:
        summary["too_short"] += 1
        summary["short"].append({"video": result.path, "reason": result.short})
        log.warning("%s: %s; skipped, the run goes on", result.path, result.short)
        return
    summary["done"] += 1
    if result.truncated:
        summary["truncated"] += 1
        summary["errors"].append({"video": result.path, "error": result.truncated})
        log.error("%s: %s", result.path, result.truncated)
    with_face = {line["frame"] for line in result.lines if line["status"] == "ok"}
    summary["faces"] += sum(line["status"] == "ok" for line in result.lines)
    summary["frames_with_face"] += len(with_face)
    summary["frames_without_face"] += sum(line["status"] == "no_face" for line in result.lines)
    summary["frame_errors"] += sum(line["status"] == "error" for line in result.lines)


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------


def compose_config(overrides: Sequence[str]) -> Any:
    """``configs/preprocess.yaml`` with ``overrides`` (one of them ``data=<name>``)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    options = config_names("data")
    if not any(o.split("=", 1)[0].lstrip("+") == "data" for o in overrides):
        raise UserError(f"pass data=<name> (one of {', '.join(options)}) and data.root=<path>")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("preprocess", overrides=list(overrides))
    except HydraException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot compose the config: {first}; data options: {', '.join(options)}"
        ) from None


def options_from(cfg: Any) -> Options:
    from omegaconf import OmegaConf

    node = cfg.get("face_detector")
    detector = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    if isinstance(detector, str):
        detector = {"name": detector}
    return Options(
        frames=int(cfg.frames) if cfg.frames else None,
        margin=float(cfg.margin),
        align=bool(cfg.align),
        size=int(cfg.size) if cfg.size else None,
        faces=str(cfg.faces),
        detector=dict(detector),
        clip_len=int(cfg.clip_len) if cfg.get("clip_len") else None,
        clips_per_video=int(cfg.get("clips_per_video") or 4),
        stride=int(cfg.get("stride") or 1),
        mouths=bool(cfg.get("mouths") or False),
    )


def workers_from(value: Any) -> int:
    if value is None or str(value).lower() in ("null", "auto"):
        return os.cpu_count() or 1
    return max(0, int(value))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.preprocess",
        description="Face crops, landmarks and masks of a video benchmark, with an index file.",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides: data=<name> data.root=<path> frames=32 ..."
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with user_errors():
        from deepsift.core.configs import instantiate

        cfg = compose_config(args.overrides)
        try:
            source = instantiate(cfg.data, _convert_="all")
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot build data={cfg.data.get('_target_')}: {exc}") from None
        if not hasattr(source, "videos"):
            raise UserError(
                f"data={getattr(source, 'name', '?')} is not a video benchmark; nothing to preprocess"
            )
        splits = list(cfg.splits) if cfg.get("splits") else None
        summary = preprocess(
            source,
            options_from(cfg),
            num_workers=workers_from(cfg.num_workers),
            splits=splits,
            overwrite=bool(cfg.overwrite),
            progress=not args.quiet,
        )
    print(format_summary(summary))
    sys.stdout.flush()
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    rate = ""
    frames = summary["frames_with_face"] + summary["frames_without_face"] + summary["frame_errors"]
    if summary.get("seconds"):
        rate = f" in {summary['seconds']:.1f} s ({frames / summary['seconds']:.1f} frames/s)"
    lines = [
        f"videos: {summary['done']} done, {summary['skipped']} already cached, "
        f"{summary['failed']} failed, {summary['missing']} missing, {summary['truncated']} truncated{rate}",
        f"frames: {summary['frames_with_face']} with a face ({summary['faces']} crops), "
        f"{summary['frames_without_face']} without a face, {summary['frame_errors']} unreadable",
        f"index: {summary['index']}",
    ]
    if summary.get("too_short"):
        lines.insert(1, f"videos shorter than one window: {summary['too_short']} (skipped)")
        lines.extend(f"  too short: {e['video']}: {e['reason']}" for e in summary["short"][:20])
    for entry in summary["errors"][:20]:
        lines.append(f"  error: {entry['video']}: {entry['error']}")
    if len(summary["errors"]) > 20:
        lines.append(f"  ... and {len(summary['errors']) - 20} more (logged above)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

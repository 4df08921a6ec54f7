"""Clip records: the frame records of a face-crop cache regrouped into clips of one face track.

A clip detector (``Detector.input_kind == "clip"``) reads ``clip_len`` face crops of ONE
face, ``clip_stride`` cached frames apart. :func:`clip_records` turns the per-crop
records of :class:`datasets.crop_cache.VideoCropSource` into one record per clip:

* the crops of a video are split into face tracks: by IoU of their boxes
  (:func:`datasets.tracks.link_tracks`, the ``box`` of the crop index) when every crop
  has one, else by the face number of the crop file (``<frame>_<face>.png``);
* each track yields evenly spaced windows (:func:`datasets.tracks.track_clips`), and
  the video keeps ``clips_per_video`` of them, evenly spaced over its tracks;
* a clip's record is the record of its first crop with ``extra["clip_frames"]`` (the
  T crop paths, read by :class:`deepsift.core.records.RecordDataset`), so
  ``Record.video`` is unchanged and ``metrics.video_aggregation`` aggregates the clips
  of a video like it aggregates frames.

"Consecutive" means consecutive in the cache, and ``clip_stride`` counts cached frames
(after ``data.max_frames``, when set, has thinned them: leave it null for clip detectors).
By default ``datasets.preprocess`` keeps ``frames`` frames evenly spaced over the video,
so cached neighbours are far apart in time. For clip detectors, preprocess with windows
(``clip_len=... clips_per_video=... stride=...``): the cache then holds windows of
consecutive video frames ``stride`` apart, each crop's record carries its ``window``
(and ``window_stride``), and a clip is cut inside ONE window, from crops that are
exactly ``window_stride`` video frames apart (a frame without a face splits the window).
A clip's frames are thus ``stride x clip_stride`` video frames apart: preprocess with
``stride`` = the detector's wanted frame step and ``clip_len`` >= ``detector.clip_len``,
and keep ``detector.clip_stride=1`` (or ``stride=1`` and the detector's own
``clip_stride``, with a window ``clip_len`` of at least ``clip_span``).
Mouth crops (``Detector.needs_mouth``: LipForensics) are in the cache when it was built with
``mouths=true`` (each crop's record then has ``extra["mouth"]``); with ``mouths=True``,
:func:`clip_records` keeps only crops that have one (a face without a mouth crop splits its
window like a frame without a face) and gives each clip ``extra["clip_mouths"]``, read into
``sample["mouth_frames"]``.

A video with no track as long as one clip (``(clip_len - 1) * clip_stride + 1`` cached
frames) is skipped and returned in ``skipped`` with the reason and the fix; it is never
an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from datasets.crop_cache import parse_frame_stem, spread
from datasets.tracks import link_tracks, track_clips
from deepsift.core.records import CLIP_FRAMES, CLIP_MOUTHS, Record


def clip_span(clip_len: int, clip_stride: int) -> int:
    """Cached frames one clip covers."""
    return (int(clip_len) - 1) * int(clip_stride) + 1


def _frame_number(record: Record, position: int) -> int:
    parsed = parse_frame_stem(str(record.extra.get("frame", "")))
    return parsed[0] if parsed else position


def window_segments(track: Sequence[Record]) -> list[list[Record]]:
    """``track`` split into runs of consecutive cached frames of one preprocessing window.

    A track from a cache without windows is one run. Within a window, a run breaks where
    the next crop is not ``window_stride`` video frames on (a frame without a face).
    """
    if not track or any(r.extra.get("window") is None for r in track):
        return [list(track)] if track else []
    runs: list[list[Record]] = []
    previous: tuple[Any, int] | None = None
    for position, record in enumerate(track):
        window, frame = record.extra["window"], _frame_number(record, position)
        step = int(record.extra.get("window_stride") or 1)
        if previous is None or previous != (window, frame - step):
            runs.append([])
        runs[-1].append(record)
        previous = (window, frame)
    return runs


def face_tracks(records: Sequence[Record]) -> list[list[Record]]:
    """The crops of ONE video split into face tracks, each in frame order."""
    by_frame: dict[int, list[Record]] = {}
    for position, record in enumerate(records):
        by_frame.setdefault(_frame_number(record, position), []).append(record)
    frames = [by_frame[f] for f in sorted(by_frame)]
    if all(isinstance(r.extra.get("box"), list | tuple) for r in records):
        boxes = [[tuple(float(v) for v in r.extra["box"][:4]) for r in crops] for crops in frames]
        return [[frames[f][b] for f, b in track] for track in link_tracks(boxes)]
    by_face: dict[int, list[Record]] = {}
    for crops in frames:
        for record in crops:
            by_face.setdefault(int(record.extra.get("face") or 0), []).append(record)
    return [by_face[k] for k in sorted(by_face)]


def clip_records(
    records: Sequence[Record],
    clip_len: int,
    clip_stride: int = 1,
    clips_per_video: int | None = 4,
    mouths: bool = False,
) -> tuple[list[Record], list[tuple[str, str]]]:
    """``(clip records, skipped)`` from per-crop ``records``; ``skipped`` is ``(video, reason)``.

    ``mouths``: clips of crops that have a mouth crop only (lip-motion detectors).

    ``clips_per_video`` falsy keeps every window :func:`track_clips` cuts at one clip per
    ``span`` frames (non-overlapping). A record without ``video`` is its own video.
    """
    clip_len, clip_stride = int(clip_len), int(clip_stride)
    span = clip_span(clip_len, clip_stride)
    videos: dict[str, list[Record]] = {}
    for n, record in enumerate(records):
        videos.setdefault(record.video or f"{record.path}#{n}", []).append(record)
    out: list[Record] = []
    skipped: list[tuple[str, str]] = []
    for video, crops in videos.items():
        if mouths:
            crops = [r for r in crops if r.extra.get("mouth")]
            if not crops:
                skipped.append(
                    (
                        video,
                        "no mouth crops in the face-crop cache (this detector reads mouths); "
                        "re-run python -m datasets.preprocess with mouths=true and windows "
                        "(clip_len=... stride=1)",
                    )
                )
                continue
        windows: list[tuple[int, list[Record]]] = []
        tracks = face_tracks(crops)
        runs = [(t, run) for t, track in enumerate(tracks) for run in window_segments(track)]
        for t, run in runs:
            k = clips_per_video or max(1, len(run) // span)
            for positions in track_clips(len(run), clip_len, int(k), clip_stride):
                windows.append((t, [run[p] for p in positions]))
        if not windows:
            longest = max((len(run) for _, run in runs), default=0)
            windowed = any(r.extra.get("window") is not None for r in crops)
            where = "window of consecutive frames" if windowed else "face track"
            skipped.append(
                (
                    video,
                    f"its longest {where} has {longest} cached frames, fewer than one clip "
                    f"(clip_len={clip_len} x clip_stride={clip_stride} needs {span}); re-run "
                    "python -m datasets.preprocess with longer windows (clip_len=..., or frames=... "
                    "without windows), or lower "
                    "detector.clip_len / detector.clip_stride",
                )
            )
            continue
        for c, (t, frames) in enumerate(spread(windows, clips_per_video)):
            out.append(_clip_record(frames, t, c, mouths))
    return out, skipped


def _clip_record(frames: Sequence[Record], track: int, clip: int, mouths: bool = False) -> Record:
    first = frames[0]
    extra: dict[str, Any] = {
        **first.extra,
        CLIP_FRAMES: [r.path for r in frames],
        **({CLIP_MOUTHS: [r.extra["mouth"] for r in frames]} if mouths else {}),
        "frames": [str(r.extra.get("frame", "")) for r in frames],
        "track": track,
        "clip": clip,
    }
    for key in ("landmarks", "mask", "mouth"):  # per-frame side files: one frame's, not a clip's
        extra.pop(key, None)
    return replace(first, extra=extra)

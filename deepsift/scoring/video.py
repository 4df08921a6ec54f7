"""Frames sampled evenly from a video file, as RGB images: the frames training sees.

Sampling and reading are :mod:`datasets.video`'s, the code that builds the training
crop cache: ``k`` frames at the centres of ``k`` equal segments of the video
(:func:`datasets.video.frame_indices`), the container's frame count checked by
decoding the video to its end and the positions chosen again over the frames that
really decode when it is wrong (:func:`datasets.video.sample_frames`), so a video
scored gives the frames its preprocessing gave. What is scoring's own: the
``--max-pixels`` limit (checked on the container's frame size before anything is
decoded) and an :class:`~deepsift.scoring.decode.ItemError` (an error record) for a
video that cannot be read. Only files on disk are read: a video inside an archive
would have to be extracted first, which :mod:`.inputs` never does, so it gets an
error record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from datasets.video import VideoError, sample_frames, window_indices
from deepsift.scoring.decode import ItemError


@dataclass
class VideoFrames:
    frames: list[tuple[int, Image.Image]] = field(default_factory=list)
    frame_count: int = 0  # frames that decode (the container's count when it is right)
    fps: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    #: clip windows (:func:`read_clip_windows`): each a list of ``(index, frame)``
    windows: list[list[tuple[int, Image.Image]]] = field(default_factory=list)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ItemError(
            "video support needs opencv-python (pip install 'opencv-python>=4.8,<5')"
        ) from None
    return cv2


def _header(path: str) -> VideoFrames:
    """The container's frame size, rate and codec, nothing decoded."""
    cv2 = _cv2()
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise ItemError("not a readable video (OpenCV cannot open it)")
        return VideoFrames(
            frame_count=int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            fps=float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
            codec=_fourcc(capture.get(cv2.CAP_PROP_FOURCC)),
        )
    finally:
        capture.release()


def _sample(path: str, max_pixels: int, k: int | None, pick: Any = None) -> tuple[VideoFrames, Any]:
    try:
        out = _header(path)
        if out.width * out.height > max_pixels:
            raise ItemError(
                f"video frames of {out.width}x{out.height} pixels > --max-pixels {max_pixels}"
            )
        return out, sample_frames(path, k, pick)
    except ItemError:
        raise
    except VideoError as exc:
        raise ItemError(f"not a readable video ({exc})") from None
    except Exception as exc:  # OpenCV raises cv2.error and others on corrupt streams
        raise ItemError(f"corrupt video ({str(exc).strip()[:160] or type(exc).__name__})") from None


def read_clip_windows(
    path: str, clip_len: int, clip_stride: int, clips: int, max_pixels: int
) -> VideoFrames:
    """Up to ``clips`` windows of ``clip_len`` frames ``clip_stride`` apart, evenly spaced over
    the video (:func:`datasets.video.window_indices`, the windows ``datasets.preprocess``
    cuts for clip detectors), counted by decoding as :func:`read_video` does. A window with
    a frame that does not decode is left out; none when the video is shorter than one."""

    def pick(total: int) -> list[int]:
        windows = window_indices(total, clip_len, clips, clip_stride)
        return sorted({i for window in windows for i in window})

    out, sampled = _sample(path, max_pixels, None, pick)
    out.frame_count = sampled.total
    got = dict(zip(sampled.indices, sampled.frames, strict=True))
    for window in window_indices(sampled.total, clip_len, clips, clip_stride):
        if all(i in got for i in window):
            out.windows.append([(i, _image(got[i])) for i in window])
    return out


def read_video(path: str, k: int, max_pixels: int) -> VideoFrames:
    """Sample ``k`` frames of the video at ``path``; ItemError when it cannot be read."""
    out, sampled = _sample(path, max_pixels, k)
    out.frame_count = sampled.total
    out.frames = [(i, _image(f)) for i, f in zip(sampled.indices, sampled.frames, strict=True)]
    if not out.frames:
        raise ItemError("video has no decodable frame")
    return out


def _image(frame: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(frame))


def _fourcc(value: float) -> str:
    code = int(value or 0)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else ""

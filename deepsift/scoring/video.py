"""Frames sampled evenly from a video file (OpenCV's FFmpeg backend), as RGB images.

``k`` frames at evenly spaced positions (the centres of ``k`` equal segments of
the video), the same positions on every run. A video whose frame count the
container does not state is counted by reading it once. Only files on disk are
read: a video inside an archive would have to be extracted first, which
:mod:`.inputs` never does, so it gets an error record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from deepsift.scoring.decode import ItemError

#: above this many frames, frames are reached by seeking instead of decoding every frame
SEEK_ABOVE = 2000


@dataclass
class VideoFrames:
    frames: list[tuple[int, Image.Image]] = field(default_factory=list)
    frame_count: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""


def sample_indices(frame_count: int, k: int) -> list[int]:
    """``k`` evenly spaced frame indices in ``[0, frame_count)`` (all of them when fewer)."""
    if frame_count <= 0 or k <= 0:
        return []
    if frame_count <= k:
        return list(range(frame_count))
    return sorted({int((i + 0.5) * frame_count / k) for i in range(k)})


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ItemError(
            "video support needs opencv-python (pip install 'opencv-python>=4.8,<5')"
        ) from None
    return cv2


def read_video(path: str, k: int, max_pixels: int) -> VideoFrames:
    """Sample ``k`` frames of the video at ``path``; ItemError when it cannot be read."""
    cv2 = _cv2()
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise ItemError("not a readable video (OpenCV cannot open it)")
        out = VideoFrames(
            frame_count=int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            fps=float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
            codec=_fourcc(capture.get(cv2.CAP_PROP_FOURCC)),
        )
        if out.width * out.height > max_pixels:
            raise ItemError(
                f"video frames of {out.width}x{out.height} pixels > --max-pixels {max_pixels}"
            )
        if out.frame_count <= 0:
            out.frame_count = _count_frames(capture)
            capture.release()
            capture = cv2.VideoCapture(path)
        wanted = sample_indices(out.frame_count, k)
        if out.frame_count > SEEK_ABOVE:
            for index in wanted:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                ok, frame = capture.read()
                if ok:
                    out.frames.append((index, _rgb(cv2, frame)))
        else:
            targets = set(wanted)
            for index in range(max(wanted, default=-1) + 1):
                if not capture.grab():
                    break
                if index in targets:
                    ok, frame = capture.retrieve()
                    if ok:
                        out.frames.append((index, _rgb(cv2, frame)))
        if not out.frames:
            raise ItemError("video has no decodable frame")
        return out
    except ItemError:
        raise
    except Exception as exc:  # OpenCV raises cv2.error and others on corrupt streams
        raise ItemError(f"corrupt video ({str(exc).strip()[:160] or type(exc).__name__})") from None
    finally:
        capture.release()


def _count_frames(capture) -> int:
    count = 0
    while capture.grab():
        count += 1
    return count


def _rgb(cv2, frame: np.ndarray) -> Image.Image:
    if frame.ndim == 2:
        return Image.fromarray(frame).convert("RGB")
    return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def _fourcc(value: float) -> str:
    code = int(value or 0)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else ""

"""Read N evenly spaced frames of a video with OpenCV (its FFmpeg backend).

The frames are chosen over the *whole* video: frame ``i`` of ``n`` is the middle of the
``i``-th of ``n`` equal segments (:func:`frame_indices`), not the first ``n`` frames.
The container's frame count (``CAP_PROP_FRAME_COUNT``) is only a first guess: the
video is decoded sequentially to its end, keeping the chosen frames, and when the
decoded count differs from the announced one the indices are chosen again over the
frames that really decode and the video is read a second time. A video that decodes
fewer frames than it announces (a truncated or corrupt file) is reported as
``truncated`` in :class:`Frames`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class VideoError(Exception):
    """The video cannot be opened or decodes no frame."""


def frame_indices(total: int, n: int | None) -> list[int]:
    """``n`` indices evenly spread over ``range(total)``: the centres of ``n`` equal segments.

    Every frame when ``n`` is falsy or ``total <= n``.
    """
    if total <= 0:
        return []
    if not n or total <= n:
        return list(range(total))
    return [(2 * i + 1) * total // (2 * n) for i in range(n)]


def window_indices(total: int, clip_len: int, windows: int, stride: int = 1) -> list[list[int]]:
    """Up to ``windows`` windows of ``clip_len`` frames ``stride`` apart, evenly spaced over
    ``range(total)`` (window ``i`` centred in the ``i``-th of ``windows`` equal segments,
    clamped to the video); empty when the video is shorter than one window.

    Windows may overlap in a short video; identical windows are kept once.
    """
    span = (int(clip_len) - 1) * int(stride) + 1
    if total < span or clip_len < 1 or windows < 1:
        return []
    free = total - span
    starts = sorted({min(free, max(0, (2 * i + 1) * total // (2 * windows) - span // 2))
                     for i in range(windows)})  # fmt: skip
    return [[s + k * int(stride) for k in range(int(clip_len))] for s in starts]


@dataclass
class Frames:
    """The frames read from one video: ``frames[i]`` is frame ``indices[i]`` (RGB uint8).

    ``wanted`` are the indices chosen; ``indices`` those of them that decoded.
    """

    wanted: list[int]
    indices: list[int]
    frames: list[np.ndarray]
    total: int  # frames that decoded
    announced: int  # the container's frame count (0 when it gives none)
    passes: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        """Fewer frames decode than the container announces (more than 1% or 1 frame off)."""
        return self.announced > 0 and self.total < self.announced - max(1, self.announced // 100)


def _capture(path: str) -> Any:
    """An opened ``cv2.VideoCapture`` (tests replace this to simulate odd containers)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoError("cannot open the video (missing, truncated or not a video)")
    return cap


def _announced(cap: Any) -> int:
    import cv2

    try:
        value = float(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    except (TypeError, ValueError):
        return 0
    return int(value) if np.isfinite(value) and value > 0 else 0


def _read(
    path: str, wanted: Sequence[int], to_end: bool, gray: bool = False
) -> tuple[dict[int, np.ndarray], int, int]:
    """``({index: frame}, frames decoded, announced)`` reading sequentially.

    Stops after the last wanted frame unless ``to_end`` (to learn the true count).
    """
    import cv2

    cap = _capture(path)
    try:
        announced = _announced(cap)
        want = set(wanted)
        last = max(want) if want else -1
        out: dict[int, np.ndarray] = {}
        index = 0
        while to_end or index <= last:
            if not cap.grab():
                break
            if index in want:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    code = cv2.COLOR_BGR2GRAY if gray else cv2.COLOR_BGR2RGB
                    if frame.ndim == 2:
                        out[index] = frame if gray else cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
                    else:
                        out[index] = cv2.cvtColor(frame, code)
            index += 1
    finally:
        cap.release()
    return out, index, announced


def sample_frames(
    path: str, n: int | None, pick: Callable[[int], list[int]] | None = None
) -> Frames:
    """``n`` evenly spaced frames of the whole video at ``path`` (all frames when ``n`` is falsy),
    or the frames ``pick(frame count)`` chooses (sorted indices, e.g. windows of consecutive
    frames: :func:`window_indices`).

    Raises :class:`VideoError` when the video cannot be opened or no frame decodes.
    """
    cap = _capture(path)
    announced = _announced(cap)
    cap.release()
    if pick is None:
        pick = lambda total: frame_indices(total, n)  # noqa: E731
    wanted = pick(announced) if announced else []
    got, total, _ = _read(path, wanted, to_end=True)
    if total == 0:
        raise VideoError("no frame decodes")
    passes, notes = 1, []
    if total != announced:
        notes.append(f"{total} frames decode, the container announces {announced}")
        again = pick(total)
        if again != wanted:
            got, _, _ = _read(path, again, to_end=False)
            passes, wanted = 2, again
    indices = [i for i in wanted if i in got]
    missing = [i for i in wanted if i not in got]
    if missing:
        notes.append(f"frames {missing[:5]} did not decode")
    return Frames(wanted, indices, [got[i] for i in indices], total, announced, passes, notes)


def read_frames(path: str, indices: Sequence[int], gray: bool = False) -> dict[int, np.ndarray]:
    """The frames ``indices`` of the video at ``path`` (those that decode), RGB or gray uint8."""
    got, _, _ = _read(path, indices, to_end=False, gray=gray)
    return got

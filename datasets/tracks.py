"""IoU face-track following for clip records (issue #15).

A clip detector sees T consecutive face crops of ONE person; a clip that mixes two
identities (faces crossing, a cut) teaches it nothing true. :func:`link_tracks`
links per-frame face boxes into tracks by IoU against each track's constant-velocity
prediction (last box + last displacement, the SORT-style motion model without the
Kalman filter), greedily, best IoU first, one box per track per frame. A track ENDS
where the link is ambiguous (a second candidate within ``ambiguity`` IoU of the
best, as when two faces overlap) or missing; the boxes then start new tracks, so a
track, and every clip cut from it, never mixes identities at the price of shorter
tracks around crossings.
"""

from __future__ import annotations

from collections.abc import Sequence

Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 for empty boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _predict(boxes: list[Box]) -> Box:
    if len(boxes) < 2:
        return boxes[-1]
    last, prev = boxes[-1], boxes[-2]
    return tuple(2 * c - p for c, p in zip(last, prev, strict=True))  # type: ignore[return-value]


def link_tracks(
    frames: Sequence[Sequence[Box]], min_iou: float = 0.3, ambiguity: float = 0.2
) -> list[list[tuple[int, int]]]:
    """Link per-frame boxes into tracks.

    Args:
        frames: ``frames[i]`` the face boxes of the i-th sampled frame.
        min_iou: smallest IoU (with the track's prediction) that links a box.
        ambiguity: a link is refused when another box (for the track) or another
            track (for the box) scores within this IoU of it above ``min_iou``.

    Returns:
        Tracks as lists of ``(frame_index, box_index)``, consecutive frames, in order
        of their first frame.
    """
    done: list[list[tuple[int, int]]] = []
    live: list[tuple[list[tuple[int, int]], list[Box]]] = []
    for f, boxes in enumerate(frames):
        scores = [[iou(_predict(tb), box) for box in boxes] for _, tb in live]
        pairs = sorted(
            ((s, t, b) for t, row in enumerate(scores) for b, s in enumerate(row) if s >= min_iou),
            reverse=True,
        )
        used_t: set[int] = set()
        used_b: set[int] = set()
        links: dict[int, int] = {}
        for s, t, b in pairs:
            if t in used_t or b in used_b:
                continue
            rivals = [scores[t][o] for o in range(len(boxes)) if o != b] + [
                scores[o][b] for o in range(len(live)) if o != t
            ]
            used_t.add(t)
            used_b.add(b)
            if any(r >= min_iou and s - r < ambiguity for r in rivals):
                continue  # ambiguous: the track ends and the box starts anew
            links[t] = b
        next_live = []
        for t, (members, tb) in enumerate(live):
            if t in links:
                members.append((f, links[t]))
                tb.append(tuple(boxes[links[t]]))  # type: ignore[arg-type]
                next_live.append((members, tb))
            else:
                done.append(members)
        linked = set(links.values())
        for b, box in enumerate(boxes):
            if b not in linked:
                next_live.append(([(f, b)], [tuple(box)]))  # type: ignore[list-item]
        live = next_live
    done.extend(members for members, _ in live)
    return sorted(done, key=lambda m: m[0])


def track_clips(track_len: int, clip_len: int, clips: int, stride: int = 1) -> list[list[int]]:
    """Up to ``clips`` evenly spaced clips of ``clip_len`` positions ``stride`` apart
    within a track of ``track_len`` positions; empty when the track is too short."""
    span = (clip_len - 1) * stride + 1
    if clip_len < 1 or clips < 1 or track_len < span:
        return []
    last = track_len - span
    n = min(clips, last + 1)
    starts = sorted({round(i * last / (n - 1)) for i in range(n)}) if n > 1 else [last // 2]
    return [[s + k * stride for k in range(clip_len)] for s in starts]

"""From the model's probabilities for an item's units to its output records.

Per scored picture (the image, or one sampled frame), per variant (original and
laundered copies):

* a whole-image member's score is its probability for the picture;
* a face member's score is the maximum over the picture's faces;
* the picture's score combines the members that scored it (mean by default).

A video's (or animation's) score aggregates its frames' scores (``mean`` by
default, ``--video-aggregation median|max``), per member and combined. The band
comes from the combined score; ``unstable`` compares the bands of the original
and the laundered copies.

A video scored by a clip detector (:func:`.prepare._prepare_clips`) gives one
``kind: clip`` record per clip (a face track through one window), then the video's
record: a window scores the maximum over its tracks, the video aggregates its windows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deepsift.scoring import stability
from deepsift.scoring.calibration import Bands
from deepsift.scoring.faces import crop_slots
from deepsift.scoring.models import Ensemble, aggregate
from deepsift.scoring.output import new_record
from deepsift.scoring.prepare import Prepared


def _value(array: np.ndarray, index: int | None) -> float | None:
    if index is None:
        return None
    value = float(array[index])
    return None if math.isnan(value) else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class _Scores:
    """Scores of one prepared item, per variant, group, face and member."""

    def __init__(
        self, prepared: Prepared, probs: dict[str, np.ndarray], ensemble: Ensemble
    ) -> None:
        self.prepared = prepared
        self.probs = probs
        self.ensemble = ensemble
        self.index = {(u.group, u.face, u.variant, u.crop): i for i, u in enumerate(prepared.units)}
        self.crop_of = crop_slots(ensemble.members)[1]  # as the workers assigned them

    def face(self, label: str, group: int, face: int, variant: str) -> float | None:
        key = (group, face, variant, self.crop_of.get(label, 0))
        return _value(self.probs[label], self.index.get(key))

    def member(self, label: str, faces: bool, group: int, variant: str) -> float | None:
        if not faces:
            return _value(self.probs[label], self.index.get((group, None, variant, 0)))
        found = self.prepared.groups[group].faces or []
        values = [self.face(label, group, f, variant) for f in range(len(found))]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    def group(self, group: int, variant: str) -> tuple[dict[str, float | None], float | None]:
        per_member = {
            m.label: self.member(m.label, m.faces, group, variant) for m in self.ensemble.members
        }
        return per_member, self.ensemble.combine_scores(per_member)


def _not_applicable(prepared: Prepared) -> str:
    if prepared.reason:
        return prepared.reason
    reasons = {g.face_reason for g in prepared.groups if g.face_reason}
    if len(prepared.groups) <= 1:
        return next(iter(reasons), "nothing to score")
    if len(reasons) == 1:
        return f"{next(iter(reasons))} in every sampled frame"
    return "no usable face in any sampled frame"


def _faces(scores: _Scores, group: int) -> list[dict[str, Any]] | None:
    faces = scores.prepared.groups[group].faces
    if faces is None:
        return None
    members = [m for m in scores.ensemble.members if m.faces]
    out = []
    for f, face in enumerate(faces):
        per_member = {m.label: scores.face(m.label, group, f, stability.ORIGINAL) for m in members}
        combined = Ensemble(members, scores.ensemble.combine).combine_scores(per_member)
        out.append(
            {
                **face,
                "score": _round(combined),
                "scores": {k: _round(v) for k, v in per_member.items()},
            }
        )
    return out


def assemble(
    prepared: Prepared,
    probs: dict[str, np.ndarray],
    ensemble: Ensemble,
    bands: Bands,
    aggregation: str = "mean",
    frame_records: bool = False,
    with_stability: bool = False,
) -> list[dict[str, Any]]:
    """The item's records: optional per-frame records first, then its own record last."""
    record = dict(prepared.record)
    record["calibrated"] = bands.calibrated
    if record.get("error"):
        return [record]
    if prepared.record.get("kind") == "video" and (
        prepared.reason or any(g.clip is not None for g in prepared.groups)
    ):
        return _assemble_clips(prepared, probs, ensemble, bands, aggregation, record)
    scores = _Scores(prepared, probs, ensemble)
    variants = [stability.ORIGINAL, *(stability.VARIANTS if with_stability else ())]
    n_groups = len(prepared.groups)
    results: dict[str, tuple[float | None, dict[str, float | None], list]] = {}
    for variant in variants:
        groups = [scores.group(g, variant) for g in range(n_groups)]
        per_member = {
            m.label: aggregate(
                [pm[m.label] for pm, _ in groups if pm[m.label] is not None], aggregation
            )
            for m in ensemble.members
        }
        overall = aggregate([c for _, c in groups if c is not None], aggregation)
        results[variant] = (overall, per_member, groups)
    overall, per_member, groups = results[stability.ORIGINAL]
    band = bands.band(overall)
    record.update(
        score=_round(overall),
        scores={k: _round(v) for k, v in per_member.items()},
        band=band,
        not_applicable=None if overall is not None else _not_applicable(prepared),
    )
    if with_stability:
        laundered = {v: results[v][0] for v in stability.VARIANTS}
        record["stability"] = {v: _round(s) for v, s in laundered.items()}
        record["unstable"] = stability.is_unstable(
            band, {v: bands.band(s) for v, s in laundered.items()}
        )
    multi = (
        record.get("kind") in ("video", "animation")
        and n_groups > 0
        and prepared.groups[0].frame is not None
    )
    if not multi:
        record["faces"] = _faces(scores, 0) if n_groups else None
        return [record]
    record["frames"] = [
        {
            "frame": prepared.groups[g].frame,
            "score": _round(groups[g][1]),
            **({"faces": _faces(scores, g)} if prepared.groups[g].faces is not None else {}),
        }
        for g in range(n_groups)
    ]
    out = []
    if frame_records:
        for g, group in enumerate(prepared.groups):
            member_scores, combined = groups[g]
            frame_band = bands.band(combined)
            frame = new_record(
                path=record["path"],
                member=record["member"],
                member_index=record["member_index"],
                frame=group.frame,
                kind="frame",
                sha256=record["sha256"],
                format=record["format"],
                width=group.width,
                height=group.height,
                score=_round(combined),
                band=frame_band,
                calibrated=bands.calibrated,
                scores={k: _round(v) for k, v in member_scores.items()},
                faces=_faces(scores, g),
                not_applicable=None
                if combined is not None
                else (group.face_reason or "nothing to score"),
            )
            if with_stability:
                laundered = {v: results[v][2][g][1] for v in stability.VARIANTS}
                frame["stability"] = {v: _round(s) for v, s in laundered.items()}
                frame["unstable"] = stability.is_unstable(
                    frame_band, {v: bands.band(s) for v, s in laundered.items()}
                )
            out.append(frame)
    out.append(record)
    return out


def _assemble_clips(
    prepared: Prepared,
    probs: dict[str, np.ndarray],
    ensemble: Ensemble,
    bands: Bands,
    aggregation: str,
    record: dict[str, Any],
) -> list[dict[str, Any]]:
    """A video scored by a clip detector: one ``kind: clip`` record per clip, then the
    video's record. A window (one clip span) scores the maximum over its face tracks (as
    an image scores its most suspect face); the video aggregates its windows
    (``--video-aggregation``), per member and combined."""
    index = {(u.group, u.face, u.variant, u.crop): i for i, u in enumerate(prepared.units)}
    labels = [m.label for m in ensemble.members]
    per_clip = []
    for g in range(len(prepared.groups)):
        unit = index.get((g, None, stability.ORIGINAL, 0))
        member_scores = {label: _value(probs[label], unit) for label in labels}
        per_clip.append((member_scores, ensemble.combine_scores(member_scores)))
    windows: dict[int, list[int]] = {}
    for g, group in enumerate(prepared.groups):
        windows.setdefault(int(group.clip["window"]), []).append(g)  # type: ignore[index]

    def window_max(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return max(kept) if kept else None

    maxima = [window_max([per_clip[g][1] for g in gs]) for gs in windows.values()]
    overall = aggregate([v for v in maxima if v is not None], aggregation)
    member_overall = {
        label: aggregate(
            [
                v
                for v in (
                    window_max([per_clip[g][0][label] for g in gs]) for gs in windows.values()
                )
                if v is not None
            ],
            aggregation,
        )
        for label in labels
    }
    record.update(
        score=_round(overall),
        scores={k: _round(v) for k, v in member_overall.items()},
        band=bands.band(overall),
        not_applicable=None if overall is not None else _not_applicable(prepared),
        clips=[],
    )
    out = []
    for g, group in enumerate(prepared.groups):
        member_scores, combined = per_clip[g]
        clip = {"clip": g, **(group.clip or {})}
        record["clips"].append(
            {k: clip[k] for k in ("clip", "window", "track", "frames")}
            | {"score": _round(combined)}
        )
        out.append(
            new_record(
                path=record["path"],
                member=record["member"],
                member_index=record["member_index"],
                frame=group.frame,
                kind="clip",
                sha256=record["sha256"],
                format=record["format"],
                width=group.width,
                height=group.height,
                score=_round(combined),
                band=bands.band(combined),
                calibrated=bands.calibrated,
                scores={k: _round(v) for k, v in member_scores.items()},
                not_applicable=None if combined is not None else "nothing to score",
                clip=clip,
            )
        )
    out.append(record)
    return out

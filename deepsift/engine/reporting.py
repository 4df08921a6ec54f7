"""Write what an evaluated split produced: metrics as JSON, CSV and Markdown, ROC and score PNGs."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepsift.core.records import CLIP_FRAMES, Record
from deepsift.engine.loops import InferenceResult
from deepsift.engine.metrics import (
    compute_metrics,
    flatten_metrics,
    metrics_table,
    to_jsonable,
    write_metrics_csv,
)

log = logging.getLogger(__name__)


def split_metrics(
    result: InferenceResult,
    records: Sequence[Record],
    video_aggregation: str = "mean",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """``compute_metrics`` over an inference result, plus the count and list of skipped files."""
    meta = result.subset(records)
    has_videos = any(v is not None for v in meta["videos"])
    metrics = compute_metrics(
        result.labels,
        result.probs,
        videos=meta["videos"] if has_videos else None,
        generators=meta["generators"],
        video_aggregation=video_aggregation,
        threshold=threshold,
    )
    # what one scored sample is: a frame (image) or a clip of one face track (clip detectors)
    metrics["unit"] = "clip" if any(CLIP_FRAMES in r.extra for r in records) else "frame"
    metrics["n_skipped"] = len(result.skipped)
    metrics["skipped"] = [{"path": p, "error": e} for p, e in result.skipped]
    return metrics


def write_split_report(
    out_dir: Path,
    split: str,
    metrics: dict[str, Any],
    result: InferenceResult,
    records: Sequence[Record],
    info: dict[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """metrics_<split>.{json,csv,md}, predictions_<split>.csv, roc_<split>.png, scores_<split>.png."""
    from deepsift.engine.plots import plot_roc, plot_score_histogram

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    payload = {"split": split, **(info or {}), "metrics": metrics}
    path = out_dir / f"metrics_{split}.json"
    path.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=True))
    written["json"] = path

    rows = {f"{split}/{name}": row for name, row in flatten_metrics(metrics).items()}
    written["csv"] = out_dir / f"metrics_{split}.csv"
    write_metrics_csv(rows, written["csv"])
    written["md"] = out_dir / f"metrics_{split}.md"
    written["md"].write_text(metrics_table(rows) + "\n")

    written["predictions"] = out_dir / f"predictions_{split}.csv"
    with written["predictions"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "generator", "video", "prob_fake"])
        for i, prob in zip(result.indices, result.probs, strict=True):
            r = records[i]
            writer.writerow([r.path, r.label, r.generator or "", r.video or "", f"{prob:.6f}"])

    if plots and len(result.labels):
        curves = {"all": (result.labels, result.probs)}
        generators = result.subset(records)["generators"]
        fakes = sorted({g for g, y in zip(generators, result.labels, strict=True) if y == 1 and g})
        if len(fakes) > 1:
            for gen in fakes:
                keep = [
                    i
                    for i, (g, y) in enumerate(zip(generators, result.labels, strict=True))
                    if y == 0 or g == gen
                ]
                curves[gen] = (result.labels[keep], result.probs[keep])
        written["roc"] = plot_roc(curves, out_dir / f"roc_{split}.png", title=f"ROC — {split}")
        written["scores"] = plot_score_histogram(
            result.labels, result.probs, out_dir / f"scores_{split}.png", title=f"Scores — {split}"
        )
    return written

"""Detection metrics shared by training, evaluation and batch scoring.

Conventions used everywhere in deepsift:

* ``labels``: 1 = fake (synthetic / manipulated), 0 = real;
* ``probs``: the detector's probability that the sample is fake, in [0, 1];
* a sample is called fake when ``prob >= threshold``.

Ranking metrics (AUC, AP, EER, TPR at a fixed FPR) come from scikit-learn and
need both classes: on a set with only reals or only fakes (or no samples) they
are NaN, and a :class:`MetricWarning` says so, instead of an exception. Bad
inputs (NaN or out-of-range probabilities, labels other than 0/1, length
mismatches) raise ``ValueError``.

Every function returns plain Python numbers (``float``/``int``, NaN allowed);
:func:`to_jsonable` converts anything numpy (or torch) produced elsewhere.
``json.dump`` writes NaN as the bare token ``NaN``, which Python's ``json``
module reads back but strict JSON parsers do not.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "DEFAULT_TABLE_KEYS",
    "METRIC_KEYS",
    "VIDEO_AGGREGATIONS",
    "MetricWarning",
    "aggregate_by_video",
    "binary_metrics",
    "calibration_bins",
    "compute_metrics",
    "flatten_metrics",
    "metrics_table",
    "to_jsonable",
    "write_metrics_csv",
]

#: The keys of :func:`binary_metrics`, in order.
METRIC_KEYS: tuple[str, ...] = (
    "auc",
    "ap",
    "eer",
    "acc",
    "acc_real",
    "acc_fake",
    "tpr_at_fpr_1pct",
    "tpr_at_fpr_0.1pct",
    "ece",
    "n",
    "n_real",
    "n_fake",
)
_RANKING_KEYS = ("auc", "ap", "eer", "tpr_at_fpr_1pct", "tpr_at_fpr_0.1pct")
_TPR_TARGETS = {"tpr_at_fpr_1pct": 0.01, "tpr_at_fpr_0.1pct": 0.001}

#: Default columns of :func:`metrics_table`.
DEFAULT_TABLE_KEYS: tuple[str, ...] = (
    "auc",
    "ap",
    "eer",
    "acc",
    "acc_real",
    "acc_fake",
    "tpr_at_fpr_1pct",
    "tpr_at_fpr_0.1pct",
    "ece",
    "n",
)

_AGGREGATORS = {"mean": np.mean, "median": np.median, "max": np.max}
#: Valid values of ``how`` in :func:`aggregate_by_video`.
VIDEO_AGGREGATIONS: tuple[str, ...] = tuple(_AGGREGATORS)


class MetricWarning(UserWarning):
    """Some metrics are undefined for this set (e.g. it holds a single class) and are NaN."""


# --------------------------------------------------------------------------- inputs


def validate_scores(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """1-D int labels in {0, 1} and float64 probabilities in [0, 1], of the same length."""
    try:
        y = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"labels must be numbers 0 (real) or 1 (fake): {exc}") from None
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"probs must be numbers in [0, 1]: {exc}") from None
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels and probs must be 1-D, got shapes {y.shape} and {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"labels and probs differ in length: {len(y)} labels, {len(p)} probs")
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"labels must be 0 (real) or 1 (fake); {int(bad.sum())} are not, the first is {y[i]!r} at index {i}"
        )
    if np.isnan(p).any():
        i = int(np.flatnonzero(np.isnan(p))[0])
        raise ValueError(
            f"probs contain {int(np.isnan(p).sum())} NaN values (the first at index {i}); "
            "check the detector's output for numerical problems"
        )
    outside = (p < 0.0) | (p > 1.0)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"probs must be probabilities in [0, 1]; {int(outside.sum())} are not, the first is {p[i]!r} "
            f"at index {i} (apply a sigmoid/softmax to logits first)"
        )
    return y.astype(np.int64), p


def _check_length(name: str, values: Sequence[Any], n: int) -> list[Any]:
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but there are {n} labels/probs")
    return values


# --------------------------------------------------------------------------- metrics


def _ratio(num: float, den: int) -> float:
    return float(num) / den if den else math.nan


def _eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where FPR and FNR = 1 - TPR cross, interpolated linearly."""
    diff = (1.0 - tpr) - fpr  # FNR - FPR: 1 at the curve's start (0, 0), -1 at its end (1, 1)
    i = int(np.argmax(diff <= 0.0))  # first ROC point at or past the crossing
    if diff[i] == 0.0 or i == 0:
        return float(fpr[i])
    d0, d1 = diff[i - 1], diff[i]
    t = d0 / (d0 - d1)  # in (0, 1]: FNR - FPR is linear along the segment
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def calibration_bins(
    labels: Any, probs: Any, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin statistics of the fake probability for ECE and reliability diagrams.

    ``bins`` equal-width bins on [0, 1]: bin ``b`` holds ``b/bins <= p < (b+1)/bins``,
    the last bin also holds ``p == 1``. Returns ``(mean_prob, frac_fake, count)``,
    each of length ``bins``; empty bins have NaN mean and fraction and count 0.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"the number of calibration bins must be an integer >= 1, got {bins!r}")
    y, p = validate_scores(labels, probs)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges[1:-1], p, side="right")
    count = np.bincount(index, minlength=bins)
    prob_sum = np.bincount(index, weights=p, minlength=bins)
    fake_sum = np.bincount(index, weights=y.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(count > 0, prob_sum / np.maximum(count, 1), np.nan)
        frac_fake = np.where(count > 0, fake_sum / np.maximum(count, 1), np.nan)
    return mean_prob, frac_fake, count


def _ece(y: np.ndarray, p: np.ndarray, bins: int) -> float:
    if len(y) == 0:
        return math.nan
    mean_prob, frac_fake, count = calibration_bins(y, p, bins)
    full = count > 0
    return float(np.sum(count[full] / len(y) * np.abs(mean_prob[full] - frac_fake[full])))


def _binary_metrics(
    labels: Any, probs: Any, threshold: float, ece_bins: int
) -> tuple[dict[str, float], str | None]:
    """The metrics, and the reason ranking metrics are undefined (``None`` when they are not)."""
    y, p = validate_scores(labels, probs)
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if isinstance(ece_bins, bool) or not isinstance(ece_bins, (int, np.integer)) or ece_bins < 1:
        raise ValueError(f"ece_bins must be an integer >= 1, got {ece_bins!r}")
    n, n_fake = len(y), int(y.sum())
    n_real = n - n_fake
    pred = (p >= threshold).astype(np.int64)
    correct = pred == y
    out: dict[str, float] = {
        "auc": math.nan,
        "ap": math.nan,
        "eer": math.nan,
        "acc": _ratio(correct.sum(), n),
        "acc_real": _ratio(correct[y == 0].sum(), n_real),
        "acc_fake": _ratio(correct[y == 1].sum(), n_fake),
        "tpr_at_fpr_1pct": math.nan,
        "tpr_at_fpr_0.1pct": math.nan,
        "ece": _ece(y, p, int(ece_bins)),
        "n": n,
        "n_real": n_real,
        "n_fake": n_fake,
    }
    if n == 0:
        return out, "the set is empty"
    if n_real == 0 or n_fake == 0:
        present, absent = ("fakes", "reals") if n_real == 0 else ("reals", "fakes")
        return out, f"the set holds only {present} ({n} samples, no {absent})"
    out["auc"] = float(roc_auc_score(y, p))
    out["ap"] = float(average_precision_score(y, p))
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    out["eer"] = _eer(fpr, tpr)
    for key, target in _TPR_TARGETS.items():
        # fpr[0] == 0, so at least one point qualifies; the tolerance absorbs k/n rounding.
        out[key] = float(tpr[fpr <= target + 1e-12].max())
    return out, None


def _undefined_message(reason: str, where: str | None = None) -> str:
    prefix = f"{where}: " if where else ""
    return (
        f"{prefix}{', '.join(_RANKING_KEYS)} are undefined (NaN) because {reason}; "
        "they need both reals and fakes"
    )


def binary_metrics(
    labels: Any, probs: Any, threshold: float = 0.5, ece_bins: int = 15
) -> dict[str, float]:
    """Detection metrics of fake probabilities ``probs`` against ``labels`` (1 = fake).

    Keys (see :data:`METRIC_KEYS`):

    * ``auc``: area under the ROC curve (``sklearn.metrics.roc_auc_score``; ties count 1/2);
    * ``ap``: average precision with fakes as positives (``average_precision_score``);
    * ``eer``: equal error rate. On the ROC curve from ``roc_curve`` (all thresholds kept),
      FNR = 1 - TPR falls and FPR rises; the EER is the error rate where they are equal,
      interpolated linearly between the two consecutive ROC points where FNR - FPR changes
      sign (exactly a point's FPR when FNR == FPR there);
    * ``acc``: accuracy when ``prob >= threshold`` means fake; ``acc_real`` and ``acc_fake``:
      the same accuracy on the reals only (specificity) and on the fakes only (recall);
    * ``tpr_at_fpr_1pct`` / ``tpr_at_fpr_0.1pct``: the highest TPR among the ROC curve's
      points whose FPR is <= 1% / 0.1%. This is the conservative operating point actually
      reachable with a threshold, not interpolated; with fewer than 100 (1000) reals it is
      the TPR at FPR = 0;
    * ``ece``: expected calibration error of the fake probability (binary, "positive-class"
      ECE, not the max-probability/confidence ECE): ``ece_bins`` equal-width bins on [0, 1]
      (see :func:`calibration_bins`), ECE = sum over bins of
      n_b / N * |mean prob_b - fraction of fakes_b|;
    * ``n``, ``n_real``, ``n_fake``: sample counts (``int``).

    With a single class or no samples, the ranking metrics (auc, ap, eer, tpr_at_*) are
    NaN and one :class:`MetricWarning` says why; accuracies and ECE are still computed
    (NaN for an absent class, NaN for everything on an empty set).

    Raises ``ValueError`` for NaN or out-of-range probabilities, labels other than 0/1,
    inputs of different lengths or that are not 1-D, a non-finite threshold, or
    ``ece_bins < 1``.
    """
    out, reason = _binary_metrics(labels, probs, threshold, ece_bins)
    if reason is not None:
        warnings.warn(_undefined_message(reason), MetricWarning, stacklevel=2)
    return out


# --------------------------------------------------------------------------- videos


def aggregate_by_video(
    labels: Any, probs: Any, videos: Sequence[Hashable], how: str = "mean"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One label and one fake probability per video from per-frame ones.

    ``how`` is ``"mean"`` (default), ``"median"`` or ``"max"`` of the video's frame
    probabilities. Returns ``(video_labels, video_probs, video_ids)`` with the videos in
    the order of their first frame. Raises ``ValueError`` for an unknown ``how``, a video
    whose frames carry different labels, a missing (``None``) video id, or lengths that
    do not match.
    """
    if how not in _AGGREGATORS:
        raise ValueError(
            f"unknown video aggregation {how!r}; valid ones: {', '.join(VIDEO_AGGREGATIONS)}"
        )
    y, p = validate_scores(labels, probs)
    videos = _check_length("videos", videos, len(y))
    codes: dict[Hashable, int] = {}
    for i, video in enumerate(videos):
        if video is None:
            raise ValueError(f"frame {i} has no video id (None); every frame needs one")
        codes.setdefault(video, len(codes))
    ids = list(codes)
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64), []
    inverse = np.fromiter((codes[v] for v in videos), dtype=np.int64, count=len(videos))
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(ids)))
    frame_labels = np.split(y[order], starts[1:])
    frame_probs = np.split(p[order], starts[1:])
    aggregate = _AGGREGATORS[how]
    video_labels = np.empty(len(ids), dtype=np.int64)
    video_probs = np.empty(len(ids), dtype=np.float64)
    for k, (vy, vp) in enumerate(zip(frame_labels, frame_probs, strict=True)):
        if vy.min() != vy.max():
            raise ValueError(
                f"video {ids[k]!r} has frames labelled both real and fake "
                f"({int((vy == 0).sum())} real, {int((vy == 1).sum())} fake); "
                "a video must have a single label"
            )
        video_labels[k] = vy[0]
        video_probs[k] = float(aggregate(vp))
    return video_labels, video_probs, ids


# --------------------------------------------------------------------------- splits


def compute_metrics(
    labels: Any,
    probs: Any,
    videos: Sequence[Hashable | None] | None = None,
    generators: Sequence[str | None] | None = None,
    video_aggregation: str = "mean",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Frame-level, video-level and per-generator metrics of one evaluated set.

    Returns ``{"frame": ..., "video": ..., "by_generator": {name: ...}}`` where each value
    is a :func:`binary_metrics` dict:

    * ``frame``: every sample;
    * ``video``: only when ``videos`` is given and names at least one video. Frame
      probabilities are aggregated per video with ``video_aggregation`` (see
      :func:`aggregate_by_video`); samples whose video id is ``None`` (stills in a
      mixed set) are left out of the video-level metrics;
    * ``by_generator``: the standard cross-generator protocol. ``generators`` names each
      sample's generator (reals are ``"real"`` or ``None``; a sample is real by its label).
      When the fakes come from more than one named generator, each generator's entry is
      computed on **all reals of the set plus that generator's fakes** (so every entry's
      ``n_real`` is the set's ``n_real``); fakes with no generator name (``None``) only count
      in ``frame``. Empty (``{}``) when ``generators`` is not given or the fakes come from
      a single generator (the entry would repeat ``frame``). Frame level only.

    Metrics that are undefined anywhere (a single-class set or generator subset) raise
    at most one :class:`MetricWarning`, naming the levels affected.
    """
    y, p = validate_scores(labels, probs)
    if video_aggregation not in _AGGREGATORS:
        raise ValueError(
            f"unknown video aggregation {video_aggregation!r}; valid ones: {', '.join(VIDEO_AGGREGATIONS)}"
        )
    reasons: list[str] = []
    frame, reason = _binary_metrics(y, p, threshold, 15)
    if reason:
        reasons.append(_undefined_message(reason, "frame level"))
    out: dict[str, Any] = {"frame": frame}

    if videos is not None:
        videos = _check_length("videos", videos, len(y))
        keep = np.array([v is not None for v in videos], dtype=bool)
        if keep.any():
            kept_videos = [v for v in videos if v is not None]
            vy, vp, _ = aggregate_by_video(y[keep], p[keep], kept_videos, how=video_aggregation)
            out["video"], reason = _binary_metrics(vy, vp, threshold, 15)
            if reason and not reasons:  # a single-class frame level already said it
                reasons.append(_undefined_message(reason, "video level"))

    by_generator: dict[str, dict[str, float]] = {}
    if generators is not None:
        generators = _check_length("generators", generators, len(y))
        # Generator of each fake, None for reals: a sample is real or fake by its label.
        fake_gens = np.array(
            [
                None if label == 0 or g is None else str(g)
                for g, label in zip(generators, y, strict=True)
            ],
            dtype=object,
        )
        if any(g == "real" for g in fake_gens):
            i = next(i for i, g in enumerate(fake_gens) if g == "real")
            raise ValueError(
                f"sample {i} is labelled fake but its generator is 'real'; check the dataset's labels"
            )
        names = sorted({g for g in fake_gens if g is not None})
        if len(names) > 1:
            # Without reals every entry is single-class, which the frame-level warning covers.
            real = y == 0
            for name in names:
                keep = real | (fake_gens == name)
                by_generator[name], _ = _binary_metrics(y[keep], p[keep], threshold, 15)
    out["by_generator"] = by_generator

    if reasons:
        warnings.warn("; ".join(reasons), MetricWarning, stacklevel=2)
    return out


# --------------------------------------------------------------------------- output


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Rows for tables and CSV from a :func:`compute_metrics` result.

    ``{"frame": ..., "video": ..., "frame/<generator>": ...}``; other keys (e.g. a list of
    skipped files added by the caller) are ignored.
    """
    rows: dict[str, dict[str, float]] = {}
    for level in ("frame", "video"):
        if isinstance(metrics.get(level), Mapping):
            rows[level] = dict(metrics[level])
    for name, row in (metrics.get("by_generator") or {}).items():
        rows[f"frame/{name}"] = dict(row)
    return rows


def _format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{float(value):.4f}"
    return str(value)


def metrics_table(
    results: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = DEFAULT_TABLE_KEYS
) -> str:
    """A Markdown table: one row per named result, one column per metric key.

    Floats have 4 decimals, integers (counts) none; NaN and missing keys show as ``n/a``.
    Columns are padded so the table also reads well printed in a terminal.
    """
    header = ["", *keys]
    body = [
        [str(name).replace("|", "\\|"), *(_format_value(row.get(k)) for k in keys)]
        for name, row in results.items()
    ]
    widths = [max(3, *(len(r[c]) for r in [header, *body])) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True))
        return "| " + " | ".join([first, *rest]) + " |"

    rule = "| " + " | ".join(["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def write_metrics_csv(rows: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows (e.g. from :func:`flatten_metrics`) as CSV: a ``name`` column, then the keys.

    Columns are the union of the rows' keys in first-seen order; values are written at full
    precision, NaN as ``nan`` and missing values as empty cells.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows.values():
        columns.extend(k for k in row if k not in columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", *columns])
        for name, row in rows.items():
            writer.writerow([name, *(to_jsonable(row.get(k, "")) for k in columns)])
    return path


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy (and torch) values to Python types for ``json.dump``.

    Scalars become ``int``/``float``/``bool``, arrays and tensors lists, tuples and sets
    lists, paths strings, mapping keys strings. NaN stays ``float('nan')``.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return to_jsonable(obj.tolist())
    return obj

"""A run's metrics next to the numbers a paper published: ours, published, delta, within tolerance.

Pure: a published table (one entry of ``configs/published/<paper>.yaml``, as plain data)
and the run's metrics per test set (:func:`deepsift.engine.metrics.compute_metrics`
dicts) in; rows, a Markdown table, CSV and a PNG out. Nothing here reads configs.

A published table::

    {"paper": ..., "table": ..., "checkpoint": ..., "source": ..., "scale": 100,
     "level": "frame", "results": {"<test set>": {"<metric>": <value>, ...}, ...}}

``scale`` says how the authors wrote their numbers (100: percent, 1: fractions);
``level`` which of our levels (``frame`` or ``video``) the paper's metric is. Every
published number becomes one row, also when we have nothing to compare it with: a
test set that was not evaluated is a ``missing`` row with the reason, never dropped.
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepsift.engine.metrics import to_jsonable

__all__ = [
    "COLUMNS",
    "DEFAULT_TOLERANCE",
    "POINT_METRICS",
    "compare",
    "markdown",
    "summarise",
    "tolerance_fraction",
    "write_reproduction",
]

#: Tolerances in the units people quote: accuracy and AP in percentage points, AUC
#: (and any other metric) as a fraction, e.g. 0.005 AUC.
DEFAULT_TOLERANCE: dict[str, float] = {"acc": 0.5, "ap": 0.5, "auc": 0.005}
#: Metrics whose tolerance is in percentage points.
POINT_METRICS = frozenset({"acc", "acc_real", "acc_fake", "ap", "tpr_at_fpr_1pct"})
_FALLBACK_TOLERANCE = 0.005

#: The columns of reproduction.csv and of each row in reproduction.json.
COLUMNS: tuple[str, ...] = (
    "test_set",
    "metric",
    "level",
    "ours",
    "published",
    "delta",
    "tolerance",
    "within",
    "status",
    "reason",
    "n",
    "source",
)


def tolerance_fraction(metric: str, tolerance: Mapping[str, float] | None = None) -> float:
    """The tolerance of ``metric`` as a fraction of 1 (points / 100 for acc and AP)."""
    table = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    value = float(table.get(metric, _FALLBACK_TOLERANCE))
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"reproduce.tolerance.{metric} must be a number >= 0, got {value!r}")
    return value / 100.0 if metric in POINT_METRICS else value


def _ours(metrics: Mapping[str, Any], level: str, metric: str) -> tuple[float | None, int, str]:
    """Our value (a fraction), the sample count at that level, and why it is absent."""
    row = metrics.get(level)
    if not isinstance(row, Mapping):
        return None, 0, f"no {level}-level metrics (the set has no video ids)"
    value = row.get(metric)
    n = int(row.get("n", 0) or 0)
    if value is None:
        return None, n, f"metric {metric!r} not computed"
    value = float(value)
    if math.isnan(value):
        return None, n, f"{metric} undefined (NaN): the set needs both reals and fakes"
    return value, n, ""


def compare(
    published: Mapping[str, Any],
    results: Mapping[str, Mapping[str, Any]],
    missing: Mapping[str, str] | None = None,
    tolerance: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per published number, in the published table's order.

    ``results`` maps a test-set name of the table to our metrics of that set;
    ``missing`` maps a test-set name to why it was not evaluated (e.g. no root).
    Values in a row are on the published scale (percent when the paper wrote percent);
    ``delta`` is ours - published; ``within`` is ``|delta| <= tolerance`` (``None``
    when nothing was compared). ``status``: ``within``, ``outside``, ``missing``
    (not evaluated) or ``undefined`` (evaluated, but the metric is NaN or absent).
    """
    missing = dict(missing or {})
    scale = float(published.get("scale", 1))
    if scale not in (1.0, 100.0):
        raise ValueError(f"published scale must be 1 (fractions) or 100 (percent), got {scale!r}")
    level = str(published.get("level", "frame"))
    source = str(published.get("source", ""))
    entries = published.get("results") or {}
    if not entries:
        raise ValueError(f"published table {published.get('table', '?')!r} has no results")
    rows: list[dict[str, Any]] = []
    for test_set, values in entries.items():
        for metric, value in values.items():
            tol = tolerance_fraction(metric, tolerance)
            row: dict[str, Any] = {
                "test_set": str(test_set),
                "metric": str(metric),
                "level": level,
                "ours": None,
                "published": float(value),
                "delta": None,
                "tolerance": tol * scale,
                "within": None,
                "status": "missing",
                "reason": "",
                "n": 0,
                "source": source,
            }
            if test_set in missing:
                row["reason"] = missing[test_set]
            elif test_set not in results:
                row["reason"] = "not evaluated (no eval_data entry for this test set)"
            else:
                ours, n, reason = _ours(results[test_set], level, str(metric))
                row["n"] = n
                if ours is None:
                    row.update(status="undefined", reason=reason)
                else:
                    delta = ours * scale - float(value)
                    within = abs(delta) <= tol * scale + 1e-9
                    row.update(
                        ours=ours * scale,
                        delta=delta,
                        within=within,
                        status="within" if within else "outside",
                    )
            rows.append(row)
    return rows


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts of rows by status, plus how many were compared."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("within", "outside")}
    counts.update({s: sum(r["status"] == s for r in rows) for s in ("missing", "undefined")})
    return {"rows": len(rows), "compared": counts["within"] + counts["outside"], **counts}


def _number(value: Any, scale: float) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if scale == 100.0 else f"{value:.4f}"


def _signed(value: Any, scale: float) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f}" if scale == 100.0 else f"{value:+.4f}"


def markdown(published: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The table a reviewer pastes: a header naming paper, table, checkpoint and source."""
    scale = float(published.get("scale", 1))
    unit = "%" if scale == 100.0 else "fraction of 1"
    lines = [
        f"**{published.get('paper', '?')}** — {published.get('table', '?')}",
        "",
        f"- checkpoint: `{published.get('checkpoint', '?')}`",
        f"- source of the published numbers: {published.get('source', '?')}",
    ]
    if published.get("protocol"):
        lines.append(f"- protocol: {published['protocol']}")
    if "weights" in published:
        weights = published["weights"]
        lines.append(
            f"- weights evaluated: `{weights}`" if weights else "- weights: none (untrained)"
        )
    lines += [f"- values in {unit}; level: {published.get('level', 'frame')}", ""]
    lines.append("| test set | metric | ours | published | delta | tolerance | within | n |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | :---: | ---: |")
    for r in rows:
        if r["status"] in ("missing", "undefined"):
            verdict = f"{r['status']}: {r['reason']}".replace("|", "\\|")
        else:
            verdict = "yes" if r["within"] else "**no**"
        lines.append(
            f"| {r['test_set']} | {r['metric']} | {_number(r['ours'], scale)} "
            f"| {_number(r['published'], scale)} | {_signed(r['delta'], scale)} "
            f"| ±{_number(r['tolerance'], scale)} | {verdict} | {r['n'] or '—'} |"
        )
    s = summarise(rows)
    lines += [
        "",
        f"{s['within']} of {s['compared']} compared numbers within tolerance; "
        f"{s['missing']} missing, {s['undefined']} undefined, of {s['rows']} published.",
    ]
    return "\n".join(lines) + "\n"


def plot_deltas(
    published: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], path: str | Path
) -> Path:
    """Horizontal bars of ours - published per test set and metric, the tolerance shaded;
    missing and undefined rows are listed on the axis with no bar."""
    from deepsift.engine.plots import new_figure, save_figure

    fig = new_figure(6.5, max(2.5, 0.3 * len(rows) + 1.4))
    ax = fig.add_subplot()
    colours = {"within": "C2", "outside": "C3"}
    labels = []
    for y, r in enumerate(rows):
        label = f"{r['test_set']} {r['metric']}"
        if r["delta"] is None:
            label += f" ({r['status']})"
        else:
            ax.barh(y, r["delta"], color=colours[r["status"]])
        labels.append(label)
    tol = max((r["tolerance"] for r in rows), default=0.0)
    ax.axvspan(-tol, tol, color="0.85", zorder=0, label=f"±{tol:g} (largest tolerance)")
    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    scale = float(published.get("scale", 1))
    ax.set_xlabel("ours − published" + (" (points)" if scale == 100.0 else ""))
    ax.legend(fontsize=7, loc="lower right")
    title = f"{published.get('table', '')} — {published.get('paper', '')}"
    ax.set_title(textwrap.fill(title, 90), fontsize=7)
    return save_figure(fig, path)


def write_reproduction(
    out_dir: str | Path,
    published: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    plots: bool = True,
) -> dict[str, Path]:
    """reproduction.{json,md,csv} and, with ``plots``, reproduction.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "json": out / "reproduction.json",
        "md": out / "reproduction.md",
        "csv": out / "reproduction.csv",
    }
    header = {k: v for k, v in published.items() if k != "results"}
    payload = {**header, "summary": summarise(rows), "rows": list(rows)}
    written["json"].write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=True))
    written["md"].write_text(markdown(published, rows))
    with written["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(["" if r[c] is None else r[c] for c in COLUMNS])
    if plots and rows:
        written["png"] = plot_deltas(published, rows, out / "reproduction.png")
    return written

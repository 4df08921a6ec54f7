"""Seeds and detectors side by side: one table from many runs.

    python report.py <run or multirun dirs...> [--out DIR] [--metrics auc ap eer]
                     [--splits test] [--levels frame video generators]

Every ``metrics_<split>.json`` under the given folders (a run directory, a multirun
folder, or a tree of them) is one measurement; its run's resolved config
(``.hydra/config.yaml`` beside it) says what was run. Runs whose configs are equal
once the seed and the run's bookkeeping (output paths, logger, Hydra's own node) are
set aside form one **group**; a group's rows are the mean ± sample standard deviation
(``ddof=1``) over its seeds, with the seeds listed. Runs that differ in anything else
are never averaged together: they become separate groups, and the report names the
config keys that tell the groups apart. Two runs of one group with the same seed are
an error (a run copied twice would count double).

Writes ``report.md`` (the table a reviewer pastes), ``report.csv`` and ``report.json``
(one row per group × test set × metric, with every seed's value) and
``leaderboard.png`` (the first metric on each test set, mean ± std per group) into
``--out`` (default: the current folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsift.core.errors import UserError

#: config keys that do not change what a run measures (besides the seed)
IGNORED_KEYS = ("seed", "paths", "logger", "hydra", "resume")
DEFAULT_METRICS = ("auc", "ap", "eer", "tpr_at_fpr_1pct")


@dataclass
class Measurement:
    path: Path
    split: str
    seed: int | None
    detector: str | None
    data: str | None
    config: dict[str, Any]
    rows: dict[str, dict[str, float]]


@dataclass
class Group:
    label: str
    config: dict[str, Any]
    runs: list[Measurement] = field(default_factory=list)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _identity(config: Mapping[str, Any]) -> dict[str, Any]:
    flat = _flat(dict(config))
    return {
        k: v
        for k, v in flat.items()
        if not any(k == key or k.startswith(key + ".") for key in IGNORED_KEYS)
    }


def _rows(metrics: Mapping[str, Any], levels: Sequence[str]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for level in ("frame", "video"):
        if level in levels and isinstance(metrics.get(level), Mapping):
            rows[level] = dict(metrics[level])
    if "generators" in levels:
        for name, row in (metrics.get("by_generator") or {}).items():
            rows[f"frame/{name}"] = dict(row)
    return rows


def find_measurements(
    roots: Iterable[str | Path], splits: Sequence[str] | None, levels: Sequence[str]
) -> list[Measurement]:
    """Every ``metrics_<split>.json`` under ``roots`` (skipping ``--out``-style reports)."""
    import yaml

    found: list[Measurement] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise UserError(f"{root} does not exist; pass run directories or multirun folders")
        for path in sorted(root.rglob("metrics_*.json")):
            split = path.stem.removeprefix("metrics_")
            if splits and split not in splits:
                continue
            payload = json.loads(path.read_text())
            config_file = path.parent / ".hydra" / "config.yaml"
            config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
            seed = payload.get("seed", (config or {}).get("seed"))
            found.append(
                Measurement(
                    path=path,
                    split=split,
                    seed=None if seed is None else int(seed),
                    detector=payload.get("detector"),
                    data=payload.get("data"),
                    config=config or {},
                    rows=_rows(payload.get("metrics") or {}, levels),
                )
            )
    if not found:
        raise UserError(
            f"no metrics_<split>.json under {', '.join(map(str, roots))}; pass the run "
            "directories of train.py or evaluate.py (or their multirun folder)"
        )
    return found


def group_runs(measurements: Sequence[Measurement]) -> tuple[list[Group], list[str]]:
    """Groups of runs that differ only in the seed, and the config keys that differ between groups."""
    groups: list[Group] = []
    for m in measurements:
        identity = {**_identity(m.config), "__detector": m.detector, "__data": m.data}
        for group in groups:
            if group.config == identity:
                group.runs.append(m)
                break
        else:
            groups.append(Group(label="", config=identity, runs=[m]))
    keys = sorted({k for g in groups for k in g.config})
    differing = [
        k for k in keys if len({json.dumps(g.config.get(k), sort_keys=True) for g in groups}) > 1
    ]
    shown = [k for k in differing if not k.startswith("__")]
    for group in groups:
        name = group.config.get("__detector") or "?"
        extra = ", ".join(
            f"{k}={group.config.get(k)}" for k in shown if k not in ("detector._target_",)
        )
        group.label = f"{name} [{extra}]" if extra else str(name)
    labels = [g.label for g in groups]
    if len(set(labels)) < len(labels):  # same visible label: number them
        for i, group in enumerate(groups):
            group.label = f"{group.label} #{i + 1}"
    for group in groups:
        seen: dict[tuple[str, int | None], Path] = {}
        for m in group.runs:
            key = (m.split, m.seed)
            if key in seen and m.seed is not None:
                raise UserError(
                    f"{m.path} and {seen[key]} are the same run (seed {m.seed}, split {m.split}, "
                    "same config); pass each run once"
                )
            seen[key] = m.path
    return groups, [k for k in differing if not k.startswith("__")]


def summarise(groups: Sequence[Group], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per group × test set × metric: mean, std (ddof=1), n, seeds, values."""
    out = []
    for group in groups:
        cells: dict[tuple[str, str], dict[str, float]] = {}
        for m in group.runs:
            for level, row in m.rows.items():
                test_set = f"{m.data or '?'}/{m.split}" + ("" if level == "frame" else f"/{level}")
                cells.setdefault((test_set, "__seeds"), {})[str(m.seed)] = 0.0
                for metric in metrics:
                    value = row.get(metric)
                    if isinstance(value, (int, float)):
                        cells.setdefault((test_set, metric), {})[str(m.seed)] = float(value)
        for (test_set, metric), by_seed in sorted(cells.items()):
            if metric == "__seeds":
                continue
            values = np.array([v for v in by_seed.values() if not math.isnan(v)])
            out.append(
                {
                    "group": group.label,
                    "test_set": test_set,
                    "metric": metric,
                    "mean": float(values.mean()) if len(values) else float("nan"),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                    "n": len(values),
                    "seeds": sorted(by_seed, key=lambda s: (s == "None", s)),
                    "values": by_seed,
                }
            )
    return out


def _cell(row: Mapping[str, Any]) -> str:
    if math.isnan(row["mean"]):
        return "—"
    if row["n"] > 1:
        return f"{row['mean']:.3f} ± {row['std']:.3f}"
    return f"{row['mean']:.3f}"


def markdown(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], differing: Sequence[str]
) -> str:
    lines = ["| group | test set | seeds | " + " | ".join(metrics) + " |"]
    lines.append("|---|---|---|" + "---:|" * len(metrics))
    table: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        table.setdefault((row["group"], row["test_set"]), {})[row["metric"]] = row
    for (group, test_set), by_metric in table.items():
        seeds = next(iter(by_metric.values()))["seeds"]
        cells = [_cell(by_metric[m]) if m in by_metric else "—" for m in metrics]
        lines.append(f"| {group} | {test_set} | {', '.join(seeds)} | " + " | ".join(cells) + " |")
    note = (
        "\nGroups differ in: " + ", ".join(differing) + " (never averaged together)."
        if differing
        else ""
    )
    return "\n".join(lines) + "\n\nmean ± std (ddof=1) over seeds." + note + "\n"


def leaderboard(rows: Sequence[Mapping[str, Any]], metric: str, path: Path) -> Path | None:
    from deepsift.engine.plots import bar_chart

    chosen = [r for r in rows if r["metric"] == metric and not math.isnan(r["mean"])]
    if not chosen:
        return None
    return bar_chart(
        {(r["group"], r["test_set"]): (r["mean"], r["std"]) for r in chosen},
        path,
        ylabel=metric,
        title=f"{metric}: mean ± std over seeds",
    )


def write_report(
    roots: Sequence[str | Path],
    out: str | Path = ".",
    metrics: Sequence[str] = DEFAULT_METRICS,
    splits: Sequence[str] | None = None,
    levels: Sequence[str] = ("frame",),
) -> dict[str, Path]:
    measurements = find_measurements(roots, splits, levels)
    groups, differing = group_runs(measurements)
    rows = summarise(groups, metrics)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"md": out / "report.md", "csv": out / "report.csv", "json": out / "report.json"}
    text = markdown(rows, metrics, differing)
    written["md"].write_text(text)
    with written["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "test_set", "metric", "mean", "std", "n", "seeds"])
        for r in rows:
            writer.writerow(
                [
                    r["group"],
                    r["test_set"],
                    r["metric"],
                    r["mean"],
                    r["std"],
                    r["n"],
                    " ".join(r["seeds"]),
                ]
            )
    payload = {
        "groups": [
            {
                "label": g.label,
                "runs": [str(m.path) for m in g.runs],
                "seeds": sorted({str(m.seed) for m in g.runs}),
            }
            for g in groups
        ],
        "differing_keys": differing,
        "rows": rows,
    }
    written["json"].write_text(json.dumps(payload, indent=2, allow_nan=True))
    png = leaderboard(rows, metrics[0], out / "leaderboard.png")
    if png is not None:
        written["png"] = png
    print(text, flush=True)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python report.py",
        description="Mean ± std over seeds for each detector × test set × metric.",
    )
    parser.add_argument("runs", nargs="+", help="run directories or multirun folders")
    parser.add_argument("--out", default=".", help="folder for report.{md,csv,json,png}")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--splits", nargs="*", default=None, help="default: every split found")
    parser.add_argument(
        "--levels", nargs="+", default=["frame"], choices=("frame", "video", "generators")
    )
    args = parser.parse_args(argv)
    write_report(args.runs, args.out, args.metrics, args.splits, args.levels)

"""Robustness sweeps: the metrics of one evaluated set under each level of each perturbation.

A sweep is a list of :class:`Family` (one figure each: JPEG, blur, ...), each an ordered
list of :class:`Level` (a label for tables and plots, and a perturbation spec of
:mod:`deepsift.core.perturb`). :func:`parse_families` reads them from a
``configs/robustness`` preset; :func:`run_sweep` evaluates every distinct perturbation once
(through a caller-supplied ``evaluate(perturbation) -> metrics`` function, so one sweep
serves ``run_inference`` on one process or many) and the identity levels (``none``,
``blur:0``, ``resize:1``...) reuse the plain evaluation's metrics when given them, or run
the plain evaluation otherwise: either way they equal it exactly.
:func:`write_robustness_report` writes ``robustness_<split>.{json,csv,md}`` and one
``robustness_<split>_<family>.png`` per family (the metric against the level, one curve
for the whole set and one per generator).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsift.core.errors import UserError
from deepsift.core.perturb import KINDS, Perturbation, parse_perturbation
from deepsift.engine.metrics import (
    DEFAULT_TABLE_KEYS,
    METRIC_KEYS,
    flatten_metrics,
    metrics_table,
    to_jsonable,
    write_metrics_csv,
)

__all__ = [
    "AXIS_LABELS",
    "Family",
    "Level",
    "check_metric",
    "parse_families",
    "run_sweep",
    "sweep_curves",
    "write_robustness_report",
]


#: axis labels of the single-kind families
AXIS_LABELS = {
    "jpeg": "JPEG quality (Pillow)",
    "webp": "WebP quality (Pillow)",
    "blur": "Gaussian blur σ (pixels)",
    "noise": "Gaussian noise σ (0-255)",
    "resize": "resize scale (new size kept)",
    "resize_back": "resize scale, then back to the original size",
    "crop": "centre-crop fraction of each side",
}


@dataclass(frozen=True)
class Level:
    """One point of a family: its tick ``label`` and its perturbation ``spec``."""

    label: str
    spec: str

    @property
    def is_identity(self) -> bool:
        return not parse_perturbation(self.spec)


@dataclass(frozen=True)
class Family:
    """A perturbation family: one figure, levels in plotting order."""

    name: str
    levels: tuple[Level, ...]
    kind: str | None = None

    @property
    def axis(self) -> str:
        return (
            AXIS_LABELS.get(self.kind, self.kind)
            if self.kind
            else "perturbation (applied left to right)"
        )


def _level(kind: str | None, option: str | None, value: Any, where: str) -> Level:
    if value is None or str(value).strip().lower() in ("none", "null", ""):
        return Level("none", "none")
    if isinstance(value, bool):
        raise UserError(f"{where}: level {value!r} is neither a number nor a perturbation spec")
    if isinstance(value, (int, float)):
        if kind is None:
            raise UserError(
                f"{where}: numeric level {value!r} needs the family's kind (set {where}.kind=<{'|'.join(KINDS)}>) or a spec such as jpeg:{value}"
            )
        label = f"{value:g}"
        spec = f"{kind}:{value}" + (f":{option}" if option else "")
        return Level(label, spec)
    text = str(value).strip()
    if kind is not None and ":" not in text and "+" not in text and text.lower() not in KINDS:
        return Level(text, f"{kind}:{text}" + (f":{option}" if option else ""))
    return Level(text, text)


def parse_families(families: Mapping[str, Any], where: str = "robustness.families") -> list[Family]:
    """Families from a preset's ``families`` mapping; every spec is checked now.

    Each entry is ``{kind: <perturbation kind>, levels: [...], option: <resize filter>}``
    where a level is a number (the kind's value: ``jpeg`` + ``50`` is ``jpeg:50``), ``none``
    (the unchanged image), or a whole spec (``blur:2+jpeg:50``; ``kind`` may then be left
    out). An unknown kind, a bad value or a duplicate label raises one :class:`UserError`
    line naming the option.
    """
    if not families:
        raise UserError(f"{where} is empty: a robustness preset needs at least one family")
    out = []
    for name, entry in families.items():
        key = f"{where}.{name}"
        if not isinstance(entry, Mapping):
            raise UserError(f"{key} must be a mapping with levels (and kind), got {entry!r}")
        kind = entry.get("kind")
        kind = str(kind).strip().lower() if kind is not None else None
        if kind is not None and (kind not in KINDS or kind == "none"):
            valid = ", ".join(k for k in KINDS if k != "none")
            raise UserError(
                f"{key}.kind: {entry.get('kind')!r} is not a perturbation; valid names: {valid}"
            )
        option = entry.get("option")
        levels_in = entry.get("levels")
        if (
            not levels_in
            or isinstance(levels_in, (str, bytes))
            or not isinstance(levels_in, Sequence)
        ):
            raise UserError(f"{key}.levels must be a non-empty list, got {levels_in!r}")
        levels = []
        for value in levels_in:
            level = _level(kind, str(option) if option else None, value, key)
            try:
                Perturbation(level.spec)
            except UserError as exc:
                raise UserError(f"{key}.levels: {exc}") from None
            levels.append(level)
        labels = [lv.label for lv in levels]
        duplicated = sorted({x for x in labels if labels.count(x) > 1})
        if duplicated:
            raise UserError(f"{key}.levels: duplicate level {', '.join(duplicated)}")
        out.append(Family(str(name), tuple(levels), kind))
    return out


def check_metric(metric: str, where: str = "robustness.metric") -> str:
    """``metric`` if it is a key of :func:`deepsift.engine.metrics.binary_metrics`."""
    if metric not in METRIC_KEYS:
        raise UserError(
            f"{where}: {metric!r} is not a metric; valid ones: {', '.join(METRIC_KEYS)}"
        )
    return metric


def run_sweep(
    families: Sequence[Family],
    evaluate: Callable[[Perturbation | None], dict[str, Any]],
    seed: int = 0,
    baseline: dict[str, Any] | None = None,
    on_level: Callable[[Family, Level], None] | None = None,
) -> dict[str, Any]:
    """Metrics of every level: ``{"seed", "families": {name: {"kind", "levels": [...]}}}``.

    ``evaluate(None)`` is the plain evaluation and ``evaluate(perturbation)`` the same under a
    :class:`Perturbation`; each returns a ``split_metrics``-like dict. Every distinct
    perturbation is evaluated once (``none`` in every family costs nothing more); identity
    levels take ``baseline`` when given. Per level, the list of skipped files is dropped
    (the plain evaluation's report has it); its count stays.
    """
    cache: dict[str, dict[str, Any]] = {}
    if baseline is not None:
        cache["none"] = baseline
    out: dict[str, Any] = {}
    for family in families:
        rows = []
        for level in family.levels:
            perturbation = Perturbation(level.spec, seed)
            key = str(perturbation)
            if key not in cache:
                if on_level is not None:
                    on_level(family, level)
                cache[key] = evaluate(None if perturbation.is_identity else perturbation)
            metrics = {k: v for k, v in cache[key].items() if k != "skipped"}
            rows.append(
                {"label": level.label, "spec": level.spec, "perturbation": key, "metrics": metrics}
            )
        out[family.name] = {"kind": family.kind, "levels": rows}
    return {"seed": int(seed), "families": out}


def sweep_curves(sweep: Mapping[str, Any], family: str, metric: str) -> dict[str, list[float]]:
    """``{"all": [...], <generator>: [...]}``: ``metric`` at each level of ``family``."""
    levels = sweep["families"][family]["levels"]
    curves: dict[str, list[float]] = {"all": [lv["metrics"]["frame"][metric] for lv in levels]}
    generators = sorted({g for lv in levels for g in lv["metrics"].get("by_generator", {})})
    nan = float("nan")
    for gen in generators:
        curves[gen] = [
            lv["metrics"].get("by_generator", {}).get(gen, {}).get(metric, nan) for lv in levels
        ]
    return curves


def write_robustness_report(
    out_dir: Path,
    split: str,
    sweep: Mapping[str, Any],
    families: Sequence[Family],
    metric: str = "ap",
    info: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """robustness_<split>.{json,csv,md} and robustness_<split>_<family>.png per family."""
    from deepsift.engine.plots import plot_robustness

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    payload = {"split": split, **(info or {}), "metric": metric, **sweep}
    written["json"] = out_dir / f"robustness_{split}.json"
    written["json"].write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=True))

    csv_rows: dict[str, dict[str, Any]] = {}
    sections = []
    for family in families:
        levels = sweep["families"][family.name]["levels"]
        table: dict[str, dict[str, Any]] = {}
        by_gen: dict[str, dict[str, Any]] = {}
        for lv in levels:
            for group, row in flatten_metrics(lv["metrics"]).items():
                name = f"{family.name}/{lv['label']}/{group}"
                csv_rows[name] = {
                    "family": family.name,
                    "level": lv["label"],
                    "perturbation": lv["perturbation"],
                    "group": group,
                    **row,
                    "n_skipped": lv["metrics"].get("n_skipped", 0),
                }
            table[lv["label"]] = lv["metrics"]["frame"]
            if lv["metrics"].get("by_generator"):
                by_gen[lv["label"]] = {
                    g: m[metric] for g, m in lv["metrics"]["by_generator"].items()
                }
        text = f"### {family.name}: {family.axis}\n\n{metrics_table(table, DEFAULT_TABLE_KEYS)}\n"
        if by_gen:
            gens = sorted({g for row in by_gen.values() for g in row})
            text += f"\n{metric} by generator:\n\n{metrics_table(by_gen, gens)}\n"
        sections.append(text)
        if plots:
            written[f"png/{family.name}"] = plot_robustness(
                [lv["label"] for lv in levels],
                sweep_curves(sweep, family.name, metric),
                out_dir / f"robustness_{split}_{family.name}.png",
                metric=metric,
                xlabel=family.axis,
                title=f"{family.name} — {split}",
            )
    written["csv"] = write_metrics_csv(csv_rows, out_dir / f"robustness_{split}.csv")
    preset = (info or {}).get("preset")
    head = f"## Robustness — {split}" + (f" ({preset})" if preset else "")
    written["md"] = out_dir / f"robustness_{split}.md"
    written["md"].write_text(head + "\n\n" + "\n".join(sections))
    return written

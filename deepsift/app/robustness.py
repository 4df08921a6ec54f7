"""``evaluate.py ... robustness=<preset>``: robustness sweeps over every evaluated set.

A ``configs/robustness`` preset names families of test-time perturbations (see
:mod:`deepsift.core.perturb` for the perturbations and :mod:`deepsift.engine.robustness`
for the sweep); each split (and each ``eval_data`` set) is evaluated once more per distinct
level, the same images degraded the same way for reals and fakes, and the run directory
gets ``robustness_<split>.{json,csv,md}``, ``robustness_<split>_<family>.png`` and, when
more than one set was swept, ``robustness_<family>.png`` with one curve per set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from deepsift.app.pipeline import Context, config_choice, evaluate_split
from deepsift.core import distributed as dist
from deepsift.core.errors import UserError
from deepsift.core.perturb import Perturbation
from deepsift.core.records import Record
from deepsift.engine.plots import plot_robustness
from deepsift.engine.robustness import (
    Family,
    check_metric,
    parse_families,
    run_sweep,
    sweep_curves,
    write_robustness_report,
)

log = logging.getLogger(__name__)


class Sweeper:
    """The preset of a run, checked before any image is scored; sweeps split after split."""

    def __init__(self, cfg: DictConfig) -> None:
        node = cfg.robustness
        if not isinstance(node, DictConfig):
            raise UserError(
                "robustness must be a preset (robustness=<name>, see configs/robustness) or null"
            )
        self.cfg = cfg
        self.preset = config_choice("robustness") or str(node.get("name") or "custom")
        families = OmegaConf.to_container(node.get("families"), resolve=True)
        self.families: list[Family] = parse_families(families or {})
        self.metric = check_metric(str(node.get("metric", "ap")))
        seed = node.get("seed")
        self.seed = int(cfg.get("seed", 0) if seed is None else seed)
        self.swept: dict[str, dict[str, Any]] = {}

    def sweep(
        self,
        detector: Any,
        records: Sequence[Record],
        ctx: Context,
        split: str,
        baseline: dict[str, Any],
        info: dict[str, Any],
    ) -> dict[str, Any]:
        """Sweep one evaluated set (``baseline``: its plain metrics) and write its report."""
        cfg = self.cfg

        def evaluate(perturbation: Perturbation | None) -> dict[str, Any]:
            metrics, _ = evaluate_split(
                detector,
                records,
                cfg,
                ctx,
                split,
                perturb=perturbation,
                desc=f"{split} {perturbation or 'none'}",
                log_skipped=False,
            )
            return metrics

        def announce(family: Family, level: Any) -> None:
            if dist.is_main():
                log.info("robustness %s: %s %s (%s)", split, family.name, level.label, level.spec)

        sweep = run_sweep(self.families, evaluate, self.seed, baseline, on_level=announce)
        if dist.is_main():
            written = write_robustness_report(
                ctx.run_dir,
                split,
                sweep,
                self.families,
                self.metric,
                {**info, "preset": self.preset},
                plots=cfg.metrics.plots,
            )
            print(f"\n{written['md'].read_text()}", flush=True)
        self.swept[split] = sweep
        return sweep

    def finish(self, ctx: Context) -> None:
        """One figure per family with a curve per swept set, when there are several."""
        if not dist.is_main() or len(self.swept) < 2 or not self.cfg.metrics.plots:
            return
        for family in self.families:
            curves = {
                name: sweep_curves(sweep, family.name, self.metric)["all"]
                for name, sweep in self.swept.items()
            }
            plot_robustness(
                [level.label for level in family.levels],
                curves,
                ctx.run_dir / f"robustness_{family.name}.png",
                metric=self.metric,
                xlabel=family.axis,
                title=f"{family.name} — {self.preset}",
            )


def make_sweeper(cfg: DictConfig) -> Sweeper | None:
    """The run's :class:`Sweeper`, or ``None`` without ``robustness=<preset>``."""
    return Sweeper(cfg) if cfg.get("robustness") is not None else None

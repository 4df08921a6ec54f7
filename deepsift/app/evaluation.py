"""``evaluate.py``'s job, the mirror image of training: load, score, report.

The detector comes from a deepsift checkpoint (``checkpoint=<path>``: the file
alone is enough, it carries the detector config and preprocessing) or from a
detector config with optional official weights (``detector=<name>
detector.weights=<file>``).

``robustness=<preset>`` (``configs/robustness``) sweeps every evaluated set over test-time
perturbations after its plain evaluation (see :mod:`deepsift.app.robustness`).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from deepsift.app.pipeline import (
    build_data,
    config_choice,
    detector_records,
    evaluate_data_sets,
    evaluate_split,
    plain_config,
    report_split,
    setup_run,
    split_records,
    summary_table,
    uncached_videos,
)
from deepsift.app.robustness import make_sweeper
from deepsift.core import distributed as dist
from deepsift.core.configs import instantiate
from deepsift.core.errors import UserError
from deepsift.engine.loggers import NullLogger
from detectors.base import Detector
from detectors.factory import build_detector, list_detectors, load_checkpoint_detector

log = logging.getLogger(__name__)


def load_for_evaluation(cfg: DictConfig) -> tuple[Detector, dict[str, Any]]:
    name = config_choice("detector")
    if cfg.get("checkpoint"):
        detector, payload = load_checkpoint_detector(cfg.checkpoint, expected_name=name)
        return detector, {
            "checkpoint": str(cfg.checkpoint),
            "detector": payload["detector"].get("name"),
            "git_of_checkpoint": payload.get("git"),
            "epoch": payload.get("epoch"),
            "seed": payload.get("seed"),
        }
    if cfg.get("detector") is None:
        raise UserError(
            f"pass checkpoint=<path to best.pt> or detector=<name> [detector.weights=<file>]; detectors: {', '.join(list_detectors())}"
        )
    weights = cfg.detector.get("weights")
    detector = build_detector(cfg.detector, name)
    if not weights and dist.is_main():
        log.warning(
            "evaluating detector %s with untrained weights: pass checkpoint=... or detector.weights=...",
            name,
        )
    return detector, {"detector": name, "weights": weights}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    sweeper = make_sweeper(cfg)  # a bad preset fails before the detector loads
    ctx = setup_run(cfg)
    detector, info = load_for_evaluation(cfg)
    detector.to(ctx.device)
    data = build_data(cfg)
    info["data"] = getattr(data, "name", None)
    logger = instantiate(cfg.logger) if dist.is_main() and cfg.get("logger") else NullLogger()
    logger.start(ctx.run_dir, plain_config(cfg))
    splits = [cfg.split] if isinstance(cfg.split, str) else list(cfg.split)
    results = {}
    for split in splits:
        records, skipped = detector_records(
            detector, split_records(data, split), cfg, ctx, split, uncached_videos(data, split)
        )
        metrics, result = evaluate_split(detector, records, cfg, ctx, split, skipped=skipped)
        report_split(cfg, ctx, split, metrics, result, records, info, logger)
        if sweeper is not None:
            sweeper.sweep(detector, records, ctx, split, metrics, info)
        results[split] = metrics

    def sweep_set(name: str, records: Any, metrics: dict[str, Any], set_info: dict) -> None:
        if sweeper is not None:
            sweeper.sweep(detector, records, ctx, name, metrics, set_info)

    if cfg.get("reproduce"):  # experiment=reproduce/<id>: a published table's test sets
        from deepsift.app.reproduce import reproduce_sets, write_report

        sets, missing = reproduce_sets(cfg)
        results.update(
            evaluate_data_sets(detector, cfg, ctx, info, logger, sets=sets, after=sweep_set)
        )
        if dist.is_main():
            write_report(cfg, ctx.run_dir, results, missing, info)
    else:
        results.update(evaluate_data_sets(detector, cfg, ctx, info, logger, after=sweep_set))
    if sweeper is not None:
        sweeper.finish(ctx)
    if dist.is_main() and len(results) > 1:
        print(f"\nSummary:\n{summary_table(results)}", flush=True)
    logger.finish()
    dist.barrier()
    return results

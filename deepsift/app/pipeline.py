"""What train.py and evaluate.py share: run directory, device, data, detector, reports."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from datasets.clips import clip_records
from deepsift.core import distributed as dist
from deepsift.core.configs import CONFIG_DIR, config_names, instantiate
from deepsift.core.errors import UserError
from deepsift.core.records import Record
from deepsift.core.runtime import autocast_dtype, resolve_device
from deepsift.engine.loops import InferenceResult, run_inference
from deepsift.engine.metrics import metrics_table
from deepsift.engine.reporting import split_metrics, write_split_report

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Per-process facts of a run."""

    run_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool


def setup_run(cfg: DictConfig) -> Context:
    """Join torchrun's process group and agree on rank 0's run directory."""
    device = dist.setup(resolve_device(cfg.trainer.device).type)
    run_dir = Path(dist.broadcast_object(str(Path(cfg.paths.output_dir).resolve())))
    amp_dtype = autocast_dtype(device, str(cfg.trainer.precision))
    channels_last = (
        device.type == "cuda"
        if cfg.trainer.channels_last == "auto"
        else bool(cfg.trainer.channels_last)
    )
    if dist.is_main():
        log.info(
            "run directory %s; device %s; world size %d; amp %s",
            run_dir,
            device,
            dist.world_size(),
            amp_dtype,
        )
    return Context(run_dir, device, amp_dtype, channels_last)


def config_choice(group: str) -> str | None:
    """The option chosen for a config group (``detector=npr`` -> ``npr``), when run by Hydra."""
    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # HydraConfig not set: called outside a Hydra app
        return None


def build_data(cfg: DictConfig) -> Any:
    if cfg.get("data") is None:
        raise UserError("no data config: pass data=<name> (see configs/data)")
    return instantiate(cfg.data, _convert_="all")


def eval_data_sets(cfg: DictConfig) -> list[tuple[str, Any, str]]:
    """The extra datasets of ``eval_data``: ``(label, data source, split)`` per entry.

    ``eval_data`` maps a label to overrides of a ``configs/data`` file, so one run
    trains on one benchmark and tests on several::

        python train.py data=ffpp data.root=/d/ffpp \\
            +eval_data.celebdf_v2.root=/d/Celeb-DF-v2 +eval_data.dfdc.root=/d/dfdc

    The label names the data config unless the entry says ``config: <name>`` (two
    entries of one benchmark, e.g. FF++ c23 and c40); ``split`` defaults to ``test``.
    """
    entries = cfg.get("eval_data") or {}
    out = []
    for label, entry in entries.items():
        entry = OmegaConf.to_container(entry, resolve=False) if entry is not None else {}
        if not isinstance(entry, dict):
            raise UserError(
                f"eval_data.{label} must be a mapping of data options (e.g. +eval_data.{label}.root=<folder>)"
            )
        config_name = str(entry.pop("config", label))
        split = str(entry.pop("split", "test"))
        path = CONFIG_DIR / "data" / f"{config_name}.yaml"
        if not path.is_file():
            names = ", ".join(config_names("data"))
            raise UserError(
                f"eval_data.{label}: no data config {config_name!r} (set eval_data.{label}.config=<name>); valid names: {names}"
            )
        # resolve ${data.root}-style interpolations against the entry itself
        node = OmegaConf.create({"data": OmegaConf.merge(OmegaConf.load(path), entry)})
        node.data.name = str(label)
        source = instantiate(OmegaConf.to_container(node.data, resolve=True), _convert_="all")
        out.append((str(label), source, split))
    return out


def check_data_sets(sets: Sequence[tuple[str, Any, str]]) -> None:
    """Read every extra set's records now, so a wrong root fails before training, not after."""
    for _label, source, split in sets:
        split_records(source, split)


def evaluate_data_sets(
    detector: Any,
    cfg: DictConfig,
    ctx: Context,
    info: dict[str, Any],
    logger: Any,
    sets: Sequence[tuple[str, Any, str]] | None = None,
    after: Callable[[str, Sequence[Record], dict[str, Any], dict[str, Any]], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``detector`` on every ``eval_data`` entry; results keyed ``<label>/<split>``.

    ``after(name, records, metrics, info)`` runs once each set is reported (``name`` is
    ``<label>-<split>``, as in its file names): the robustness sweep of ``evaluate.py``.
    """
    results: dict[str, dict[str, Any]] = {}
    for label, source, split in eval_data_sets(cfg) if sets is None else sets:
        name, set_info = f"{label}-{split}", {**info, "data": label}
        records, skipped = detector_records(
            detector, split_records(source, split), cfg, ctx, name, uncached_videos(source, split)
        )
        metrics, result = evaluate_split(detector, records, cfg, ctx, split, skipped=skipped)
        report_split(cfg, ctx, name, metrics, result, records, set_info, logger)
        if after is not None:
            after(name, records, metrics, set_info)
        results[f"{label}/{split}"] = metrics
    return results


def split_records(data: Any, split: str) -> list[Record]:
    records = data.records(split)
    if not records:
        raise UserError(
            f"data {getattr(data, 'name', '?')!r} has no images in split {split!r}; check data.root and its layout"
        )
    labels = {r.label for r in records}
    if dist.is_main():
        log.info(
            "%s/%s: %d images (%d real, %d fake)",
            getattr(data, "name", "data"),
            split,
            len(records),
            sum(r.label == 0 for r in records),
            sum(r.label == 1 for r in records),
        )
        if len(labels) < 2:
            log.warning(
                "split %s holds only %s images: ranking metrics will be NaN",
                split,
                "fake" if 1 in labels else "real",
            )
    return records


def uncached_videos(data: Any, split: str) -> list[tuple[str, str]]:
    """``(video, reason)`` of the videos of ``split`` that a face-crop cache holds no crop of
    (``data.uncached``; none for other sources)."""
    uncached = getattr(data, "uncached", None)
    return list(uncached(split)) if callable(uncached) else []


def detector_records(
    detector: Any,
    records: Sequence[Record],
    cfg: DictConfig,
    ctx: Context,
    name: str,
    uncached: Sequence[tuple[str, str]] = (),
) -> tuple[list[Record], list[tuple[str, str]]]:
    """The records ``detector`` reads: ``records`` themselves for an image detector; for a
    clip detector (``input_kind == "clip"``) clips of ``clip_len`` crops of one face track,
    ``metrics.clips_per_video`` evenly spaced per video (:func:`datasets.clips.clip_records`).

    Returns ``(records, skipped)``: the videos too short for one clip, and for a clip
    detector the ``uncached`` videos (:func:`uncached_videos`: no crops, e.g. shorter than
    one preprocessing window), as ``(video, reason)``, logged in one line, written to
    ``clips_skipped_<name>.json`` in the run directory and counted in the split's report;
    an error only when no video is long enough.
    """
    if getattr(detector, "input_kind", "image") != "clip":
        return list(records), []
    per_video = cfg.metrics.get("clips_per_video", 4)
    mouths = bool(getattr(detector, "needs_mouth", False))  # LipForensics: mouth crops too
    clips, skipped = clip_records(
        records, detector.clip_len, detector.clip_stride, per_video, mouths=mouths
    )
    skipped = [*uncached, *skipped]
    n_videos = len({r.video for r in clips})
    if dist.is_main():
        log.info(
            "%s: %d clips (%d frames, stride %d) from %d videos",
            name, len(clips), detector.clip_len, detector.clip_stride, n_videos,
        )  # fmt: skip
        if skipped:
            listing = ctx.run_dir / f"clips_skipped_{name}.json"
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text(
                json.dumps([{"video": v, "reason": r} for v, r in skipped], indent=1)
            )
            log.warning(
                "%s: %d videos skipped, too short for one clip, without crops or without "
                "mouth crops (listed in %s); first: %s: %s",
                name, len(skipped), listing.name, skipped[0][0], skipped[0][1],
            )  # fmt: skip
    if not clips:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise UserError(
            f"{name}: no video has a face track as long as one clip of the clip detector{first}; "
            "clip detectors need video data read from a face-crop cache"
        )
    return clips, skipped


def evaluate_split(
    detector: Any,
    records: Sequence[Record],
    cfg: DictConfig,
    ctx: Context,
    split: str,
    perturb: Any = None,
    desc: str | None = None,
    log_skipped: bool = True,
    skipped: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, Any], InferenceResult]:
    """Scores and metrics of ``records`` with the trainer's evaluation settings
    (``perturb``: a robustness perturbation applied to every image before the transform;
    ``skipped``: what :func:`detector_records` left out, reported with the unreadable files)."""
    result = run_inference(
        detector,
        records,
        ctx.device,
        batch_size=cfg.trainer.eval_batch_size,
        num_workers=cfg.trainer.num_workers,
        amp_dtype=ctx.amp_dtype,
        channels_last=ctx.channels_last,
        limit_batches=cfg.trainer.limit_eval_batches,
        desc=desc or split,
        perturb=perturb,
        log_skipped=log_skipped,
    )
    result.skipped.extend(skipped)
    metrics = split_metrics(result, records, cfg.metrics.video_aggregation, cfg.metrics.threshold)
    return metrics, result


def report_split(
    cfg: DictConfig,
    ctx: Context,
    split: str,
    metrics: dict[str, Any],
    result: InferenceResult,
    records: Sequence[Record],
    info: dict[str, Any],
    logger: Any,
) -> None:
    """Rank 0 writes the files, logs the figures, and prints the table."""
    if not dist.is_main():
        return
    written = write_split_report(
        ctx.run_dir, split, metrics, result, records, info, plots=cfg.metrics.plots
    )
    frame = metrics["frame"]
    logger.log(
        {f"{split}/{k}": v for k, v in frame.items() if isinstance(v, float) and not math.isnan(v)}
    )
    if "roc" in written:
        logger.log_image(f"{split}/roc", written["roc"])
    if metrics["n_skipped"]:
        log.warning(
            "%s: %d unreadable images skipped (listed in %s)",
            split,
            metrics["n_skipped"],
            written["json"].name,
        )
    print(f"\n{split} ({written['json']}):\n{written['md'].read_text()}", flush=True)


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    return metrics_table({name: m["frame"] for name, m in results.items()})

"""``train.py``'s job: fit a detector, select on validation, report val and test.

Honest model selection: the ``best`` checkpoint is chosen on the validation
split only (``trainer.early_stopping.monitor``, frame-level ROC-AUC by default)
and early stopping watches the same number; the test split is evaluated once,
at the end, with the best weights.

Exact resumption: every epoch reseeds Python, NumPy and torch from
``(seed, epoch, rank)`` and the data order from ``(seed, epoch)``, and ``last.pt``
holds the weights, optimiser, scheduler, scaler and early-stopping state at the
end of an epoch, so a run killed at any point and resumed with
``resume=<run>/last.pt`` ends with the same weights as one never interrupted.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DistributedSampler

from deepsift.app.pipeline import (
    build_data,
    check_data_sets,
    config_choice,
    detector_records,
    eval_data_sets,
    evaluate_data_sets,
    evaluate_split,
    plain_config,
    report_split,
    setup_run,
    split_records,
    summary_table,
    uncached_videos,
)
from deepsift.core import distributed as dist
from deepsift.core.checkpoint import (
    git_hash,
    load_state_dict_strict,
    read_checkpoint,
    save_checkpoint,
)
from deepsift.core.configs import instantiate
from deepsift.core.errors import UserError
from deepsift.core.records import RecordDataset
from deepsift.core.runtime import epoch_seed, seed_everything
from deepsift.engine.loggers import NullLogger
from deepsift.engine.loops import make_loader, train_one_epoch, wrap_for_training
from deepsift.engine.metrics import to_jsonable
from detectors.factory import build_detector

log = logging.getLogger(__name__)


def data_face_crop(data: Any, split: str = "train") -> dict[str, Any] | None:
    """How the training data's face crops were cut (a video benchmark's crop cache says it,
    see ``VideoCropSource.face_crop``), as plain data; ``None`` for other data."""
    reader = getattr(data, "face_crop", None)
    return reader(split) if callable(reader) else None


def window_stride(records: Any) -> int | None:
    """The video-frame step of the crop cache's windows (``datasets.preprocess stride=``,
    each crop's ``window_stride``), the most common over ``records``; None without windows."""
    counts: dict[int, int] = {}
    for record in records:
        step = getattr(record, "extra", {}).get("window_stride")
        if step:
            counts[int(step)] = counts.get(int(step), 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def _checkpoint(
    detector: Any,
    name: str | None,
    cfg: DictConfig,
    epoch: int,
    val: dict[str, Any],
    face_crop: dict[str, Any] | None = None,
    stride: int | None = None,
) -> dict[str, Any]:
    return {
        "detector": {"name": name, "config": detector.config},
        "state_dict": detector.state_dict(),
        "preprocessing": detector.preprocessing.to_dict(),
        # how the training faces were cut: score.py cuts faces the same way
        "face_crop": face_crop,
        # video frames between cached neighbours of a clip: score.py spaces clips alike
        "window_stride": stride,
        "git": git_hash(),
        "epoch": epoch,
        "seed": int(cfg.seed),
        "metrics": {"val": to_jsonable(val)},
        "config": plain_config(cfg),
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.detector`` on ``cfg.data``; returns the metrics of each evaluated split."""
    ctx = setup_run(cfg)
    seed_everything(cfg.seed)
    name = config_choice("detector")
    data = build_data(cfg)
    train_records = split_records(data, "train")
    val_records = split_records(data, "val")
    face_crop = data_face_crop(data)
    stride = window_stride(train_records)
    if face_crop is not None and dist.is_main():
        log.info("training face crops (recorded in the checkpoint): %s", face_crop)
    extra_sets = eval_data_sets(cfg)
    check_data_sets(extra_sets)

    detector = build_detector(cfg.detector, name).to(ctx.device)
    # a clip detector reads clips of one face track (input_kind dispatch, no per-detector case)
    train_records, _ = detector_records(
        detector, train_records, cfg, ctx, "train", uncached_videos(data, "train")
    )
    val_records, val_skipped = detector_records(
        detector, val_records, cfg, ctx, "val", uncached_videos(data, "val")
    )
    if ctx.channels_last:
        detector = detector.to(memory_format=torch.channels_last)
    optimizer, scheduler = detector.configure_optimizers()
    scaler = torch.amp.GradScaler("cuda") if ctx.amp_dtype == torch.float16 and optimizer else None

    trainer = cfg.trainer
    stop = trainer.early_stopping
    state: dict[str, Any] = {
        "epoch": 0,
        "best": None,
        "best_epoch": None,
        "bad_epochs": 0,
        "history": [],
    }
    best_state: dict[str, torch.Tensor] | None = None
    if cfg.get("resume"):
        payload = read_checkpoint(cfg.resume)
        if payload["detector"].get("name") != name:
            raise UserError(
                f"resume={cfg.resume} holds detector {payload['detector'].get('name')!r}, not {name!r}; pass detector={payload['detector'].get('name')}"
            )
        if "trainer_state" not in payload:
            raise UserError(
                f"resume={cfg.resume} is a best checkpoint without optimiser state; resume from last.pt"
            )
        load_state_dict_strict(detector, payload["state_dict"], f"checkpoint {cfg.resume}")
        if optimizer is not None and payload.get("optimizer"):
            optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None and payload.get("scheduler"):
            scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        state = payload["trainer_state"]
        best_file = Path(cfg.resume).with_name("best.pt")
        if best_file.is_file():
            best_state = read_checkpoint(best_file)["state_dict"]
            if dist.is_main() and best_file.resolve() != (ctx.run_dir / "best.pt").resolve():
                shutil.copy2(best_file, ctx.run_dir / "best.pt")  # the run directory stays complete
        if dist.is_main():
            log.info("resumed from %s after epoch %d", cfg.resume, state["epoch"])

    logger = instantiate(cfg.logger) if dist.is_main() and cfg.get("logger") else NullLogger()
    logger.start(ctx.run_dir, plain_config(cfg))
    step_fn = wrap_for_training(detector, ctx.device, trainer.find_unused_parameters)
    train_set = RecordDataset(train_records, detector.train_transform)
    sampler = DistributedSampler(
        train_set,
        num_replicas=dist.world_size(),
        rank=dist.rank(),
        shuffle=True,
        seed=int(cfg.seed),
    )
    max_epochs = int(trainer.max_epochs)
    if detector.epochs_needed is not None:
        max_epochs = min(max_epochs, detector.epochs_needed)

    for epoch in range(state["epoch"], max_epochs):
        seed_everything(epoch_seed(cfg.seed, epoch, dist.rank()))
        sampler.set_epoch(epoch)
        loader = make_loader(
            train_set,
            trainer.batch_size,
            trainer.num_workers,
            sampler,
            seed=epoch_seed(cfg.seed, epoch),
            pin_memory=ctx.device.type == "cuda",
        )
        losses, skipped = train_one_epoch(
            step_fn,
            detector,
            loader,
            optimizer,
            ctx.device,
            ctx.amp_dtype,
            scaler,
            grad_clip=trainer.grad_clip,
            channels_last=ctx.channels_last,
            limit_batches=trainer.limit_train_batches,
            desc=f"epoch {epoch + 1}/{max_epochs}",
        )
        detector.on_train_epoch_end()
        if scheduler is not None:
            scheduler.step()
        val_metrics, _ = evaluate_split(detector, val_records, cfg, ctx, "val")
        score = val_metrics["frame"].get(stop.monitor, math.nan)
        improved = not math.isnan(score) and (
            state["best"] is None or score > state["best"] + stop.min_delta
        )
        if improved:
            state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
            best_state = copy.deepcopy(detector.state_dict())
        else:
            state["bad_epochs"] += 1
        record = {
            "epoch": epoch + 1,
            "train": losses,
            "val": val_metrics["frame"],
            "skipped_train": len(skipped),
            "lr": optimizer.param_groups[0]["lr"] if optimizer else None,
        }
        state["history"].append(to_jsonable(record))
        state["epoch"] = epoch + 1
        if dist.is_main():
            log.info(
                "epoch %d: %s; val %s=%.4f%s",
                epoch + 1,
                ", ".join(f"{k}={v:.4f}" for k, v in losses.items()) or "closed-form fit",
                stop.monitor,
                score,
                " (best)" if improved else "",
            )
            for path, reason in skipped:
                log.warning("skipped unreadable training image %s (%s)", path, reason)
            logger.log(
                {
                    **{f"train/{k}": v for k, v in losses.items()},
                    **{
                        f"val/{k}": v
                        for k, v in val_metrics["frame"].items()
                        if isinstance(v, float)
                    },
                },
                step=epoch + 1,
            )
            payload = _checkpoint(
                detector, name, cfg, epoch + 1, val_metrics["frame"], face_crop, stride
            )
            if improved:
                save_checkpoint(ctx.run_dir / "best.pt", payload)
            save_checkpoint(
                ctx.run_dir / "last.pt",
                {
                    **payload,
                    "optimizer": optimizer.state_dict() if optimizer else None,
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "scaler": scaler.state_dict() if scaler else None,
                    "trainer_state": to_jsonable(state),
                },
            )
            (ctx.run_dir / "history.json").write_text(json.dumps(state["history"], indent=2))
        dist.barrier()
        if state["bad_epochs"] >= stop.patience:
            if dist.is_main():
                log.info(
                    "early stopping: val %s did not improve for %d epochs (best %.4f at epoch %s)",
                    stop.monitor,
                    stop.patience,
                    state["best"],
                    state["best_epoch"],
                )
            break

    if best_state is not None:
        detector.load_state_dict(best_state)
    elif dist.is_main():
        log.warning("no epoch had a finite val %s: reporting the last weights", stop.monitor)
    info = {
        "detector": name,
        "data": getattr(data, "name", None),
        "seed": int(cfg.seed),
        "git": git_hash(),
        "best_epoch": state["best_epoch"],
        "selected_on": f"val/{stop.monitor}",
    }
    results: dict[str, dict[str, Any]] = {}
    for split in cfg.eval_splits:
        if split == "val":
            records, skipped = val_records, val_skipped
        else:
            records, skipped = detector_records(
                detector, split_records(data, split), cfg, ctx, split, uncached_videos(data, split)
            )
        metrics, result = evaluate_split(detector, records, cfg, ctx, split, skipped=skipped)
        report_split(cfg, ctx, split, metrics, result, records, info, logger)
        results[split] = metrics
    results.update(evaluate_data_sets(detector, cfg, ctx, info, logger, extra_sets))
    if dist.is_main():
        print(
            f"\nSummary (best epoch {state['best_epoch']}, selected on val/{stop.monitor}; seed {cfg.seed}):\n{summary_table(results)}",
            flush=True,
        )
    logger.finish()
    dist.barrier()
    return results

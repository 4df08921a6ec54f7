"""The command line of ``score.py`` (argparse; no Hydra knowledge needed)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from deepsift.core.errors import UserError, user_errors

EPILOG = """\
examples:
  score.py suspect/ --out results.jsonl --checkpoint runs/train/x/best.pt
  score.py uploads.zip "shots/**/*.png" @list.txt --out results.csv --detector npr --weights NPR.pth
  score.py clips/ --out r.jsonl --ensemble meso4:Meso4_DF.h5,npr:NPR.pth --frame-records
  score.py suspect/ --out results.jsonl --checkpoint best.pt --resume          # after a crash
  score.py --calibrate val_set/ --out calib.json --checkpoint best.pt          # fit the bands
  score.py suspect/ --out r.jsonl --checkpoint best.pt --calibration calib.json
  score.py videos/ --out r.jsonl --checkpoint runs/train/ftcn/best.pt --clips 8   # clip detector

Each input item gets one record, appended and flushed as soon as it is scored;
a summary is printed at the end and written next to the output as
<out stem>.summary.json. Bands without --calibration use default thresholds
(0.2 / 0.5 / 0.9) and every record says calibrated: false.

A clip detector (input_kind: clip) scores videos only: --clips windows of its
clip_len frames clip_stride apart, evenly spaced; in each, every face is tracked by
box overlap and each track that spans the window is one clip (kind: clip record),
so no clip mixes two people; the video's score is the mean (--video-aggregation)
over windows of the most suspect track. It scores alone (no --ensemble), on the
local engine, without --stability.
"""


def default_workers(device_type: str) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 2
    if device_type == "cuda":
        return max(1, min(16, cores - 1))
    return max(1, min(4, cores // 2))


def build_parser() -> argparse.ArgumentParser:
    from deepsift.scoring.decode import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS
    from deepsift.scoring.inputs import DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_MEMBER_BYTES

    p = argparse.ArgumentParser(
        prog="score.py",
        description="Score images, videos and archives for synthetic content, one record per item.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="files, folders (recursive), quoted glob patterns, @LIST files, zip/tar archives, videos",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output file (.jsonl or .csv); with --calibrate, the calibration JSON",
    )
    p.add_argument(
        "--from-file",
        action="append",
        default=[],
        metavar="LIST",
        help="read input paths from LIST: one per line, or the path column of a .csv, .jsonl or .parquet manifest, read lazily (repeatable)",
    )
    p.add_argument(
        "--null", action="store_true", help="list files are NUL-separated (names may hold newlines)"
    )

    g = p.add_argument_group("detector (one of)")
    g.add_argument("--checkpoint", help="a deepsift checkpoint (best.pt)")
    g.add_argument(
        "--detector", help="a detector name (configs/detector), e.g. npr, cnnspot, meso4"
    )
    g.add_argument("--weights", help="official or other weights for --detector")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a --detector config field (repeatable)",
    )
    g.add_argument(
        "--ensemble",
        metavar="SPEC",
        help="NAME[:WEIGHTS],CHECKPOINT,... or a YAML file; per-member scores kept",
    )
    g.add_argument(
        "--combine", choices=("mean", "max"), help="how ensemble members combine (default mean)"
    )

    g = p.add_argument_group("output")
    g.add_argument(
        "--format",
        choices=("jsonl", "csv", "parquet"),
        help="default: from --out's suffix (.csv, .parquet, else jsonl)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="skip items already in --out (a torn last line is dropped)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g.add_argument("--calibration", metavar="FILE", help="band thresholds fitted by --calibrate")
    g.add_argument(
        "--skip-non-images",
        action="store_true",
        help="write no record for files that are neither images nor videos",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    g = p.add_argument_group("calibration mode")
    g.add_argument(
        "--calibrate",
        metavar="LABELLED",
        help="fit band thresholds on a labelled set (folder with 0_real/1_fake, or a path,label manifest) and write them to --out",
    )
    g.add_argument(
        "--fpr-likely",
        type=float,
        default=0.01,
        help="false-positive rate on reals at the likely_synthetic threshold (default 0.01)",
    )
    g.add_argument(
        "--fpr-synthetic",
        type=float,
        default=0.001,
        help="false-positive rate on reals at the synthetic threshold (default 0.001)",
    )
    g.add_argument(
        "--fnr-authentic",
        type=float,
        default=0.05,
        help="share of synthetic images allowed below the authentic threshold (default 0.05)",
    )

    g = p.add_argument_group("analysis")
    g.add_argument(
        "--faces",
        choices=("auto", "on", "off"),
        default="auto",
        help="score face crops: auto = for detectors whose config says input: face",
    )
    g.add_argument(
        "--face-detector",
        help="datasets.faces backend: dlib_hog (alias default), dlib_cnn, opencv_haar "
        "(default: the one that found the training faces, as the checkpoint says; else dlib HOG)",
    )
    g.add_argument(
        "--face-align",
        choices=("on", "off"),
        help="on: align faces on five landmarks; off: the unrotated square around the box "
        "(default: as the detector's training faces, from the checkpoint or its config's face_crop)",
    )
    g.add_argument(
        "--face-margin",
        type=float,
        help="face crop side / face size (default: as the detector's training faces; usually 1.3)",
    )
    g.add_argument(
        "--min-face",
        type=int,
        default=64,
        help="faces smaller than this (pixels) are not scored (default 64)",
    )
    g.add_argument(
        "--max-faces", type=int, default=8, help="faces scored per image, largest first (default 8)"
    )
    g.add_argument(
        "--stability",
        action="store_true",
        help="also score JPEG-90 and 0.75x copies; unstable = band flips (3x the cost)",
    )
    g.add_argument(
        "--no-provenance",
        action="store_true",
        help="do not read C2PA / watermark / generator metadata",
    )
    g.add_argument("--no-pdq", action="store_true", help="do not compute PDQ hashes")
    g.add_argument(
        "--video-frames", type=int, default=16, help="frames sampled evenly per video (default 16)"
    )
    g.add_argument(
        "--video-aggregation",
        choices=("mean", "median", "max"),
        default="mean",
        help="video score from frame scores, or from clip scores for a clip detector (default mean)",
    )
    g.add_argument(
        "--clips",
        type=int,
        default=4,
        help="clip detectors: clips evenly spaced per video, of the detector's clip_len frames "
        "clip_stride apart, each from one tracked face (default 4)",
    )
    g.add_argument(
        "--frame-records", action="store_true", help="also write one record per sampled video frame"
    )
    g.add_argument(
        "--animated",
        choices=("first", "frames"),
        default="first",
        help="animated GIF/WebP/PNG: first frame, or frames like a video",
    )

    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: worker processes on this machine; ray: Ray Data on a cluster (the ray extra)",
    )
    g.add_argument(
        "--ray-address",
        help="Ray cluster to join (HOST:PORT from `ray start --head`, auto, ray://HOST:10001); "
        "default: start a local Ray",
    )
    g.add_argument(
        "--model-workers", type=int, default=1, help="--engine ray: model actors (default 1)"
    )
    g.add_argument(
        "--items-per-shard",
        type=int,
        default=256,
        help="--engine ray: items per chunk (one decode task, one actor call, one shard file)",
    )
    g.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="--engine ray: GPUs per model actor (default 0: CPU)",
    )

    g = p.add_argument_group("resources and limits")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    g.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16", "32", "16"),
        help="autocast (auto: bf16 on CUDA where supported, else fp16; fp32 on CPU; "
        "bf16 also on CPU; fp16 on CPU is refused)",
    )
    g.add_argument(
        "--decode-device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where JPEGs are decoded and preprocessed: cuda = in the model process (Ray: "
        "the model actors) on the GPU (nvJPEG, tensor transforms; other items stay on the "
        "CPU path); auto = cuda when the model (Ray: --gpus-per-worker > 0) is on CUDA and "
        "nothing needs CPU pixels (faces, PDQ, provenance, "
        "--stability) and every member's transform has a tensor version; else cpu",
    )
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument(
        "--workers",
        type=int,
        help="decoding processes (0: in the main process); default: half the cores (CPU), cores-1 (GPU)",
    )
    g.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger images (decompression bombs; default {DEFAULT_MAX_PIXELS})",
    )
    g.add_argument(
        "--max-file-bytes",
        type=int,
        default=DEFAULT_MAX_FILE_BYTES,
        help="refuse larger image files",
    )
    g.add_argument(
        "--max-member-bytes",
        type=int,
        default=DEFAULT_MAX_MEMBER_BYTES,
        help="refuse archive members expanding beyond this (zip bombs)",
    )
    g.add_argument(
        "--max-archive-bytes",
        type=int,
        default=DEFAULT_MAX_ARCHIVE_BYTES,
        help="stop expanding an archive after this many bytes",
    )
    g.add_argument(
        "--item-timeout",
        type=float,
        default=300.0,
        help="seconds one item may take to decode before it gets an error record",
    )
    return p


def face_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--face-align`` / ``--face-margin`` as ``face_crop`` values (None: not given)."""
    margin = getattr(args, "face_margin", None)
    if margin is not None and not margin > 0:
        raise UserError(f"--face-margin must be positive; got {margin}")
    align = getattr(args, "face_align", None)
    return {"align": None if align is None else align == "on", "margin": margin}


def ensemble_from_args(args: argparse.Namespace, device: Any) -> Any:
    """The detector or ensemble that the command line names, on ``device``."""
    from deepsift.scoring.models import load_ensemble

    return load_ensemble(
        checkpoint=args.checkpoint,
        detector=args.detector,
        weights=args.weights,
        overrides=args.set,
        ensemble=args.ensemble,
        faces=args.faces,
        combine=args.combine,
        face_overrides=face_overrides(args),
    ).to(device)


def resolve(args: argparse.Namespace) -> tuple[Any, Any]:
    """The device and autocast dtype of the command line."""
    import torch

    from deepsift.scoring.accel import resolve_precision

    name = args.device
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif name == "cpu" or name.startswith("cuda"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {name} but no CUDA GPU is visible; use --device cpu or auto")
        device = torch.device(name)
    else:
        raise UserError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return device, resolve_precision(args.precision, device)


def decode_choice(args: argparse.Namespace, ensemble: Any, device: Any, engine: str) -> Any:
    """``--decode-device`` for this run (:func:`deepsift.scoring.decode_device.resolve_decode_device`)."""
    from deepsift.scoring.decode_device import cpu_pixel_needs, resolve_decode_device

    members = ensemble.members
    needs = cpu_pixel_needs(
        faces=any(m.faces for m in members),
        pdq=not args.no_pdq,
        provenance=not args.no_provenance,
        stability=args.stability,
        clips=any(getattr(m.detector, "input_kind", "image") == "clip" for m in members),
    )
    return resolve_decode_device(
        getattr(args, "decode_device", "auto"),
        device,
        [(m.label, m.detector) for m in members],
        needs,
        engine,
    )


def refuse_decode_cuda_early(args: argparse.Namespace, device: Any) -> None:
    """An explicit ``--decode-device cuda`` that cannot run on ``device`` (the model's, or
    the Ray model actors') or with these options: refused before a model loads (or Ray
    starts); the member checks follow in :func:`decode_choice`."""
    if getattr(args, "decode_device", "auto") != "cuda":
        return
    from deepsift.scoring.decode_device import cpu_pixel_needs, resolve_decode_device

    early = cpu_pixel_needs(
        faces=False,
        pdq=not args.no_pdq,
        provenance=not args.no_provenance,
        stability=args.stability,
        clips=False,
    )
    resolve_decode_device("cuda", device, [], early, getattr(args, "engine", "local"))


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def run_options(args: argparse.Namespace, inputs: list[str], device: Any, amp: Any) -> Any:
    from deepsift.scoring.inputs import InputOptions
    from deepsift.scoring.prepare import PrepareOptions
    from deepsift.scoring.runner import RunOptions

    for name in (
        "batch_size",
        "video_frames",
        "clips",
        "max_pixels",
        "max_file_bytes",
        "max_member_bytes",
    ):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    return RunOptions(
        inputs=inputs,
        batch_size=args.batch_size,
        workers=default_workers(device.type) if args.workers is None else args.workers,
        device=device,
        amp_dtype=amp,
        aggregation=args.video_aggregation,
        frame_records=args.frame_records,
        skip_non_images=args.skip_non_images,
        item_timeout=args.item_timeout,
        progress=not args.quiet,
        input_options=InputOptions(
            max_member_bytes=args.max_member_bytes,
            max_archive_bytes=args.max_archive_bytes,
            null_separated=args.null,
        ),
        prepare_options=PrepareOptions(
            max_pixels=args.max_pixels,
            max_file_bytes=args.max_file_bytes,
            video_frames=args.video_frames,
            animated=args.animated,
            stability=args.stability,
            provenance=not args.no_provenance,
            pdq=not args.no_pdq,
            min_face=args.min_face,
            max_faces=args.max_faces,
            clips=args.clips,
        ),
    )


def face_factory(ensemble: Any, name: str | None) -> Any:
    """A factory of the face detector the workers use (None when no member scores faces).

    The detector is built here, so a missing dlib or model file fails at once with
    one line; its model files load on first use in each worker. Prints one line per
    face member: how its faces are cut, by which face detector, and where the
    settings came from.
    """
    if not any(m.faces for m in ensemble.members):
        return None
    try:
        from datasets.faces import face_detector
    except ImportError as exc:
        raise UserError(
            f"face detectors need datasets/faces.py ({exc}); pass --faces off to score whole images"
        ) from None
    from deepsift.scoring.faces import Fixed, detector_options

    options = detector_options(ensemble.members, name)
    try:
        detector = face_detector(**options)
    except TypeError as exc:
        raise UserError(f"face detector options {options} are not valid ({exc})") from None
    used = detector.settings() if hasattr(detector, "settings") else dict(options)
    extra = [
        f"{k} {v}"
        for k, v in used.items()
        if k not in ("name", "detector", "landmarks") and v is not None
    ]
    found_by = str(used.get("detector") or used.get("name")) + (
        f" ({', '.join(extra)})" if extra else ""
    )
    for member in ensemble.members:
        if member.faces and member.face_crop is not None:
            print(
                f"face crops for {member.label}: {member.face_crop.describe(detector=False)}, "
                f"faces found by {found_by}; from {member.face_crop_from}",
                file=sys.stderr,
                flush=True,
            )
    return Fixed(detector)


def check_clip_options(ensemble: Any, args: argparse.Namespace) -> None:
    """A clip detector takes --clips; the options that only make sense per frame are refused.
    Prints one line per clip member: how its clips are sampled."""
    clips = [m for m in ensemble.members if getattr(m.detector, "input_kind", "image") == "clip"]
    if not clips:
        return
    for member in clips:
        stride = int(member.detector.clip_stride)
        print(
            f"clips for {member.label}: {getattr(args, 'clips', 4)} per video, "
            f"{member.detector.clip_len} frames {stride * member.frame_step} video frame(s) "
            f"apart (clip_stride {stride} x the training cache's window stride "
            f"{member.frame_step}), each from one tracked face"
            + ("" if member.faces else " (--faces off: whole frames)"),
            file=sys.stderr,
            flush=True,
        )
    if getattr(args, "stability", False):
        raise UserError(
            "--stability re-scores laundered copies of images and frames; clip detectors have "
            "none yet: drop --stability"
        )


def extras_status(args: argparse.Namespace) -> dict[str, str]:
    from deepsift.scoring.extras import load_optional

    out = {}
    for flag, module, function, key in (
        (args.no_provenance, "deepsift.scoring.provenance", "read_provenance", "provenance"),
        (args.no_pdq, "deepsift.scoring.pdq", "pdq_hash", "pdq"),
    ):
        if flag:
            out[key] = "off"
        else:
            found, why = load_optional(module, function)
            out[key] = "on" if found else f"unavailable: {why}"
    return out


def score(args: argparse.Namespace) -> dict[str, Any]:
    from deepsift.scoring.calibration import DEFAULT_BANDS, load_calibration
    from deepsift.scoring.inputs import check_manifest
    from deepsift.scoring.output import open_output
    from deepsift.scoring.runner import Scorer, Stats

    inputs = [*args.inputs, *(f"@{path}" for path in args.from_file)]
    if not inputs:
        raise UserError("nothing to score: pass files, folders, patterns or --from-file LIST")
    for path in args.from_file:
        check_manifest(path)  # a manifest without a path column fails before --out is opened
    if args.engine == "ray":
        return score_on_ray(args, inputs)
    device, amp = resolve(args)
    refuse_decode_cuda_early(args, device)
    ensemble = ensemble_from_args(args, device)
    check_clip_options(ensemble, args)
    bands = (
        load_calibration(args.calibration, ensemble.identity())
        if args.calibration
        else DEFAULT_BANDS
    )
    options = run_options(args, inputs, device, amp)
    choice = decode_choice(args, ensemble, device, "local")  # before --out is opened
    options.decode_on_device = choice.on_device
    out = Path(args.out)
    staging = out.with_name(out.name + ".part.jsonl")  # --format parquet
    options.input_options.exclude = frozenset(
        os.path.realpath(p) for p in (out, summary_path(out), staging)
    )
    factory = face_factory(ensemble, args.face_detector)
    stats = Stats()
    sink = open_output(
        out, args.format, resume=args.resume, overwrite=args.overwrite, on_record=stats.add
    )
    try:
        summary = Scorer(ensemble, bands, options, sink, factory, stats).run()
        if not summary["this_run"]["interrupted"] and hasattr(sink, "finish"):
            sink.finish()  # parquet: staged JSONL -> --out, atomically
    finally:
        sink.close()
    summary = {"output": str(out), "format": sink.format, **summary, **extras_status(args)}
    settings = getattr(getattr(factory, "detector", None), "settings", None)
    if callable(settings):
        summary["face_detector"] = settings()
    summary["device"] = str(device)
    summary["decode_device"] = {**choice.to_dict(), **summary["decode_device"]}
    summary["batch_size"] = options.batch_size
    summary["workers"] = options.workers
    path = summary_path(out)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_summary(summary, path)
    if summary["this_run"]["interrupted"]:
        sys.exit(130)
    return summary


def _named_clip_detector(args: argparse.Namespace) -> str | None:
    """The first clip detector that --detector or --ensemble names by config name (no model
    is built: the class is read from the config); None when there is none or only checkpoints."""
    import importlib

    from detectors.factory import detector_config, list_detectors

    names = [args.detector] if args.detector else []
    if args.ensemble and not args.ensemble.lower().endswith((".yaml", ".yml")):
        names += [entry.strip().partition(":")[0] for entry in args.ensemble.split(",")]
    for name in names:
        if name not in list_detectors():
            continue
        module, _, cls = str(detector_config(name)["_target_"]).rpartition(".")
        try:
            kind = getattr(getattr(importlib.import_module(module), cls), "input_kind", "image")
        except (ImportError, AttributeError):
            continue
        if kind == "clip":
            return name
    return None


def score_on_ray(args: argparse.Namespace, inputs: list[str]) -> dict[str, Any]:
    """``--engine ray``: every engine check first (nothing is written on a bad setting),
    then :func:`deepsift.scoring.ray_engine.score_ray` into --out."""
    import functools

    import torch

    from deepsift.scoring.accel import resolve_precision
    from deepsift.scoring.calibration import DEFAULT_BANDS, load_calibration
    from deepsift.scoring.models import load_ensemble
    from deepsift.scoring.output import open_output
    from deepsift.scoring.ray_engine import score_ray, start_ray
    from deepsift.scoring.runner import Stats

    out = Path(args.out)
    shard_dir = out.with_name(out.name + ".shards")
    if args.resume and not shard_dir.is_dir():
        raise UserError(
            f"--engine ray --resume continues from {shard_dir}, which does not exist "
            "(the run finished, or never started); pass --overwrite to score again"
        )
    # the model actors' device: start_ray refuses --gpus-per-worker > 0 without cluster GPUs
    refuse_decode_cuda_early(args, torch.device("cuda" if args.gpus_per_worker > 0 else "cpu"))
    named = _named_clip_detector(args)
    if named:
        raise UserError(
            f"--engine ray does not score clips ({named} is a clip detector) yet; "
            "use --engine local"
        )
    start_ray(args.ray_address, args.gpus_per_worker, args.model_workers)
    load = functools.partial(
        load_ensemble,
        checkpoint=args.checkpoint,
        detector=args.detector,
        weights=args.weights,
        overrides=args.set,
        ensemble=args.ensemble,
        faces=args.faces,
        combine=args.combine,
        face_overrides=face_overrides(args),
    )
    ensemble = load()  # a bad detector or weights file fails here, in one line
    if any(getattr(m.detector, "input_kind", "image") == "clip" for m in ensemble.members):
        raise UserError(
            "--engine ray does not score clips (clip detectors) yet; use --engine local"
        )
    faces = face_factory(ensemble, args.face_detector)  # face members: as the local engine
    bands = (
        load_calibration(args.calibration, ensemble.identity())
        if args.calibration
        else DEFAULT_BANDS
    )
    device = torch.device("cuda" if args.gpus_per_worker > 0 else "cpu")
    resolve_precision(args.precision, device, bf16_supported=True)  # fp16 on CPU: refused here
    options = run_options(args, inputs, device, None)
    options.workers = 0
    choice = decode_choice(args, ensemble, device, "ray")  # cuda: refused before --out opens
    options.decode_on_device = choice.on_device
    options.input_options.exclude = frozenset(os.path.realpath(p) for p in (out, summary_path(out)))
    stats = Stats()
    # --resume: --out is rewritten whole from the committed shards
    sink = open_output(out, args.format, overwrite=args.overwrite or args.resume)
    try:
        run = score_ray(
            load,
            bands,
            options,
            sink,
            shard_dir=shard_dir,
            resume=args.resume,
            model_workers=args.model_workers,
            gpus_per_worker=args.gpus_per_worker,
            items_per_shard=args.items_per_shard,
            precision=args.precision,
            on_record=stats.add,
            ensemble=ensemble,
            face_factory=faces,
        )
        if hasattr(sink, "finish"):
            sink.finish()  # parquet: merged records -> --out, atomically
    finally:
        sink.close()
    decoded = run.pop("decode_device")
    summary = {
        "output": str(out),
        "format": sink.format,
        **stats.to_dict(),
        "this_run": {**run, "pictures_per_s": None, "interrupted": False},
        "calibrated": bands.calibrated,
        "calibration_file": bands.source,
        "thresholds": bands.thresholds(),
        "engine": "ray",
        "ray_address": args.ray_address,
        "model_workers": args.model_workers,
        "gpus_per_worker": args.gpus_per_worker,
        "items_per_shard": args.items_per_shard,
        "precision": args.precision,
        "decode_device": {**choice.to_dict(), **decoded},
        "batch_size": options.batch_size,
        **extras_status(args),
    }
    path = summary_path(out)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_summary(summary, path)
    return summary


def print_summary(summary: dict[str, Any], path: Path) -> None:
    run = summary["this_run"]
    bands = ", ".join(f"{k} {v}" for k, v in summary["bands"].items())
    lines = [
        f"scored {run['items']} items in {run['elapsed_s']:.1f} s ({run['items_per_s'] or 0:.1f} items/s, "
        f"{run['pictures_per_s'] or 0:.1f} pictures/s); {summary['items']} in {summary['output']}",
        f"bands: {bands}" + ("" if summary["calibrated"] else " (uncalibrated default thresholds)"),
        f"not applicable {summary['not_applicable']}, errors {summary['errors']}, "
        f"duplicates {summary['duplicates']}, unstable {summary['unstable']}",
        f"summary: {path}",
    ]
    if run["interrupted"]:
        lines.insert(0, "interrupted: pass --resume to continue")
    print("\n".join(lines), file=sys.stderr, flush=True)


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from deepsift.scoring.calibration import (
        DEFAULT_BANDS,
        fit_thresholds,
        labelled_paths,
        write_calibration,
    )
    from deepsift.scoring.output import PART_KINDS
    from deepsift.scoring.runner import MemorySink, Scorer

    device, amp = resolve(args)
    ensemble = ensemble_from_args(args, device)
    pairs = labelled_paths(args.calibrate)
    labels = dict(pairs)
    args.no_provenance = args.no_pdq = True
    args.stability = False
    options = run_options(args, [path for path, _ in pairs], device, amp)
    sink = MemorySink()
    Scorer(ensemble, DEFAULT_BANDS, options, sink, face_factory(ensemble, args.face_detector)).run()
    scored = [r for r in sink.records if r["kind"] not in PART_KINDS and r["score"] is not None]
    unscored = [r for r in sink.records if r["kind"] not in PART_KINDS and r["score"] is None]
    fit = fit_thresholds(
        np.array([labels[r["path"]] for r in scored]),
        np.array([r["score"] for r in scored]),
        args.fpr_likely,
        args.fpr_synthetic,
        args.fnr_authentic,
    )
    write_calibration(
        args.out,
        fit,
        ensemble.identity(),
        source=str(args.calibrate),
        n_unscored=len(unscored),
        settings={"faces": args.faces, "video_aggregation": args.video_aggregation},
    )
    t = fit["thresholds"]
    print(
        f"calibration written to {args.out}: authentic < {t['authentic_below']:.4g} <= uncertain < "
        f"{t['likely_synthetic_from']:.4g} <= likely_synthetic < {t['synthetic_from']:.4g} <= synthetic "
        f"({fit['n_real']} real, {fit['n_synthetic']} synthetic, {len(unscored)} unscored)",
        file=sys.stderr,
    )
    for warning in fit["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return fit


def main(argv: list[str] | None = None) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    with user_errors():
        if args.calibrate:
            return calibrate(args)
        return score(args)

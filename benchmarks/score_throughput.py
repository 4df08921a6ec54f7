"""End-to-end throughput of ``score.py`` against the model alone and a naive loop.

    python -m benchmarks.score_throughput [--n 256] [--size 256] [--batch 32]
        [--detector cnnspot] [--set key=value ...] [--device auto] [--workers N]
        [--decode-device cpu|cuda|both|auto]
        [--engine ray [--model-workers 1] [--items-per-shard 32] [--manifest 100000]]

Generates ``--n`` JPEG files (photo-like content, quality 90, ``--size`` pixels
square) in a temporary folder, then measures images per second for:

* **model only**: the detector's forward pass on ready tensors of its input
  shape, same batch size and precision, no decoding at all;
* **score.py**: the full pipeline (enumeration, reading, sha256, decoding,
  preprocessing in worker processes, batching, forward, JSONL writing), with
  provenance and PDQ off (``--extras`` also times them on);
* with ``--decode-device cuda`` (or ``both``): score.py with the JPEGs decoded by nvJPEG
  in the model process and preprocessed on the GPU (:mod:`deepsift.scoring.decode_device`);
  ``both`` times the CPU-decoding and GPU-decoding pipelines side by side (with
  ``--engine ray`` on CUDA: also on Ray, one GPU per model actor, the actors decoding);
* **naive loop**: one process, ``batch`` images at a time: PIL decode, the
  detector's transform, stack, forward.

Prints a Markdown table with each rate and its ratio to the model alone. The
target on CPU is score.py >= 0.9 x model only. The modes run in ``--repeats``
interleaved rounds and the best rate of each is kept, so a load spike on a
shared machine does not favour one mode; a warm-up pass runs first.

``--engine ray`` also times ``score.py --engine ray`` on a local Ray with the same
cores, and ``--manifest N`` then scores a manifest of N paths (missing files: each
gets its error record, so listing, tasks, shards and merging are timed, not decoding)
and prints the growth of the driver's resident memory (VmRSS, sampled every 20 ms).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepsift.core.runtime import autocast, autocast_dtype


def make_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), np.float32)
        noisy = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(path)
    return paths


def model_only(detector, images: torch.Tensor, n: int, device, amp) -> float:
    """Forward passes on one batch of real, already preprocessed images (random tensors
    would not have the activation statistics of images)."""
    images = images.to(device)
    steps = max(1, n // len(images))
    with torch.no_grad(), autocast(device, amp):
        detector({"image": images})
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            detector({"image": images})["logits"].float().cpu()
        _sync(device)
    return steps * len(images) / (time.perf_counter() - start)


def ready_batch(detector, paths: list[Path]) -> torch.Tensor:
    samples = []
    for path in paths:
        with Image.open(path) as image:
            samples.append(detector.eval_transform({"image": image.convert("RGB"), "record": None}))
    return torch.utils.data.default_collate(samples)["image"]


def naive_loop(detector, paths: list[Path], batch: int, device, amp) -> float:
    def run(chunk: list[Path]) -> None:
        samples = []
        for path in chunk:
            with Image.open(path) as image:
                samples.append(
                    detector.eval_transform({"image": image.convert("RGB"), "record": None})
                )
        tensors = torch.utils.data.default_collate(samples)
        with torch.no_grad(), autocast(device, amp):
            detector({k: v.to(device) for k, v in tensors.items()})["logits"].float().cpu()

    run(paths[:batch])  # warm-up
    timed = paths[batch:]
    start = time.perf_counter()
    for i in range(0, len(timed), batch):
        run(timed[i : i + batch])
    _sync(device)
    return len(timed) / (time.perf_counter() - start)


def end_to_end(
    ensemble,
    folder: Path,
    out: Path,
    batch: int,
    workers: int,
    device,
    amp,
    extras: bool,
    decode_on_device: bool = False,
) -> float:
    from deepsift.scoring.calibration import DEFAULT_BANDS
    from deepsift.scoring.output import OutputFile
    from deepsift.scoring.prepare import PrepareOptions
    from deepsift.scoring.runner import RunOptions, Scorer

    options = RunOptions(
        inputs=[str(folder)],
        batch_size=batch,
        workers=workers,
        device=device,
        amp_dtype=amp,
        progress=False,
        prepare_options=PrepareOptions(provenance=extras, pdq=extras),
        decode_on_device=decode_on_device,
    )
    sink = OutputFile(out, overwrite=True)
    try:
        summary = Scorer(ensemble, DEFAULT_BANDS, options, sink).run()
    finally:
        sink.close()
    return summary["this_run"]["items"] / summary["this_run"]["elapsed_s"]


def end_to_end_ray(
    load,
    inputs: list[str],
    out: Path,
    batch: int,
    model_workers: int,
    items_per_shard: int,
    gpus_per_worker: float = 0.0,
    on_device: bool = False,
) -> tuple[float, int]:
    """``--engine ray`` on the local Ray that main() started (actor start-up included):
    items/s and the items scored. ``gpus_per_worker`` > 0: the model actors on GPUs;
    ``on_device``: JPEGs decoded by the actors (``--decode-device cuda``)."""
    from deepsift.scoring.calibration import DEFAULT_BANDS
    from deepsift.scoring.output import OutputFile
    from deepsift.scoring.prepare import PrepareOptions
    from deepsift.scoring.ray_engine import score_ray
    from deepsift.scoring.runner import RunOptions

    options = RunOptions(
        inputs=inputs,
        batch_size=batch,
        workers=0,
        progress=False,
        prepare_options=PrepareOptions(provenance=False, pdq=False),
        decode_on_device=on_device,
    )
    sink = OutputFile(out, overwrite=True)
    try:
        run = score_ray(
            load,
            DEFAULT_BANDS,
            options,
            sink,
            shard_dir=out.with_name(out.name + ".shards"),
            model_workers=model_workers,
            gpus_per_worker=gpus_per_worker,
            items_per_shard=items_per_shard,
        )
    finally:
        sink.close()
    return run["items"] / run["elapsed_s"], run["items"]


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def manifest_rss(load, tmp: Path, n: int, batch: int, model_workers: int, shard: int) -> str:
    """Score a manifest of ``n`` missing paths on Ray; the driver's VmRSS growth while it runs."""
    import threading

    manifest = tmp / "manifest.csv"
    with manifest.open("w") as handle:
        handle.write("path\n")
        for i in range(n):
            handle.write(f"{tmp}/missing/{i:07d}-{'x' * 60}.jpg\n")
    before = _rss_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rate, items = end_to_end_ray(
            load, [f"@{manifest}"], tmp / "manifest.jsonl", batch, model_workers, shard
        )
    finally:
        done.set()
        sampler.join()
    return (
        f"manifest of {n} paths on Ray ({items} records, {rate:.0f} items/s): driver VmRSS "
        f"{before:.0f} -> peak {peak[0]:.0f} MiB (+{peak[0] - before:.0f} MiB)"
    )


def _decode_modes(requested: str, ensemble, device) -> list[bool]:
    """``--decode-device`` as the pipelines to time: False = CPU decoding, True = on the GPU
    (refused in one line, as score.py refuses it, where it cannot run)."""
    from deepsift.core.errors import UserError
    from deepsift.scoring.decode_device import resolve_decode_device

    members = [(m.label, m.detector) for m in ensemble.members]
    try:
        if requested == "cpu":
            return [False]
        if requested == "auto":
            return [resolve_decode_device("auto", device, members, []).on_device]
        resolve_decode_device("cuda", device, members, [])
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    return [True] if requested == "cuda" else [False, True]


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    from deepsift.app.score_cli import default_workers
    from deepsift.scoring.models import load_ensemble

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=256, help="JPEG files generated")
    parser.add_argument("--size", type=int, default=256, help="their side in pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--detector", default="cnnspot")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--decode-device",
        choices=("cpu", "cuda", "both", "auto"),
        default="cpu",
        help="where score.py decodes the JPEGs (cuda: nvJPEG in the model process; both: "
        "time both pipelines; auto: as score.py's default would choose)",
    )
    parser.add_argument(
        "--extras", action="store_true", help="also time score.py with provenance and PDQ"
    )
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: also time score.py --engine ray on a local Ray with the same cores",
    )
    parser.add_argument("--model-workers", type=int, default=1, help="--engine ray actors")
    parser.add_argument(
        "--items-per-shard", type=int, default=32, help="--engine ray: items per chunk/shard"
    )
    parser.add_argument(
        "--manifest", type=int, default=0, help="--engine ray: also score N missing paths"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of all modes; the best of each is shown"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    amp = autocast_dtype(device, args.precision)
    workers = default_workers(device.type) if args.workers is None else args.workers
    ensemble = load_ensemble(detector=args.detector, overrides=args.set).to(device)
    detector = ensemble.members[0].detector
    decode_modes = _decode_modes(args.decode_device, ensemble, device)
    best: dict[str, float] = {}
    ray_mode = f"score.py --engine ray ({args.model_workers} model workers)"
    if args.engine == "ray":
        import functools

        import ray

        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 2
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        load = functools.partial(load_ensemble, detector=args.detector, overrides=args.set)

    def keep(name: str, rate: float) -> None:
        best[name] = max(best.get(name, 0.0), rate)

    e2e = f"score.py end to end ({workers} workers)"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        paths = make_jpegs(folder, args.n, args.size)
        batch = ready_batch(detector, paths[: args.batch])
        shape = tuple(batch.shape[1:])
        # warm-up pass of the pipeline (first forward, worker start-up, page cache)
        for on_device in decode_modes:
            end_to_end(
                ensemble,
                folder,
                Path(tmp) / "warm.jsonl",
                args.batch,
                workers,
                device,
                amp,
                False,
                on_device,
            )
        for _ in range(args.repeats):  # modes interleaved, best of each: load spikes hit all alike
            keep(
                "model only (forward on ready tensors)",
                model_only(detector, batch, args.n, device, amp),
            )
            out = Path(tmp) / "e2e.jsonl"
            for on_device in decode_modes:
                rate = end_to_end(
                    ensemble, folder, out, args.batch, workers, device, amp, False, on_device
                )
                keep(f"{e2e}, JPEGs decoded on {'the GPU' if on_device else 'CPU'}", rate)
            if args.extras:
                out = Path(tmp) / "x.jsonl"
                keep(
                    "score.py with provenance + PDQ",
                    end_to_end(ensemble, folder, out, args.batch, workers, device, amp, True),
                )
            if args.engine == "ray":  # the actors on GPUs when the model is on CUDA
                out = Path(tmp) / "ray.jsonl"
                for on_device in decode_modes:
                    rate, _ = end_to_end_ray(
                        load,
                        [str(folder)],
                        out,
                        args.batch,
                        args.model_workers,
                        args.items_per_shard,
                        1.0 if device.type == "cuda" else 0.0,
                        on_device,
                    )
                    keep(f"{ray_mode}, JPEGs decoded on {'the GPU' if on_device else 'CPU'}", rate)
            keep(
                "naive loop (PIL, transform, forward; 1 process)",
                naive_loop(detector, paths, args.batch, device, amp),
            )
        manifest = None
        if args.engine == "ray" and args.manifest:
            manifest = manifest_rss(
                load, Path(tmp), args.manifest, args.batch, args.model_workers, 4096
            )
    local = next(name for name in best if name.startswith(e2e))
    on_ray = next((name for name in best if name.startswith(ray_mode)), None)
    rows = list(best.items())
    base = rows[0][1]
    print(
        f"\n{args.detector} {' '.join(args.set)} input {tuple(shape)}, batch {args.batch}, "
        f"{args.n} JPEGs of {args.size} px, device {device}, precision {amp or 'fp32'}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats} interleaved rounds\n"
    )
    print("| mode | images/s | x model only |\n|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / base:.2f} |")
    if args.engine == "ray":
        print(
            f"\nscore.py --engine ray / local: {best[on_ray] / best[local]:.2f}; "
            f"peak RSS of this process {_peak_rss_mib():.0f} MiB (Ray workers not included)"
        )
    if manifest:
        print(manifest)


if __name__ == "__main__":
    main()

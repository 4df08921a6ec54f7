"""Training images per second: the whole loop against the model alone.

    python -m benchmarks.train_step [--detectors sbi npr ...] [--batch-size 16] [--steps 6]
                                    [--workers 0 2] [--side 400] [--landmarks]
                                    [--device auto] [--precision auto]

For each detector, two rates over the same images:

* **full loop**: what ``train.py`` runs — the records read from disk and turned into
  tensors by the detector's training transform in ``--workers`` DataLoader workers
  (``deepsift.engine.loops.make_loader`` with the trainer's defaults), then
  ``train_one_epoch`` (autocast, channels-last and the grad scaler as ``train.py``
  sets them);
* **model only**: the same number of optimiser steps on batches already transformed
  and held in memory (on the device), so only the model's forward, backward and
  step are timed.

``full / model`` is the share of the model's speed the data path lets through: at
1.0 the GPU (or CPU) never waits for data. Images are ``--side`` px RGB noise saved
as PNG; ``--landmarks`` gives each record a template 81-point face, so SBI and Face
X-ray blend along landmark hulls instead of their ellipse fallback. Prints a
Markdown table; the first batch of each measurement is a warm-up and not timed.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepsift.core.records import Record, RecordDataset
from deepsift.core.runtime import autocast_dtype, resolve_device
from deepsift.engine.loops import good_batches, make_loader, train_one_epoch, wrap_for_training
from detectors import detector_config, list_detectors, load_detector


def make_records(root: Path, n: int, side: int, landmarks: bool) -> list[Record]:
    rng = np.random.default_rng(0)
    extra = {}
    if landmarks:
        from detectors.layers.blending import template_landmarks

        path = root / "landmarks.npy"
        np.save(path, template_landmarks(side, side, forehead=True))
        extra = {"landmarks": str(path)}
    records = []
    for i in range(n):
        path = root / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        records.append(Record(str(path), i % 2, extra=dict(extra)))
    return records


def build(name: str, device: torch.device, channels_last: bool):
    overrides = {"random_init": True} if "random_init" in detector_config(name) else {}
    detector = load_detector(name, **overrides).to(device)
    if channels_last:
        detector = detector.to(memory_format=torch.channels_last)
    optimizer, _ = detector.configure_optimizers()
    return detector, optimizer


def full_loop(name, records, args, device, amp, channels_last) -> float:
    detector, optimizer = build(name, device, channels_last)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 and optimizer else None
    step_fn = wrap_for_training(detector, device)
    dataset = RecordDataset(records, detector.train_transform)
    sampler = torch.utils.data.SequentialSampler(dataset)

    def run(limit: int) -> None:
        loader = make_loader(
            dataset,
            args.batch_size,
            args.workers,
            sampler,
            seed=0,
            pin_memory=device.type == "cuda",
        )
        train_one_epoch(
            step_fn, detector, loader, optimizer, device, amp, scaler,
            channels_last=channels_last, limit_batches=limit,
        )  # fmt: skip

    run(1)  # warm-up: workers start, kernels compile
    _sync(device)
    start = time.perf_counter()
    run(args.steps)
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def model_only(name, records, args, device, amp, channels_last) -> float:
    detector, optimizer = build(name, device, channels_last)
    step_fn = wrap_for_training(detector, device)
    dataset = RecordDataset(records, detector.train_transform)
    loader = make_loader(dataset, args.batch_size, 0, torch.utils.data.SequentialSampler(dataset))
    batches = list(good_batches(loader, [], device, channels_last, limit_batches=args.steps + 1))
    detector.train()

    def step(batch) -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = step_fn(batch).get("loss")
        if loss is not None and optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    step(batches[0])
    _sync(device)
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    _sync(device)
    return (len(batches) - 1) * args.batch_size / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detectors", nargs="*", default=None, help="names (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed optimiser steps")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--side", type=int, default=400, help="image side in pixels")
    parser.add_argument("--landmarks", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto, 32, bf16 or 16")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = resolve_device(args.device)
    amp = autocast_dtype(device, args.precision)
    channels_last = (
        device.type == "cuda" if args.channels_last == "auto" else args.channels_last == "on"
    )
    root = Path(tempfile.mkdtemp(prefix="train_step_"))
    records = make_records(root, (args.steps + 1) * args.batch_size, args.side, args.landmarks)
    print(
        f"{device} ({'AMP ' + str(amp).removeprefix('torch.') if amp else 'fp32'}"
        f"{', channels-last' if channels_last else ''}), torch threads "
        f"{torch.get_num_threads()}, batch {args.batch_size}, {args.steps} timed steps, "
        f"{args.workers} workers, {args.side} px{', landmarks' if args.landmarks else ''}\n"
    )
    print("| detector | full loop images/s | model only images/s | full / model |")
    print("|---|---:|---:|---:|")
    for name in args.detectors or list_detectors():
        try:
            model = model_only(name, records, args, device, amp, channels_last)
            full = full_loop(name, records, args, device, amp, channels_last)
        except Exception as exc:  # one row per detector, whatever happens
            print(f"| {name} | error: {str(exc).splitlines()[0][:80]} | | |", flush=True)
            continue
        print(f"| {name} | {full:.1f} | {model:.1f} | {full / model:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Forward time per image and parameter count of each detector at its native input size.

    python -m benchmarks.forward_speed [--detectors a b] [--batch 16] [--repeats 5] [--device cpu]
        [--threads 1] [--clock wall|cpu]

Prints a Markdown table. Closed-form detectors that need fitting are fitted on
random data first, and CLIP-based detectors use a random encoder (speed depends
on neither). Parameters are those in ``state_dict`` order: fitted buffers of
closed-form detectors and frozen CLIP encoders kept outside the module are not
counted.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

from detectors import detector_config, list_detectors, load_detector
from detectors.base import count_parameters


def is_clip_detector(name: str) -> bool:
    target = str(detector_config(name).get("_target_", ""))
    module, _, cls = target.rpartition(".")
    return getattr(getattr(importlib.import_module(module), cls), "input_kind", "image") == "clip"


def time_forward(
    name: str, batch: int, repeats: int, device: str, clock: str = "wall"
) -> tuple[int, int, float]:
    # CLIP-based detectors need local encoder weights; speed does not depend on them
    overrides = {"random_init": True} if "random_init" in detector_config(name) else {}
    detector = load_detector(name, **overrides).to(device).eval()
    size = detector.preprocessing.size
    # detectors that stack several views of a picture (AIDE: 4 patches and the picture)
    views = getattr(detector, "input_views", None)
    shape = (batch, views, 3, size, size) if views else (batch, 3, size, size)
    images = torch.randn(*shape, device=device)
    if (
        not detector.fits_by_gradient
    ):  # closed-form: fit once (on both classes) so forward is defined
        detector.train()
        fit = torch.randn(4, *shape[1:], device=device)
        detector.training_step(
            {"image": fit, "label": torch.tensor([0.0, 1.0, 0.0, 1.0], device=device)}
        )
        detector.on_train_epoch_end()
        detector.eval()
    with torch.no_grad():
        detector({"image": images})  # warm-up
        # process CPU time (all threads) is what one forward costs whatever else runs on the
        # machine; wall time is what a user waits on an idle one
        timer = time.process_time if clock == "cpu" else time.perf_counter
        times = []
        for _ in range(repeats):
            start = timer()
            detector({"image": images})
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(timer() - start)
    return count_parameters(detector), size, statistics.median(times) / batch * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detectors", nargs="*", default=None, help="names (default: all)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (steadier on a shared machine; use with "
        "--threads 1; CPU only)",
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures CPU time: use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"batch {args.batch}, {args.clock} clock\n"
    )
    print("| detector | parameters | input | ms / image |")
    print("|---|---:|---:|---:|")
    for name in args.detectors or list_detectors():
        if is_clip_detector(name):  # clips of T frames: benchmarks.clip_cost times those
            print(f"| {name} | clip detector: see python -m benchmarks.clip_cost | | |")
            continue
        params, size, ms = time_forward(name, args.batch, args.repeats, args.device, args.clock)
        print(f"| {name} | {params:,} | {size}×{size} | {ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""``python -m datasets.embedded``: build (or find) the embedded benchmark and print its counts."""

from __future__ import annotations

import argparse
import json
import logging
import time

from datasets.embedded.build import SPLITS, build_embedded_benchmark
from datasets.embedded.source import families
from deepsift.core.errors import user_errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datasets.embedded", description=__doc__)
    parser.add_argument(
        "--root", default=None, help="cache root (default: $DEEPSIFT_CACHE_DIR or the user cache)"
    )
    parser.add_argument(
        "--data-version", type=int, default=2, choices=(1, 2), help="benchmark version"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crops-per-photo", type=int, default=300)
    parser.add_argument(
        "--ae-steps", type=int, default=350, help="training steps of each generator"
    )
    parser.add_argument(
        "--photos", nargs="+", default=None, help="photo names (default: all shipped)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with user_errors():
        start = time.perf_counter()
        path = build_embedded_benchmark(
            args.root,
            force=args.force,
            version=args.data_version,
            progress=not args.quiet,
            seed=args.seed,
            crops_per_photo=args.crops_per_photo,
            ae_steps=args.ae_steps,
            photos=args.photos,
        )
        elapsed = time.perf_counter() - start
    manifest = json.loads((path / "manifest.json").read_text())
    print(f"embedded benchmark: {path}")
    print(f"build time {manifest['build_seconds']:.1f}s (this call {elapsed:.1f}s)")
    header = ["split", "real", *families(args.data_version)]
    print("  ".join(f"{h:>12}" for h in header))
    for split in SPLITS:
        counts = manifest["counts"][split]
        print("  ".join(f"{v:>12}" for v in [split, *(counts[g] for g in header[1:])]))
    for split in SPLITS:
        print(f"{split} photos: {', '.join(manifest['splits'][split])}")
    print(
        "mean |fake - real| (grey levels): "
        + ", ".join(f"{g} {v:.2f}" for g, v in manifest["mean_abs_diff"].items())
    )
    for family, gap in manifest.get("spectrum_gap", {}).items():
        print(
            f"spectrum gap {family}: all radii {gap['unmatched']['all']:.3f} -> "
            f"{gap['stored']['all']:.3f}, upper half {gap['unmatched']['upper']:.3f} -> "
            f"{gap['stored']['upper']:.3f} (unmatched -> stored)"
        )


if __name__ == "__main__":
    main()

"""In-family and cross-family ROC-AUC of each detector on the embedded benchmark.

    python -m benchmarks.embedded_zoo [--detectors npr cnnspot ...] [--epochs 3]
        [--limit-train-batches 40] [--train-family tconv] [--data-version 2] [--out runs/zoo]

Each detector is trained with ``train.py``'s own code path (``deepsift.app.training.train``)
on one generator family of the embedded benchmark, selected on that family's
val split, and tested on the held-out photos of every family. The embedded
images are 64 px, so every detector reads them at 64 px with no resize (CLIP
encoders, whose position embeddings fix 224 px, get a 224 px resize); that and
the short budget (``--epochs``, ``--limit-train-batches``) are the only changes
to each detector's config, and both are printed with the table. Detectors whose
encoder weights cannot be had offline (UnivFD, ClipBased, clip_face, RINE) are
skipped unless ``--clip-file`` gives a local CLIP file.

Prints a Markdown table and writes it, with every run's metrics, to
``<out>/zoo.json`` and ``<out>/zoo.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from datasets.embedded import families
from detectors import detector_config, list_detectors
from detectors.base import count_parameters

CLIP_DETECTORS = {"univfd", "clipbased", "clip_face", "rine"}
#: detectors with a head or teacher per manipulation method (UCF, LSDA): the training family
#: is the one method
METHOD_HEADS = {"lsda", "ucf"}
#: fixed input size (dense layers): keep their own preprocessing (resize to native size)
NATIVE_SIZE_ONLY = {"meso4", "mesoinception4"}
#: detector-specific overrides at 64 px: B-Free tiles a patch grid smaller than its 504 px
#: crop up to 36 x 36 patches (five ViT passes over 1,296 tokens per image); a 56 px crop
#: (4 x 4 patches) reads the 64 px image as it is
EXTRA_OVERRIDES = {
    "bfree": ["detector.crop_size=56"],
    # UIA-ViT's ViT-B/16 at 64 px: a 4 x 4 patch grid (its position embeddings are built for
    # img_size), the fake Gaussian's inner rows/columns scaled from 3..11 of 14 to 1..3 of 4,
    # and its progressive schedule counted in this budget's batches
    "uia_vit": ["detector.img_size=64", "detector.inner=[1,3]", "detector.batch_per_epoch=20"],
}


def size_overrides(name: str, size: int) -> list[str]:
    """Read the 64 px embedded images as they are: no resize, centre crop of ``size``."""
    if name in NATIVE_SIZE_ONLY:
        return []
    config = detector_config(name)
    groups = ["preprocessing"] + (
        ["train_preprocessing"] if "train_preprocessing" in config else []
    )
    out = []
    for group in groups:
        node = config.get(group) or {}
        prefix = f"detector.{group}"
        if name in CLIP_DETECTORS:
            pairs = {"size": 224, "resize": "square", "resize_to": 224, "crop": "center"}
        else:
            pairs = {"size": size, "resize": "none", "crop": "center"}
        for key, value in pairs.items():
            out.append(f"{prefix}.{key}={value}" if key in node else f"+{prefix}.{key}={value}")
    return out


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from deepsift.app.training import train
    from deepsift.core.configs import compose
    from detectors import load_detector

    overrides = [
        f"detector={name}",
        "data=embedded",
        f"data.version={args.data_version}",
        f"data.train_generators=[{args.train_family}]",
        "trainer=cpu",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.num_workers={args.num_workers}",
        "eval_splits=[val,test]",
        "logger=none",
        "metrics.plots=false",
        f"seed={args.seed}",
        *size_overrides(name, 64),
    ]
    if args.limit_train_batches:
        overrides.append(f"trainer.limit_train_batches={args.limit_train_batches}")
    if name in CLIP_DETECTORS:
        overrides.append(f"detector.backbone_file={args.clip_file}")
    if name in METHOD_HEADS:
        overrides.append(f"detector.methods=[{args.train_family}]")
    overrides += EXTRA_OVERRIDES.get(name, [])
    run_dir = Path(args.out) / name
    start = time.perf_counter()
    results = train(compose("train", overrides, run_dir=run_dir))
    minutes = (time.perf_counter() - start) / 60
    test = results["test"]
    val_auc = (results.get("val") or {}).get("frame", {}).get("auc", math.nan)
    by_family = {
        f: test["by_generator"].get(f, {}).get("auc", math.nan) for f in families(args.data_version)
    }
    cross = [v for f, v in by_family.items() if f != args.train_family]
    params = count_parameters(
        load_detector(name, **({"random_init": True} if name in CLIP_DETECTORS else {}))
    )
    return {
        "detector": name,
        "parameters": params,
        "in_family_auc": by_family[args.train_family],
        "cross_family_auc": sum(cross) / len(cross),
        "by_family_auc": by_family,
        "test_auc_all": test["frame"]["auc"],
        "val_auc": val_auc,
        "minutes": minutes,
        "budget": f"{args.epochs}x{args.limit_train_batches or 'all'}",
        "overrides": overrides,
        "run_dir": str(run_dir),
    }


def table(rows: list[dict[str, Any]], train_family: str, version: int = 2) -> str:
    others = [f for f in families(version) if f != train_family]
    head = [
        "detector",
        "params",
        f"val ({train_family})",
        f"in-family ({train_family})",
        "cross-family (mean)",
        *others,
        "budget",
        "min",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['detector']} | | {r['error']} |" + " |" * (len(head) - 3))
            continue
        cells = [
            r["detector"],
            f"{r['parameters']:,}",
            f"{r.get('val_auc', math.nan):.3f}",
            f"{r['in_family_auc']:.3f}",
            f"{r['cross_family_auc']:.3f}",
            *(f"{r['by_family_auc'][f]:.3f}" for f in others),
            r.get("budget", ""),
            f"{r['minutes']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detectors", nargs="*", default=None, help="names (default: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-train-batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--data-version", type=int, default=2, choices=(1, 2))
    parser.add_argument("--train-family", default="tconv", choices=families(2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-file", default=None, help="local CLIP weights for CLIP detectors")
    parser.add_argument("--out", default="runs/zoo")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    names = args.detectors or list_detectors()
    rows = []
    for name in names:
        if name in CLIP_DETECTORS and not args.clip_file:
            rows.append({"detector": name, "error": "needs CLIP weights (--clip-file)"})
            continue
        try:
            rows.append(run_one(name, args))
        except Exception as exc:  # one detector's failure must not cost the others
            print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
            # the last line of a worker's traceback is the error itself; one line keeps the table
            last = (str(exc).strip().splitlines() or [""])[-1]
            rows.append({"detector": name, "error": f"{type(exc).__name__}: {last}"[:160]})
        print(table(rows, args.train_family, args.data_version), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows, args.train_family, args.data_version)
    budget = (
        f"seed {args.seed}; {args.epochs} epochs x at most {args.limit_train_batches} batches of "
        f"{args.batch_size}; embedded v{args.data_version}; trained on {args.train_family}, "
        "selected on its val split (val = that AUC); "
        "64 px, no resize (CLIP: 224 px resize; MesoNet: its own 256 px resize); min = wall minutes"
    )
    (out / "zoo.md").write_text(f"{text}\n\n{budget}\n")
    (out / "zoo.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(f"\n{text}\n\n{budget}\nwritten to {out / 'zoo.md'}")


if __name__ == "__main__":
    main()

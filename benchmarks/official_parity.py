"""Worst differences from the authors' code, per official reference, and what a wrong resize costs.

For every ``tests/official/<format>.json`` (or those named), rebuild the official file
as ``tests/test_official_parity.py`` does, load it with ``load_detector(name,
weights=file)`` and print the worst ``|Δlogit|`` and ``|Δprob|`` over the reference
pictures, the spread of the reference logits, and the tolerance the test applies. With
``--sensitivity`` also the worst ``|Δlogit|`` once the loaded detector's resize is
changed (interpolation bilinear <-> bicubic, backend OpenCV <-> Pillow): a test whose
tolerance is above those figures could pass a wrong protocol. The figures for the README's
"verified against the authors' code" column.

    python -m benchmarks.official_parity [--sensitivity] [NAME ...]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detectors import load_detector
from detectors.preprocessing import Preprocessing
from tests.official.images import reference_images
from tests.official.weights import (
    load_reference,
    reference_names,
    write_companions,
    write_official_file,
)

FLIP = {"bilinear": "bicubic", "bicubic": "bilinear", "nearest": "bilinear", "area": "bilinear"}


def logits(detector, images: list[np.ndarray], dtype: torch.dtype) -> np.ndarray:
    """The logit of each picture through ``eval_transform`` and ``forward``, as the test."""
    detector = detector.to(dtype).eval()
    out = []
    with torch.no_grad():
        for array in images:
            sample = detector.eval_transform({"image": Image.fromarray(array), "record": None})
            batch = {
                k: v[None].to(dtype) if v.is_floating_point() else v[None]
                for k, v in sample.items()
                if torch.is_tensor(v)
            }
            out.append(float(detector(batch)["logits"].reshape(-1)[0]))
    return np.array(out, dtype=np.float64)


def measure(name: str, sensitivity: bool) -> str:
    start = time.time()
    reference = load_reference(name)
    tolerance = float(reference.get("tolerance", {}).get("logit", 2e-3))
    dtype = torch.float64 if reference.get("dtype") == "float64" else torch.float32
    expected = np.array(reference["outputs"]["logits"], dtype=np.float64)
    images = reference_images(reference.get("images_seed", 0))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        overrides = dict(reference.get("overrides", {}))
        path = write_official_file(reference, folder / reference.get("filename", f"{name}.pth"))
        overrides = write_companions(reference, folder, overrides)
        detector = load_detector(reference["detector"], weights=str(path), **overrides)
        got = logits(detector, images, dtype)
        prob = 1 / (1 + np.exp(-got))
        cells = [
            name,
            str(reference.get("dtype", "float32")),
            f"{np.abs(got - expected).max():.1e}",
            f"{np.abs(prob - np.array(reference['outputs']['probs'])).max():.1e}",
            f"{np.ptp(expected):.3g}",
            f"{tolerance:g}",
        ]
        if sensitivity:
            loaded = detector.preprocessing.to_dict()
            for field, value in (
                ("interpolation", FLIP[loaded["interpolation"]]),
                ("resize_backend", "pil" if loaded["resize_backend"] == "cv2" else "cv2"),
            ):
                if value == "pil" and loaded["interpolation"] == "area":
                    cells.append("-")
                    continue
                detector.preprocessing = Preprocessing(**{**loaded, field: value})
                cells.append(f"{np.abs(logits(detector, images, dtype) - expected).max():.1e}")
            detector.preprocessing = Preprocessing(**loaded)
    cells.append(f"{time.time() - start:.0f}")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="references (default: all)")
    parser.add_argument("--sensitivity", action="store_true", help="also flip the resize")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    header = ["reference", "dtype", "max Δlogit", "max Δprob", "logit spread", "tolerance"]
    if args.sensitivity:
        header += ["other interpolation", "other backend"]
    print("| " + " | ".join([*header, "s"]) + " |")
    print("|" + "---|" * (len(header) + 1))
    for name in args.names or reference_names():
        print(measure(name, args.sensitivity), flush=True)


if __name__ == "__main__":
    main()

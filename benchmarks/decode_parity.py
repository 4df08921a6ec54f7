"""``--decode-device cuda``'s tensor path against the PIL path, on the CPU.

    python -m benchmarks.decode_parity [--n 6] [--detectors cnnspot,npr,timm_classifier]

For each configuration: generated photo-like JPEGs (64x80 to 1024x768 px, 4:2:0 and
4:4:4, quality 75-95) and the JPEGs of the score.py test fixtures are decoded twice:
by Pillow and the detector's own transform (what ``--decode-device cpu`` scores), and
by torchvision's CPU ``decode_jpeg`` and
:func:`deepsift.scoring.decode_device.tensor_preprocess` (the code ``cuda`` runs, here on
the CPU). Prints the largest difference of the decoded pixels and of the model inputs in
grey levels (input difference x std x 255) and of the scores (probabilities) of the
detector, randomly initialised with seed 0 (no weights needed; a trained detector's
scores move by the same input difference). The configurations without a tensor
implementation are measured too (``--all``), to show why they have none.

``--device cuda`` runs the same comparison with nvJPEG and the transforms on the GPU (its
IDCT may differ from libjpeg-turbo's); not measured yet, no GPU having been lent.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: (name, detector, --set overrides); the first three are the detectors' own defaults
CONFIGS = [
    ("cnnspot (none, crop 224)", "cnnspot", []),
    ("npr (square 256, pil bilinear)", "npr", []),
    (
        "timm_classifier ResNet-18 (none, crop 224)",
        "timm_classifier",
        ["backbone=resnet18", "preprocessing.size=224"],
    ),
    (
        "timm_classifier (shorter 256, pil bilinear, crop 224)",
        "timm_classifier",
        [
            "backbone=resnet18",
            "preprocessing.size=224",
            "preprocessing.resize=shorter",
            "preprocessing.resize_to=256",
        ],
    ),
    (
        "timm_classifier (shorter 224, pil bicubic, crop 224)",
        "timm_classifier",
        [
            "backbone=resnet18",
            "preprocessing.size=224",
            "preprocessing.resize=shorter",
            "preprocessing.interpolation=bicubic",
        ],
    ),
    (
        "timm_classifier (square 256, cv2 bicubic)",
        "timm_classifier",
        [
            "backbone=resnet18",
            "preprocessing.size=256",
            "preprocessing.resize=square",
            "preprocessing.resize_backend=cv2",
            "preprocessing.interpolation=bicubic",
            "preprocessing.crop=none",
        ],
    ),
    (
        "timm_classifier (square 256, cv2 bilinear)",
        "timm_classifier",
        [
            "backbone=resnet18",
            "preprocessing.size=256",
            "preprocessing.resize=square",
            "preprocessing.resize_backend=cv2",
            "preprocessing.crop=none",
        ],
    ),
    (
        "timm_classifier (pad to_size 224, none)",
        "timm_classifier",
        ["backbone=resnet18", "preprocessing.size=224", "preprocessing.pad=to_size"],
    ),
]
#: measured only with --all: no tensor implementation (auto picks cpu)
UNSUPPORTED = [
    (
        "timm_classifier (square 224, pil nearest) [none]",
        "timm_classifier",
        [
            "backbone=resnet18",
            "preprocessing.size=224",
            "preprocessing.resize=square",
            "preprocessing.interpolation=nearest",
            "preprocessing.crop=none",
        ],
    ),
]


def photo(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.int16)
    return np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)


def jpegs(n_sizes: int) -> list[tuple[str, bytes]]:
    """Generated JPEGs and the good JPEGs of the score.py fixtures (tests/scoring_fixtures.py)."""
    sizes = [(256, 256), (300, 400), (480, 360), (231, 517), (64, 80), (1024, 768)][:n_sizes]
    out = []
    for i, (h, w) in enumerate(sizes):
        for subsampling, quality in ((2, 90), (0, 75)):
            buffer = io.BytesIO()
            Image.fromarray(photo(h, w, i)).save(
                buffer, "JPEG", quality=quality, subsampling=subsampling
            )
            out.append((f"{w}x{h} q{quality} sub{subsampling}", buffer.getvalue()))
    grey = io.BytesIO()
    Image.fromarray(photo(200, 300, 9)[..., 0]).save(grey, "JPEG", quality=90)
    out.append(("300x200 grey", grey.getvalue()))
    try:
        from tests.scoring_fixtures import make_zoo
    except ImportError:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "zoo"
        make_zoo(root)
        for name in ("photo.jpg", "lying.png"):
            out.append((f"fixture {name}", (root / name).read_bytes()))
    return out


def measure(
    detector, files: list[tuple[str, bytes]], device: torch.device
) -> tuple[float, float, float, float]:
    """(max decode difference, max input difference, both in grey levels; the share of input
    values that differ; max |d score|)."""
    from deepsift.scoring.decode import decode_image
    from deepsift.scoring.decode_device import decode_batch, tensor_preprocess

    pre = detector.preprocessing
    std = torch.tensor(pre.std, device=device)[:, None, None]
    d_decode = d_input = d_score = 0.0
    differ = total = 0
    for _, raw in files:
        pil = decode_image(raw).image
        reference = detector.eval_transform({"image": pil, "record": None})["image"].to(device)
        (decoded,) = decode_batch([raw], device)
        assert decoded is not None
        pixels = torch.from_numpy(np.array(pil)).permute(2, 0, 1).to(device)
        d_decode = max(d_decode, (decoded.int() - pixels.int()).abs().max().item())
        tensor = tensor_preprocess(pre, decoded)
        if tensor.shape != reference.shape:
            raise SystemExit(f"shape {tuple(tensor.shape)} != {tuple(reference.shape)}")
        grey = (tensor - reference).abs() * std * 255
        d_input = max(d_input, grey.max().item())
        differ += int((grey > 0.5).sum())
        total += grey.numel()
        with torch.no_grad():
            both = torch.stack([reference, tensor])
            probs = torch.sigmoid(detector({"image": both})["logits"].float())
        d_score = max(d_score, (probs[0] - probs[1]).abs().item())
    return d_decode, d_input, differ / total, d_score


def main() -> None:
    from deepsift.scoring.decode_device import member_support
    from deepsift.scoring.models import load_ensemble

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=6, help="generated sizes (1-6), two JPEGs each")
    parser.add_argument("--all", action="store_true", help="also the unsupported configurations")
    parser.add_argument("--detectors", help="comma-separated detector names to keep")
    parser.add_argument(
        "--device", default="cpu", help="cuda: nvJPEG and the GPU transforms against Pillow"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    files = jpegs(args.n)
    keep = set(args.detectors.split(",")) if args.detectors else None
    print(f"{len(files)} JPEGs; random weights (seed 0); fp32 on {device}\n")
    print(
        "| configuration | tensor implementation | max Δ decode | max Δ input | "
        "inputs differing | max Δ score |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name, detector_name, overrides in CONFIGS + (UNSUPPORTED if args.all else []):
        if keep and detector_name not in keep:
            continue
        torch.manual_seed(0)
        detector = load_ensemble(detector=detector_name, overrides=overrides).members[0].detector
        detector.to(device)
        detector.eval()
        why = member_support(detector)
        if why is not None:
            from deepsift.scoring import decode_device

            support = decode_device.tensor_support
            decode_device.tensor_support = lambda pre: None  # measure it anyway
            try:
                d_decode, d_input, share, d_score = measure(detector, files, device)
            finally:
                decode_device.tensor_support = support
        else:
            d_decode, d_input, share, d_score = measure(detector, files, device)
        print(
            f"| {name} | {'yes' if why is None else 'no'} | {d_decode:.0f} | {d_input:.2f} | "
            f"{100 * share:.3f}% | {d_score:.1e} |"
        )


if __name__ == "__main__":
    main()

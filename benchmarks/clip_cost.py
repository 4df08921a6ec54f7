"""Cost per clip of the clip (video) detectors: decode + crop + transform, and forward.

    python -m benchmarks.clip_cost [--detectors a b] [--batch 2] [--repeats 3] [--device cpu]

For every config in ``configs/detector`` whose ``_target_`` class has
``input_kind == "clip"``: writes a synthetic 64-frame 256 px video with OpenCV,
decodes one clip's ``clip_len`` frames (``clip_stride`` apart) with
``datasets.video.read_frames``, centre-crops them to a square face box, runs the
detector's ``transform``, and times the forward of a batch of clips. Prints a
Markdown table (ms per clip).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.video import read_frames
from detectors import detector_config, list_detectors, load_detector


def clip_detectors() -> list[str]:
    """Names of the configs whose ``_target_`` class is a clip detector."""
    names = []
    for name in list_detectors():
        module, _, cls = str(detector_config(name)["_target_"]).rpartition(".")
        if getattr(getattr(importlib.import_module(module), cls), "input_kind", "image") == "clip":
            names.append(name)
    return names


def write_video(path: Path, frames: int = 64, side: int = 256) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (side, side))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    writer.release()


def _ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def clip_cost(
    name: str, video: Path, batch: int, repeats: int, device: str
) -> tuple[int, float, float]:
    detector = load_detector(name).to(device).eval()
    indices = [k * detector.clip_stride for k in range(detector.clip_len)]

    def decode_transform() -> torch.Tensor:
        got = read_frames(str(video), indices)
        frames = [Image.fromarray(got[i][32:224, 32:224]) for i in indices]
        sample = {"frames": frames, "record": None}
        if detector.needs_mouth:
            sample["mouth_frames"] = [f.crop((48, 112, 144, 176)) for f in frames]
        return detector.transform(sample, train=False)["clip"]

    prep = _ms(decode_transform, repeats)
    clips = torch.stack([decode_transform()] * batch).to(device)
    with torch.no_grad():
        fwd = _ms(lambda: detector({"clip": clips}), repeats) / batch
    return detector.clip_len, prep, fwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", nargs="*", default=None)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.avi"
        write_video(video)
        print("| detector | T | decode+crop+transform ms/clip | forward ms/clip |")
        print("|---|---|---|---|")
        for name in args.detectors or clip_detectors():
            t, prep, fwd = clip_cost(name, video, args.batch, args.repeats, args.device)
            print(f"| {name} | {t} | {prep:.1f} | {fwd:.1f} |")


if __name__ == "__main__":
    main()

"""Face preprocessing throughput on CPU, in frames per second, and the detector comparison.

    python -m benchmarks.preprocess_throughput [--videos 6] [--length 150] [--frames 16]
        [--workers N] [--compare] [--out DIR]

Videos are generated from the real FaceForensics++ frames in ``../shared`` (640 x 480,
as FF++'s 480p videos; the face jitters a few pixels per frame), or from scikit-image's
``astronaut`` photograph when ``../shared`` is absent. Printed (Markdown):

* **decode**: :func:`datasets.video.sample_frames` alone: ``--frames`` frames sampled
  out of ``--length`` (every frame is decoded, as the sampler reads to the end);
* **detect + landmarks**: dlib HOG and the 68-point predictor on one frame, with the
  video preprocessing's settings and with :func:`datasets.faces.face_detector`'s
  single-image defaults;
* **pipeline**: :func:`datasets.preprocess.preprocess` on ``--videos`` videos (decode,
  detect, align, write PNG + landmarks + index), with 1 and ``--workers`` processes.

Rates count *sampled* frames (crops written per second). Single-process rows also
give the CPU time per frame, which a busy machine inflates less than wall time.
``--compare`` adds the detector comparison behind the default: hit rate (largest box
on the FF++ mask's box) and CPU time per image of each backend on the three example
frames at three scales, as is, mirrored, JPEG-20 and darkened (36 images), and false
detections on eleven face-free scikit-image photographs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from datasets.crop_cache import VideoCropSource, VideoItem
from datasets.faces import face_detector
from datasets.preprocess import VIDEO_FACE_DETECTOR, Options, preprocess
from datasets.video import sample_frames

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "faceforensics" / "examples"
NEGATIVES = (
    "chelsea", "coffee", "rocket", "coins", "horse", "cat", "hubble_deep_field",
    "immunohistochemistry", "stereo_motorcycle", "retina", "page",
)  # fmt: skip


def base_frames() -> tuple[list[np.ndarray], str]:
    from PIL import Image

    names = ("ex_original", "ex_deepfakes", "ex_neuraltextures")
    if all((SHARED / f"{n}.png").is_file() for n in names):
        frames = [np.asarray(Image.open(SHARED / f"{n}.png").convert("RGB")) for n in names]
        return frames, f"FF++ example frames ({SHARED})"
    from skimage import data

    image = np.asarray(Image.fromarray(data.astronaut()).resize((640, 640)))[80:560]
    return [image], "scikit-image astronaut (../shared absent)"


def write_video(path: Path, frames: list[np.ndarray], length: int, seed: int) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for i in range(length):
        dx, dy = rng.integers(-6, 7, 2)
        frame = np.roll(frames[(i // 30) % len(frames)], (int(dy), int(dx)), axis=(0, 1))
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()


class GeneratedVideos(VideoCropSource):
    """The generated videos as a one-split video benchmark."""

    name = "generated"
    splits = ("test",)

    def _list_videos(self, split: str) -> list[VideoItem]:
        assert self.root is not None
        return [self._item(p.name, 0, "real", p.stem) for p in sorted(self.root.glob("*.mp4"))]


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def row(what: str, frames: int, wall: float, cpu: float | None = None) -> str:
    cpu_text = f"{1000 * cpu / frames:.1f}" if cpu is not None else "-"
    return f"| {what} | {frames} | {frames / wall:.1f} | {1000 * wall / frames:.1f} | {cpu_text} |"


def mask_box(name: str) -> tuple[float, float, float, float]:
    from PIL import Image

    mask = np.asarray(Image.open(SHARED / f"{name}.png").convert("L")) > 127
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def compare() -> list[str]:
    """Hit rate, false detections and CPU time of each backend (needs ../shared)."""
    import cv2
    from PIL import Image
    from skimage import data

    # the original frame shares the Deepfakes fake's target video: its mask marks the face
    truth_of = {
        "ex_original": "ex_deepfakes_mask",
        "ex_deepfakes": "ex_deepfakes_mask",
        "ex_neuraltextures": "ex_neuraltextures_mask",
    }
    variants: list[tuple[np.ndarray, tuple[float, ...]]] = []
    for name, mask in truth_of.items():
        image = np.asarray(Image.open(SHARED / f"{name}.png").convert("RGB"))
        box = mask_box(mask)
        for scale in (0.5, 0.75, 1.0):
            small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            scaled = tuple(v * scale for v in box)
            width = small.shape[1]
            mirrored = (width - scaled[2], scaled[1], width - scaled[0], scaled[3])
            _, jpeg = cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 20])
            variants += [
                (small, scaled),
                (np.ascontiguousarray(small[:, ::-1]), mirrored),
                (np.ascontiguousarray(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1]), scaled),
                ((small * 0.45).astype(np.uint8), scaled),
            ]
    negatives = []
    for name in NEGATIVES:
        image = getattr(data, name)()
        image = np.asarray(image[0] if isinstance(image, tuple) else image)
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        negatives.append(np.ascontiguousarray(image[..., :3]))
    lines = [
        "",
        f"detector comparison: {len(variants)} face images (3 FF++ frames x scales 0.5, 0.75, 1 x "
        "as is, mirrored, JPEG quality 20, darkened), a hit when the largest box overlaps the "
        f"FF++ mask's box (IoU > 0.3); false detections on {len(negatives)} face-free "
        "scikit-image photographs; detection only, at full size",
        "",
        "| detector | hits | false detections | CPU ms / image |",
        "|---|---:|---:|---:|",
    ]
    configs = [
        ("dlib_hog, upsample 0", "dlib_hog", {"upsample": 0}),
        ("dlib_hog, upsample 1 (default)", "dlib_hog", {"upsample": 1}),
        ("opencv_haar", "opencv_haar", {"upsample": 0}),
        ("dlib_cnn, upsample 0", "dlib_cnn", {"upsample": 0}),
    ]
    for label, name, options in configs:
        detector = face_detector(name, landmarks=False, max_side=None, **options).load()
        hits, cpu = 0, 0.0
        for image, box in variants:
            found, _, spent = timed(lambda d=detector, image=image: d.detect(image))
            cpu += spent
            hits += bool(found) and _overlap(found[0].box, box) > 0.3
        false = sum(len(detector.detect(image)) for image in negatives)
        lines.append(
            f"| {label} | {hits}/{len(variants)} | {false} | {1000 * cpu / len(variants):.0f} |"
        )
    return lines


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--length", type=int, default=150, help="frames per generated video")
    parser.add_argument("--frames", type=int, default=16, help="frames sampled per video")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compare", action="store_true", help="also compare the detectors")
    parser.add_argument("--out", default=None, help="folder for the videos (default: a temp dir)")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    frames, origin = base_frames()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    with tempfile.TemporaryDirectory(prefix="deepsift-bench-") as tmp:
        root = Path(args.out or tmp)
        root.mkdir(parents=True, exist_ok=True)
        for k in range(args.videos):
            write_video(root / f"{k:03d}.mp4", frames, args.length, k)
        h, w = frames[0].shape[:2]
        print(
            f"{args.videos} videos of {args.length} frames, {w} x {h}, from {origin}; "
            f"{args.frames} frames sampled per video; {os.cpu_count()} CPUs; "
            f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start\n"
        )
        print("| stage | frames | frames / s | wall ms / frame | CPU ms / frame |")
        print("|---|---:|---:|---:|---:|")
        videos = sorted(root.glob("*.mp4"))
        got, wall, cpu = timed(lambda: [sample_frames(str(v), args.frames) for v in videos])
        print(
            row("decode (sample from the whole video)", sum(len(g.frames) for g in got), wall, cpu)
        )
        sample = [f for g in got for f in g.frames]
        for label, config in (
            (
                "detect + 68 landmarks (HOG, video default: upsample 0, <= 960 px)",
                VIDEO_FACE_DETECTOR,
            ),
            ("detect + 68 landmarks (HOG, image default: upsample 1, <= 640 px)", {}),
        ):
            detector = face_detector(**config).load()
            found, wall, cpu = timed(lambda d=detector: [d.detect(f) for f in sample])
            print(row(label, len(sample), wall, cpu))
        source = GeneratedVideos(str(root), crops_root=str(root / "crops"))
        options = Options(frames=args.frames)
        for workers in sorted({0, args.workers}):
            crops = root / f"crops-{workers}"
            source.crops_root = crops
            summary, wall, cpu = timed(
                lambda workers=workers: preprocess(
                    source, options, num_workers=workers, progress=False
                )
            )
            n = summary["frames_with_face"] + summary["frames_without_face"]
            label = "in one process" if workers == 0 else f"{workers} worker processes"
            print(row(f"full pipeline, {label}", n, wall, cpu if workers == 0 else None))
        hit = sum(bool(f) for f in found)
        print(f"\nfaces found in {hit} of {len(found)} sampled frames")
        if args.compare and SHARED.is_dir():
            print("\n".join(compare()))
        elif args.compare:
            print(f"\n--compare needs the FF++ example frames in {SHARED}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()

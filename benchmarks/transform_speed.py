"""CPU time of each detector's training and test transform per image: the data-loading cost.

    python -m benchmarks.transform_speed [--detectors sbi face_xray ...] [--n 8] [--side 400]
                                         [--landmarks]

Each detector's ``transform`` runs in the DataLoader workers, one image at a time, on
one core each: blending recipes (SBI, Face X-ray), two-view augmentation (CORE) and
blur/JPEG augmentation cost CPU there, whatever GPU the model runs on. Images are
``--side`` px RGB noise (a face crop before the detector's resize); records carry no
landmarks, so the blending detectors take their documented ellipse fallback, unless
``--landmarks`` gives every record a template dlib-81 face (the hull masks and the
landmark alignment). Torch and OpenCV are held to one thread, as one core per
DataLoader worker. Prints a Markdown table of milliseconds per image and the images
per second one worker can feed.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import cv2
import torch

from deepsift.core.records import Record
from detectors import detector_config, list_detectors, load_detector


def time_transform(
    name: str, n: int, side: int, train: bool, landmarks: str | None = None
) -> float:
    """Mean ms per image of ``name``'s transform over ``n`` images (after one warm-up).

    ``landmarks``: the path of a landmark ``.npy`` every record points to.
    """
    import numpy as np
    from PIL import Image

    overrides = {"random_init": True} if "random_init" in detector_config(name) else {}
    detector = load_detector(name, **overrides)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n + 1)
    ]
    extra = {"landmarks": landmarks} if landmarks else {}
    samples = [
        {"image": image, "label": 0, "record": Record(f"r{i}.png", 0, extra=extra), "index": i}
        for i, image in enumerate(images)
    ]
    detector.transform(samples[0], train=train)  # warm-up
    start = time.perf_counter()
    for sample in samples[1:]:
        detector.transform(sample, train=train)
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detectors", nargs="*", default=None, help="names (default: all)")
    parser.add_argument("--n", type=int, default=8, help="images per detector")
    parser.add_argument("--side", type=int, default=400, help="input image side in pixels")
    parser.add_argument(
        "--landmarks", action="store_true", help="records carry template dlib-81 landmarks"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    logging.basicConfig(level=logging.ERROR)
    landmarks = None
    if args.landmarks:
        import numpy as np

        from detectors.layers.blending import template_landmarks

        landmarks = str(Path(tempfile.mkdtemp()) / "landmarks.npy")
        np.save(landmarks, template_landmarks(args.side, args.side, forehead=True))
    with_landmarks = ", template landmarks" if landmarks else ", no landmarks"
    print(f"{args.n} images of {args.side}x{args.side} px{with_landmarks}, 1 thread\n")
    print("| detector | train ms / image | test ms / image | train images/s per worker |")
    print("|---|---:|---:|---:|")
    for name in args.detectors or list_detectors():
        train = time_transform(name, args.n, args.side, train=True, landmarks=landmarks)
        test = time_transform(name, args.n, args.side, train=False, landmarks=landmarks)
        print(f"| {name} | {train:.1f} | {test:.1f} | {1000 / train:.1f} |", flush=True)


if __name__ == "__main__":
    main()

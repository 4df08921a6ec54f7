"""Make the mouth-crop reference of LipForensics (``tests/official/video/lipforensics_mouths.json``).

Runs the authors' own mouth cropping (github.com/ahaliassos/LipForensics, commit
d0bf5553bfb9676f1771d590472b26a3a76de894, ``preprocessing/crop_mouths.py``
``crop_video_and_save`` with its defaults: 12-frame landmark smoothing, stable points
33/36/39/42/45 onto ``preprocessing/20words_mean_face.npy`` in 256 x 256, 96 x 96 crops
around landmarks 48-67) from a checkout given with ``--repo`` (imported from there; nothing
of it is copied into deepsift), on the frames and landmarks of :func:`mouth_inputs`, written
as the authors' layout wants them (``<frame>.png`` + ``<frame>.npy``). Their RGB crops are
read back and converted with PIL ``convert("L")``, as their data loader does
(``data/dataset_clips.py``, ``--grayscale``), and recorded by SHA-256 and mean. The mean
face's five stable points are recorded too (deepsift keeps them as constants).

Usage (from the project root)::

    python tests/official/make_lipforensics_mouths.py --repo <LipForensics checkout>
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
COMMIT = "d0bf5553bfb9676f1771d590472b26a3a76de894"
SEED = 5
N_FRAMES = 15  # more than the 12-frame smoothing window: both branches of the authors' loop
SIZE = (240, 320)  # frame height, width


def mouth_inputs(seed: int = SEED) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``N_FRAMES`` RGB uint8 frames (a smooth seeded picture sliding 3 px a frame) and their
    68 landmarks (a seeded face layout that drifts, turns and scales a little, plus jitter)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = SIZE
    small = rng.integers(0, 256, (h // 8, (w + 3 * N_FRAMES) // 8, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize(((w + 3 * N_FRAMES), h), Image.BILINEAR))
    frames = [np.ascontiguousarray(big[:, 3 * i : 3 * i + w]) for i in range(N_FRAMES)]
    layout = rng.uniform([-50, -60], [50, 60], (68, 2))
    layout[36:48, 1] = -25 + rng.normal(0, 3, 12)  # eyes above
    layout[36:42, 0] = np.linspace(-40, -12, 6)
    layout[42:48, 0] = np.linspace(12, 40, 6)
    layout[33] = (0, 10)  # nose tip
    layout[48:68] = np.stack([np.linspace(-22, 22, 20), 40 + rng.normal(0, 4, 20)], axis=1)
    landmarks = []
    for i in range(N_FRAMES):
        angle, scale = 0.03 * np.sin(i / 3), 1.0 + 0.01 * i
        rotation = scale * np.array(
            [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        )
        centre = np.array([w / 2 - 3 * i, h / 2 + i])
        points = layout @ rotation.T + centre + rng.normal(0, 0.8, (68, 2))
        landmarks.append(points.astype(np.float32))
    return frames, landmarks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo / "preprocessing"))
    from crop_mouths import STABLE_POINTS, crop_video_and_save
    from PIL import Image

    mean_face = np.load(args.repo / "preprocessing/20words_mean_face.npy")
    frames, landmarks = mouth_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in ("images", "landmarks", "mouths"):
            (root / folder).mkdir()
        for i, (frame, points) in enumerate(zip(frames, landmarks, strict=True)):
            Image.fromarray(frame).save(root / "images" / f"{i:04d}.png")
            np.save(root / "landmarks" / f"{i:04d}.npy", points)
        options = SimpleNamespace(
            window_margin=12, start_idx=48, stop_idx=68, crop_height=96, crop_width=96
        )
        crop_video_and_save(
            str(root / "images"), str(root / "landmarks"), str(root / "mouths"), mean_face, options
        )
        crops = []
        for i in range(N_FRAMES):
            with Image.open(root / "mouths" / f"{i:04d}.png") as image:
                crops.append(np.asarray(image.convert("L")))
    reference = {
        "format": "LipForensics mouth crops (crop_mouths.py + the loader's convert('L'))",
        "repository": "github.com/ahaliassos/LipForensics",
        "commit": COMMIT,
        "file": "preprocessing/crop_mouths.py",
        "seed": SEED,
        "frames": N_FRAMES,
        "mean_face_stable": mean_face[list(STABLE_POINTS)].tolist(),
        "crop_shape": list(crops[0].shape),
        "sha256": [hashlib.sha256(c.tobytes()).hexdigest() for c in crops],
        "mean": [float(c.mean()) for c in crops],
    }
    out = HERE / "video" / "lipforensics_mouths.json"
    out.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

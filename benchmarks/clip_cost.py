"""Cost per clip of the clip (video) detectors: decode + crop + transform, and forward.

    python -m benchmarks.clip_cost [--detectors a b] [--batch 1] [--repeats 3] [--device cpu]
                                   [--set name.key=value ...]

For every config in ``configs/detector`` whose ``_target_`` class has
``input_kind == "clip"``: writes a synthetic 96-frame 320 x 240 video with OpenCV (MJPG)
holding one drawn face, and times

* **prepare**: what ``score.py`` spends per clip before the model
  (:func:`deepsift.scoring.prepare.prepare` on the video with ``--clips`` (4) clips, divided
  by the clips cut): hashing the file, decoding the video to its end (the frame count is
  checked by decoding, as for every video) and keeping the clips' ``clip_len`` frames
  (``clip_stride`` apart), linking the face boxes
  into a track, cutting each face as the detector's config ``face_crop`` says (aligned on
  landmarks, :mod:`datasets.faces`), the mouth crops for lip-motion detectors
  (:mod:`datasets.mouths`), and the detector's test-time ``transform``. The face detector
  is a stub that returns the drawn face with its 68 landmarks: dlib's detection is not
  counted (``benchmarks/preprocess_throughput.py`` measures it);
* **forward**: the detector's forward on a batch of ``--batch`` clips (ms per clip), in
  eval mode without gradients, at full size unless ``--set`` shrinks it.

Prints a Markdown table: parameters, T, prepare ms/clip, forward ms/clip, and the threads
torch used.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.faces import Face
from detectors import detector_config, list_detectors, load_detector

W, H, FRAMES = 320, 240, 96


def clip_detectors() -> list[str]:
    """Names of the configs whose ``_target_`` class is a clip detector."""
    names = []
    for name in list_detectors():
        module, _, cls = str(detector_config(name)["_target_"]).rpartition(".")
        if getattr(getattr(importlib.import_module(module), cls), "input_kind", "image") == "clip":
            names.append(name)
    return names


def face_landmarks(cx: float, cy: float, size: float) -> np.ndarray:
    """A plausible 68-point (iBUG) face layout of width ``size`` centred at (cx, cy)."""
    u = np.linspace(-1, 1, 17)
    jaw = np.stack([u * 0.5, 0.1 + 0.55 * (1 - u**2) ** 0.5 * 0.8], axis=1)
    brows = np.stack([np.r_[np.linspace(-0.4, -0.1, 5), np.linspace(0.1, 0.4, 5)], [-0.3] * 10], 1)
    bridge = np.stack([[0.0] * 4, np.linspace(-0.2, 0.05, 4)], axis=1)
    nostrils = np.stack([np.linspace(-0.08, 0.08, 5), [0.12, 0.14, 0.15, 0.14, 0.12]], axis=1)
    angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    eye = np.stack([0.08 * np.cos(angles), 0.03 * np.sin(angles)], axis=1)
    eyes = np.r_[eye + np.array([-0.2, -0.15]), eye + np.array([0.2, -0.15])]
    outer = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    inner = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    lips = np.r_[
        np.stack([0.18 * np.cos(outer), 0.3 + 0.06 * np.sin(outer)], axis=1),
        np.stack([0.1 * np.cos(inner), 0.3 + 0.02 * np.sin(inner)], axis=1),
    ]
    points = np.r_[jaw, brows, bridge, nostrils, eyes, lips]
    assert points.shape == (68, 2)
    return (points * size + (cx, cy)).astype(np.float32)


class DrawnFace:
    """The stub face detector: the face drawn by :func:`write_video`, its box and landmarks."""

    def __init__(self) -> None:
        self.face = Face((90.0, 50.0, 230.0, 200.0), 0.99, face_landmarks(160, 110, 140))

    def detect(self, image: np.ndarray) -> list[Face]:
        return [self.face]


def write_video(path: Path) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H))
    rng = np.random.default_rng(0)
    points = DrawnFace().face.landmarks
    for _ in range(FRAMES):
        frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        cv2.fillConvexPoly(frame, points[:17].astype(np.int32), (180, 150, 130))
        writer.write(frame)
    writer.release()


def _ms(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def clip_cost(
    name: str,
    video: Path,
    batch: int,
    repeats: int,
    device: str,
    overrides: dict[str, Any],
    clips: int = 4,
) -> dict[str, Any]:
    from deepsift.scoring.faces import Fixed
    from deepsift.scoring.inputs import WorkItem
    from deepsift.scoring.models import resolve_face_crop
    from deepsift.scoring.prepare import MemberSpec, PrepareContext, PrepareOptions, prepare

    detector = load_detector(name, **overrides).to(device).eval()
    crop, _ = resolve_face_crop(detector, None, f"configs/detector/{name}.yaml")
    spec = MemberSpec(
        name,
        detector.eval_transform,
        True,
        crop,
        (int(detector.clip_len), int(detector.clip_stride)),
        bool(detector.needs_mouth),
    )
    options = PrepareOptions(clips=clips, min_face=8, provenance=False, pdq=False)
    ctx = PrepareContext([spec], options, Fixed(DrawnFace()))
    item = WorkItem(str(video), None, None)
    prepared = prepare(item, ctx)
    if prepared.record.get("error") or not prepared.stacks:
        raise RuntimeError(f"{name}: {prepared.record.get('error') or prepared.reason}")
    prep = _ms(lambda: prepare(item, ctx), repeats) / len(prepared.groups)
    clip = prepared.stacks[0].tensors["clip"][:1]
    clips = torch.cat([clip] * batch).to(device)
    with torch.no_grad():
        fwd = _ms(lambda: detector({"clip": clips}), repeats) / batch
    return {
        "params": sum(p.numel() for p in detector.parameters()),
        "T": int(detector.clip_len),
        "stride": int(detector.clip_stride),
        "input": tuple(clip.shape[1:]),
        "prepare": prep,
        "forward": fwd,
    }


def parse_sets(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["tall.frame_size=56", ...]`` -> ``{"tall": {"frame_size": 56}}`` (YAML values)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        name, _, field = key.partition(".")
        if not field or not _:
            raise SystemExit(f"--set takes name.key=value, got {pair!r}")
        out.setdefault(name, {})[field] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", nargs="*", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--clips", type=int, default=4, help="clips prepared per video")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], help="name.key=value overrides")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    sets = parse_sets(args.set)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.avi"
        write_video(video)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.device}, "
            f"batch {args.batch}, median of {args.repeats}, prepare at --clips {args.clips}"
        )
        print("| detector | params | T x stride | clip input | prepare ms/clip | forward ms/clip |")
        print("|---|---:|---|---|---:|---:|")
        for name in args.detectors or clip_detectors():
            r = clip_cost(
                name, video, args.batch, args.repeats, args.device, sets.get(name, {}), args.clips
            )
            shape = " x ".join(map(str, r["input"]))
            given = sets.get(name, {})
            note = " (" + ", ".join(f"{k}={v}" for k, v in given.items()) + ")" if given else ""
            print(
                f"| {name}{note} | {r['params'] / 1e6:.2f} M | "
                f"{r['T']} x {r['stride']} | {shape} | {r['prepare']:.1f} | {r['forward']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Mouth crops for LipForensics: the authors' recipe (tests/official/video/lipforensics_mouths.json,
made by their crop_mouths.py), written by ``datasets.preprocess mouths=true`` beside the face
crops (resumable), and served as ``sample["mouth_frames"]`` of clip records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import datasets.preprocess as preprocess_module
from datasets.clips import clip_records
from datasets.crop_cache import MOUTH_DIR, VideoCropSource, VideoItem, read_crop_index
from datasets.faces import Face
from datasets.mouths import MEAN_FACE_STABLE, mouth_crops
from datasets.preprocess import Options, preprocess
from deepsift.core.errors import UserError
from deepsift.core.records import CLIP_MOUTHS, RecordDataset
from tests.official.make_lipforensics_mouths import mouth_inputs

REFERENCE = Path(__file__).parent / "official" / "video" / "lipforensics_mouths.json"


def test_mouth_crops_are_the_authors_pixels() -> None:
    """The authors' crop_mouths.py on the same frames and landmarks: every pixel equal
    (SHA-256 of each 96 x 96 grayscale crop), through both branches of their smoothing
    queue (15 frames: 3 with a full 12-frame window ahead, 12 that reuse the last one)."""
    ref = json.loads(REFERENCE.read_text())
    assert np.array_equal(MEAN_FACE_STABLE, np.array(ref["mean_face_stable"]))
    frames, landmarks = mouth_inputs(ref["seed"])
    crops = mouth_crops(frames, landmarks)
    assert all(c is not None and c.shape == tuple(ref["crop_shape"]) for c in crops)
    assert [hashlib.sha256(c.tobytes()).hexdigest() for c in crops] == ref["sha256"]
    # the smoothing matters: without it (one frame at a time) the crops differ
    alone = [mouth_crops([f], [p])[0] for f, p in zip(frames, landmarks, strict=True)]
    assert sum(not np.array_equal(a, c) for a, c in zip(alone, crops, strict=True)) >= 10


def test_mouths_need_windows() -> None:
    with pytest.raises(UserError, match="clip_len"):
        Options(mouths=True)
    windowed = Options(clip_len=15, clips_per_video=1)
    # caches made without mouths keep their settings hash; mouths are other settings
    assert windowed.fingerprint() == Options(clip_len=15, clips_per_video=1).fingerprint()
    assert (
        Options(clip_len=15, clips_per_video=1, mouths=True).fingerprint() != windowed.fingerprint()
    )


class KnownFaces:
    """A face detector that knows the landmarks of each frame (found by its pixels)."""

    name = "known"

    def __init__(self, frames: list[np.ndarray], landmarks: list[np.ndarray]) -> None:
        self.frames, self.landmarks = frames, landmarks
        self.calls = 0

    def load(self) -> KnownFaces:
        return self

    def settings(self) -> dict[str, Any]:
        return {"name": self.name}

    def detect(self, image: np.ndarray) -> list[Face]:
        self.calls += 1
        i = int(np.argmin([np.abs(image.astype(int) - f).mean() for f in self.frames]))
        points = self.landmarks[i]
        x0, y0 = points.min(0)
        x1, y1 = points.max(0)
        return [Face((float(x0), float(y0), float(x1), float(y1)), 0.99, points.copy())]


def _lossless_video(path: Path, frames: list[np.ndarray]) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (w, h))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    return path


REL = "videos/000.avi"


class Toy(VideoCropSource):
    """One real video, in the test split."""

    name = "toy"

    def _list_videos(self, split: str) -> list[VideoItem]:
        assert self.root is not None
        path = str(self.root / REL)
        return [VideoItem(path, REL, 0, "real", "000", "000")] if split == "test" else []


def test_preprocess_writes_mouth_crops_resumably(tmp_path: Path, monkeypatch) -> None:
    frames, landmarks = mouth_inputs()
    root = tmp_path / "ffpp"
    rel = REL
    _lossless_video(root / rel, frames)
    detector = KnownFaces(frames, landmarks)
    monkeypatch.setattr(preprocess_module, "face_detector", lambda **_: detector)
    source = Toy(str(root), crops_root=str(root / "crops"))
    options = Options(clip_len=6, clips_per_video=2, stride=1, mouths=True, size=64)
    summary = preprocess(source, options, progress=False)
    assert (summary["done"], summary["failed"]) == (1, 0)
    lines = read_crop_index(root / "crops")[rel]
    windows = [[x for x in lines if x["window"] == w] for w in (0, 1)]
    assert [len(w) for w in windows] == [6, 6]
    for window in windows:
        # each window is one run of the face: smoothed over its frames, as the authors do
        idx = [x["frame"] for x in window]
        expected = mouth_crops([frames[i] for i in idx], [landmarks[i] for i in idx])
        for line, crop in zip(window, expected, strict=True):
            assert (
                line["mouth"] == f"{Path(line['crop']).parent}/{MOUTH_DIR}/{line['frame']:06d}.png"
            )
            written = np.asarray(Image.open(root / "crops" / line["mouth"]))
            assert written.shape == (96, 96) and np.array_equal(written, crop)
    pngs = {p: p.stat().st_mtime_ns for p in (root / "crops").rglob("*.png")}
    assert len(pngs) == 24  # 12 faces + 12 mouths
    calls = detector.calls
    again = preprocess(source, options, progress=False)  # resumable: nothing redone
    assert (again["done"], again["skipped"]) == (0, 1) and detector.calls == calls
    assert {p: p.stat().st_mtime_ns for p in (root / "crops").rglob("*.png")} == pngs

    # the loader serves them: clip records carry the mouth crops, read as mouth_frames
    cached = source.records("test")
    clips, skipped = clip_records(cached, clip_len=5, clip_stride=1, clips_per_video=2, mouths=True)
    assert skipped == [] and len(clips) == 2
    sample = RecordDataset(clips, lambda s: s)[0]
    assert len(sample["mouth_frames"]) == 5 and sample["mouth_frames"][0].size == (96, 96)
    assert all(Path(p).is_file() for p in clips[0].extra[CLIP_MOUTHS])

    # without mouths=true the cache has none: the clip detector's records say so, with the fix
    plain = Options(clip_len=6, clips_per_video=2, stride=1, size=64)
    preprocess(source, plain, progress=False)
    assert not list((root / "crops").rglob(f"{MOUTH_DIR}/*.png"))  # the old ones are cleared
    source = Toy(str(root), crops_root=str(root / "crops"))  # reads the index afresh
    clips, skipped = clip_records(source.records("test"), 5, 1, 2, mouths=True)
    assert clips == [] and "mouths=true" in skipped[0][1]


def test_real_faces_get_mouth_crops_through_to_lipforensics(tmp_path: Path) -> None:
    """dlib's faces and 68 landmarks on the FF++ example videos: preprocess mouths=true writes
    a mouth crop per face, clip records serve them, and LipForensics scores them."""
    import torch

    from datasets.faceforensics import FaceForensics
    from detectors import load_detector
    from tests.test_faces import EXAMPLES, have_dlib
    from tests.test_preprocess import run
    from tests.test_preprocess_windows import _tree
    from tests.video_detectors import TINY

    if not have_dlib() or not (EXAMPLES / "ex_original.png").is_file():
        pytest.skip("needs dlib and the FF++ example frames")
    root = _tree(tmp_path / "ffpp")
    summary = run(root, "clip_len=4", "clips_per_video=2", "stride=1", "mouths=true")
    assert (summary["done"], summary["failed"]) == (3, 0)  # 20, 4 (one window) and 20 frames
    index = read_crop_index(root / "deepsift_crops")
    ok = [x for lines in index.values() for x in lines if x["status"] == "ok"]
    assert len(ok) == 20 and all(x["mouth"] for x in ok)
    for line in ok:
        mouth = Image.open(root / "deepsift_crops" / line["mouth"])
        assert mouth.mode == "L" and mouth.size == (96, 96)
    records = FaceForensics(str(root), methods=["Deepfakes"]).records("test")
    clips, skipped = clip_records(
        records, clip_len=4, clip_stride=1, clips_per_video=2, mouths=True
    )
    assert skipped == [] and len(clips) == 5
    model = load_detector("lipforensics", **{**TINY["lipforensics"], "clip_len": 4}).eval()
    dataset = RecordDataset(clips, model.eval_transform)
    batch = torch.stack([dataset[i]["clip"] for i in range(len(clips))])
    assert batch.shape == (5, 4, 1, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model({"clip": batch})["logits"]).all()

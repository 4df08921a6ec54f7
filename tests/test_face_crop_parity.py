"""score.py cuts faces, and samples video frames, exactly as the training data was made.

One video goes through the training path (``datasets.preprocess`` writes the crop
cache and its index, the data source reads the crop settings back, training puts
them into the checkpoint) and through score.py's path (the checkpoint loaded as a
scoring member, ``prepare`` on the video file and on one frame saved as PNG); the
crops must be pixel-identical, for aligned and unaligned crops. The frame comes from
a real FaceForensics++ example in ``../shared`` when there is one (a generated frame
otherwise); the face detector is a stub returning fixed landmarks, except in the
last test, which runs dlib (skipped without it) as configured by the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from datasets.crop_cache import VideoCropSource, read_crop_index
from datasets.faces import Face
from datasets.preprocess import INDEX_NAME, IndexWriter, Job, Options, process_video
from datasets.video import frame_indices, read_frames, sample_frames
from deepsift.app.training import _checkpoint, data_face_crop
from deepsift.core.checkpoint import read_checkpoint, save_checkpoint
from deepsift.core.records import FAKE
from deepsift.scoring.calibration import DEFAULT_BANDS
from deepsift.scoring.faces import Fixed
from deepsift.scoring.inputs import WorkItem
from deepsift.scoring.models import load_ensemble
from deepsift.scoring.prepare import PrepareOptions, prepare
from deepsift.scoring.runner import MemorySink, RunOptions, Scorer
from deepsift.scoring.video import read_video
from detectors.factory import build_detector, detector_config
from tests.test_faces import EXAMPLES, have_dlib
from tests.test_preprocess import write_video

N_FRAMES, SAMPLED = 12, 4
REL = "clips/v0.mp4"
# preprocessing's video detector settings (configs/preprocess.yaml); the stub ignores them
DETECTOR = {"name": "dlib_hog", "upsample": 0, "max_side": 960}


def frames() -> list[np.ndarray]:
    """12 frames of 320 x 240 around a face, sliding 2 px per frame (FF++ when present)."""
    if (EXAMPLES / "ex_original.png").is_file():
        image = np.asarray(Image.open(EXAMPLES / "ex_original.png").convert("RGB"))[20:260, 200:520]
    else:
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:240, 0:320]
        base = np.stack([x * 0.7, y, (x + y) * 0.4], -1) + rng.normal(0, 20, (240, 320, 3))
        image = np.clip(base, 0, 255).astype(np.uint8)
    return [np.roll(image, 2 * i, axis=1) for i in range(N_FRAMES)]


def tilted_face() -> Face:
    """The FF++ example's face as dlib finds it: box and 68 landmarks, eyes not level."""
    landmarks = np.zeros((68, 2), np.float32)
    landmarks[:] = (150, 120)
    spread = np.array([(d, 0) for d in (-2, -1, 0, 0, 1, 2)])  # six points around each eye
    landmarks[36:42] = np.array([121, 89]) + spread
    landmarks[42:48] = np.array([176, 98]) + spread
    landmarks[30], landmarks[48], landmarks[54] = (147, 114), (124, 136), (163, 141)
    return Face((100.0, 65.0, 205.0, 170.0), 2.45, landmarks)


class FixedFace:
    """A stub face detector: the same face (box and landmarks) in every image."""

    name = "dlib_hog"

    def __init__(self, face: Face) -> None:
        self.face = face

    def detect(self, image: np.ndarray) -> list[Face]:
        return [Face(self.face.box, self.face.score, self.face.landmarks.copy())]


class OneVideo(VideoCropSource):
    """A one-video benchmark read from its crop cache, as training reads FF++."""

    name = "one_video"
    splits = ("train",)

    def _list_videos(self, split: str) -> list[Any]:
        return [self._item(REL, FAKE, "fake", "v0")]


def training_side(tmp_path: Path, options: Options, detector: Any) -> tuple[Path, Path, Path]:
    """Preprocess one video and train-save a checkpoint: (video, crops_root, checkpoint)."""
    video = write_video(tmp_path / "data" / REL, frames())
    crops = tmp_path / "crops"
    result = process_video(Job(REL, str(video)), options, crops, detector)
    assert result.error is None
    writer = IndexWriter(crops / INDEX_NAME)
    writer.write(result.lines)
    writer.close()
    source = OneVideo(str(tmp_path / "data"), str(crops))
    assert len(source.records("train")) == SAMPLED
    face_crop = data_face_crop(source)  # what train() puts into the checkpoint
    model = build_detector(detector_config("meso4"), "meso4")  # a face detector (input: face)
    payload = _checkpoint(model, "meso4", OmegaConf.create({"seed": 0}), 1, {}, face_crop)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, payload)
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["face_crop"] == face_crop
    return video, crops, checkpoint


def scored_crops(checkpoint: Path, path: Path, factory: Any) -> dict[int | None, np.ndarray]:
    """The face crop pixels score.py feeds the checkpoint's detector, per frame index."""
    ensemble = load_ensemble(checkpoint=str(checkpoint))
    member = ensemble.members[0]
    assert member.faces
    # the member's own test-time transform replaced by one that keeps the crop's pixels
    member.detector.eval_transform = lambda s: {"image": torch.from_numpy(np.array(s["image"]))}
    options = RunOptions(
        inputs=[str(path)],
        workers=0,
        progress=False,
        prepare_options=PrepareOptions(
            video_frames=SAMPLED, provenance=False, pdq=False, min_face=16
        ),
    )
    ctx = Scorer(ensemble, DEFAULT_BANDS, options, MemorySink(), factory).ctx
    prepared = prepare(WorkItem(str(path)), ctx)
    assert prepared.record["error"] is None, prepared.record["error"]
    out: dict[int | None, np.ndarray] = {}
    for stack in prepared.stacks:
        for row, unit_index in enumerate(stack.units):
            unit = prepared.units[unit_index]
            assert unit.face == 0
            out[prepared.groups[unit.group].frame] = stack.tensors["image"][row].numpy()
    return out


def cached_crop(crops: Path, frame: int) -> np.ndarray:
    return np.asarray(Image.open(crops / "clips" / "v0" / f"{frame:06d}.png").convert("RGB"))


CROPS = {
    "aligned_256": {"align": True, "margin": 1.3, "size": 256},  # configs/preprocess.yaml
    "aligned_native": {"align": True, "margin": 1.5, "size": None},
    "box_native": {"align": False, "margin": 1.3, "size": None},  # FaceForensics++
    "box_192": {"align": False, "margin": 1.2, "size": 192},
}


@pytest.mark.parametrize("crop", sorted(CROPS))
def test_score_crops_faces_like_training(tmp_path: Path, crop: str) -> None:
    options = Options(frames=SAMPLED, detector=dict(DETECTOR), **CROPS[crop])
    face = FixedFace(tilted_face())
    video, crops, checkpoint = training_side(tmp_path, options, face)
    assert read_checkpoint(checkpoint)["face_crop"] == {**CROPS[crop], "detector": DETECTOR}

    # a video: the frames training sampled, each face cut to the cache's pixels
    wanted = frame_indices(N_FRAMES, SAMPLED)
    scored = scored_crops(checkpoint, video, Fixed(face))
    assert sorted(scored) == wanted
    for frame in wanted:
        expected = cached_crop(crops, frame)
        if CROPS[crop]["size"]:
            assert expected.shape == (CROPS[crop]["size"],) * 2 + (3,)
        np.testing.assert_array_equal(scored[frame], expected, err_msg=f"frame {frame}")

    # one frame of it as a still image: the same pixels again
    still = tmp_path / "frame.png"
    Image.fromarray(read_frames(str(video), [wanted[1]])[wanted[1]]).save(still)
    np.testing.assert_array_equal(
        scored_crops(checkpoint, still, Fixed(face))[None], cached_crop(crops, wanted[1])
    )


def test_output_records_the_crop_region(tmp_path: Path) -> None:
    """``crop`` in a record: the region cut, in image pixels (a rotated square's bounding box
    when aligned, clipped to the image); ``box``: the face detector's."""
    face = FixedFace(tilted_face())
    for align in (False, True):
        options = Options(frames=SAMPLED, detector=dict(DETECTOR), align=align, size=None)
        _, crops, checkpoint = training_side(tmp_path / str(align), options, face)
        ensemble = load_ensemble(checkpoint=str(checkpoint))
        still = tmp_path / f"{align}.png"
        Image.fromarray(frames()[0]).save(still)
        sink = MemorySink()
        run = RunOptions(
            inputs=[str(still)],
            workers=0,
            progress=False,
            prepare_options=PrepareOptions(provenance=False, pdq=False),
        )
        Scorer(ensemble, DEFAULT_BANDS, run, sink, Fixed(face)).run()
        (record,) = sink.records
        assert record["faces"][0]["box"] == [100.0, 65.0, 205.0, 170.0]
        region = tuple(record["faces"][0]["crop"])
        if not align:  # the square 1.3 x 105 px = 136 px around the box's centre
            assert region == (84, 50, 220, 186)
            continue
        # the corners of the crop mapped back by the transform the crop index recorded
        line = read_crop_index(crops)[REL][0]
        matrix = np.vstack([np.reshape(line["transform"], (2, 3)), [0, 0, 1]])
        side = cached_crop(crops, line["frame"]).shape[0]
        corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]]).T
        xs, ys, _ = np.linalg.inv(matrix) @ corners
        expected = (
            max(0, int(np.floor(xs.min()))),
            max(0, int(np.floor(ys.min()))),
            min(320, int(np.ceil(xs.max()))),
            min(240, int(np.ceil(ys.max()))),
        )
        assert region == expected
        assert region[0] < 100 and region[2] > 205  # wider than the box: rotated, with margin


@pytest.mark.parametrize("announced", [None, 0, 18, 45])
def test_score_samples_the_frames_training_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, announced: int | None
) -> None:
    """score.py's frames are the crop cache's, also when the container miscounts them."""
    from datasets import video as video_module

    path = write_video(tmp_path / "v.mp4", frames()[:10] * 3)  # 30 frames
    if announced is not None:
        monkeypatch.setattr(video_module, "_announced", lambda cap: announced)
    training = sample_frames(str(path), 5)
    scoring = read_video(str(path), 5, 10**8)
    assert [i for i, _ in scoring.frames] == training.indices == frame_indices(30, 5)
    assert scoring.frame_count == training.total == 30
    for (_, image), frame in zip(scoring.frames, training.frames, strict=True):
        np.testing.assert_array_equal(np.asarray(image), frame)


@pytest.mark.skipif(not have_dlib(), reason="dlib or its models are not installed")
@pytest.mark.skipif(
    not (EXAMPLES / "ex_original.png").is_file(),
    reason=f"FF++ example frames not found in {EXAMPLES}",
)
def test_score_finds_faces_with_the_training_face_detector(tmp_path: Path) -> None:
    """With dlib: score.py builds the face detector the checkpoint names (upsample 0 at
    960 px, as preprocessing) and cuts the same aligned crops from the same frames."""
    from datasets.faces import face_detector
    from deepsift.app.score_cli import face_factory

    options = Options(frames=SAMPLED, detector=dict(DETECTOR))
    video, crops, checkpoint = training_side(tmp_path, options, face_detector(**DETECTOR))
    ensemble = load_ensemble(checkpoint=str(checkpoint))
    factory = face_factory(ensemble, None)
    settings = factory.detector.settings()
    assert (settings["detector"], settings["upsample"], settings["max_side"]) == (
        "dlib_hog",
        0,
        960,
    )
    assert settings["landmarks"]  # the crops are aligned
    scored = scored_crops(checkpoint, video, factory)
    assert sorted(scored) == frame_indices(N_FRAMES, SAMPLED)
    for frame, pixels in scored.items():
        np.testing.assert_array_equal(pixels, cached_crop(crops, frame), err_msg=f"frame {frame}")

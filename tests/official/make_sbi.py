"""Make the SBI reference from the authors' own code (not run by the tests).

``sbi`` (``FFc23.tar`` / ``FFraw.tar``): github.com/mapooon/SelfBlendedImages at
9fe4efe1192cb7448fb51a2b97a54e1312188160, efficientnet-pytorch 0.7.1 (the
Dockerfile installs it unpinned, with torch 1.9: 0.7.1 was the release then).
Code that runs: ``src/inference/model.py`` (``Detector``:
``EfficientNet.from_pretrained("efficientnet-b4", advprop=True, num_classes=2)``, its
AdvProp ImageNet download skipped), ``src/inference/preprocess.py``
(``extract_face``: ``crop_face(..., phase='test')`` of each RetinaFace box, then
``cv2.resize(crop, dsize=(380, 380))``: OpenCV's default ``INTER_LINEAR`` on the uint8
RGB crop; here the "detector" returns one box spanning the whole picture, so the crop
is the picture itself), and ``src/inference/inference_image.py`` (``torch.tensor(
face_list).float() / 255``, ``model(img).softmax(1)[:, 1]``). Saved as
``src/train_sbi.py`` saves (``torch.save({"model": ..., "optimizer": ..., "epoch":
...})``), loaded as the inference scripts load (``torch.load(w)["model"]``,
``load_state_dict``, strict).

Usage (a scratch checkout and a ``pip --target`` folder outside the project)::

    PYTHONPATH=<site with efficientnet_pytorch 0.7.1>:. python \\
        tests/official/make_sbi.py --repo <SelfBlendedImages>
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from tests.official.images import SIZES, reference_images
from tests.official.make_efficientnet_b4 import EFFICIENTNET_SCALE, _version, dumps
from tests.official.weights import HERE, key_spec, write_official_file

SEED = 0
COMMIT = "9fe4efe1192cb7448fb51a2b97a54e1312188160"


class WholePicture:
    """Stands in for RetinaFace: one box, the whole picture (``predict_jsons``' format)."""

    def predict_jsons(self, frame: np.ndarray) -> list[dict]:
        height, width = frame.shape[:2]
        return [{"bbox": [0, 0, width - 1, height - 1], "score": 1.0}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args()
    inference = args.repo.resolve() / "src" / "inference"
    sys.path.insert(0, str(inference))
    import efficientnet_pytorch.model as effmodel

    effmodel.load_pretrained_weights = lambda *a, **k: None  # no AdvProp download
    model = importlib.import_module("model").Detector().eval()
    preprocess = importlib.import_module("preprocess")
    faces = [preprocess.extract_face(a, WholePicture())[0] for a in reference_images()]
    reference = {
        "format": "SBI Detector (FFc23.tar, FFraw.tar)",
        "detector": "sbi",
        "overrides": {},
        "repository": "https://github.com/mapooon/SelfBlendedImages",
        "commit": COMMIT,
        "files": [
            "src/inference/model.py",
            "src/inference/preprocess.py",
            "src/inference/inference_image.py",
            "src/train_sbi.py",
        ],
        "packages": {"efficientnet_pytorch": _version("efficientnet_pytorch")},
        "preprocessing": "preprocess.extract_face: crop_face(phase='test') of the box (here the "
        "whole picture), cv2.resize(crop, dsize=(380, 380)) (INTER_LINEAR on the uint8 RGB "
        "array); torch.tensor(faces).float() / 255, no mean/std",
        "save": {
            "container": "dict",
            "key": "model",
            "extra": {"optimizer": {"state": {}, "param_groups": []}, "epoch": 99},
        },
        "filename": "FFc23.tar",
        "gains": {**EFFICIENTNET_SCALE, r"net\._fc\.weight": 0.25},
        "seed": SEED,
        "images_seed": 0,
        "image_sizes": [list(s) for s in SIZES],
        "dtype": args.dtype,
        "tolerance": {"logit": 2e-3, "prob": 1e-4},
        "keys": key_spec(model.state_dict()),
    }
    with tempfile.TemporaryDirectory() as tmp:  # saved and reloaded as the official code does
        path = write_official_file(reference, Path(tmp) / reference["filename"])
        model.load_state_dict(torch.load(path, map_location="cpu")["model"])
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    model.to(dtype).eval()
    logits, probs = [], []
    with torch.no_grad():
        for face in faces:
            img = torch.tensor(np.array([face])).to(dtype) / 255
            z = model(img)
            logits.append(float(z[0, 1].double() - z[0, 0].double()))
            probs.append(float(z.softmax(1)[0, 1]))
    reference["outputs"] = {"logits": logits, "probs": probs}
    print("sbi", np.round(logits, 4).tolist(), np.round(probs, 5).tolist())
    out = HERE / "sbi.json"
    out.write_text(dumps(reference))
    print("wrote", out)


if __name__ == "__main__":
    main()

"""Make the reference of the FaceForensics++ Xception's whole pickled models (``full_c23.p``).

Runs the authors' own code (github.com/ondyari/FaceForensics, commit
b952e41cba017eb37593c39e12bd884a934791e1, ``classification/``) from a checkout given
with ``--repo``:

* ``network/models.py``: ``model_selection('xception', num_out_classes=2)``, i.e.
  ``TransferModel('xception')``: ``return_pytorch04_xception()`` (``network/xception.py``'s
  ``Xception``) with ``last_linear`` replaced by ``Linear(2048, 2)``. Its ImageNet file
  (a hard-coded ``/home/ondyari/.torch/models/xception-b5690688.pth``) is not here:
  ``return_pytorch04_xception`` runs with ``pretrained=False`` (the seeded weights
  replace it anyway);
* the release: the models of ``faceforensics++_models.zip`` are whole pickled
  ``TransferModel`` objects (torch 1.0, legacy format): here ``torch.save(model,
  _use_new_zipfile_serialization=False)`` of the model in eval mode;
* ``detect_from_video.py``: ``model = torch.load(model_path)`` (``weights_only=False``
  under today's torch), ``preprocess_image`` (``cv2.cvtColor(BGR2RGB)``, PIL,
  ``dataset/transform.py``'s ``xception_default_data_transforms['test']``:
  ``Resize((299, 299))``, ``ToTensor``, ``Normalize([0.5] * 3, [0.5] * 3)``) and
  ``predict_with_model``'s steps (``preprocess_image``, the model, ``nn.Softmax(dim=1)``,
  class 1 = fake; its last line, ``float`` of a (1,) array, fails under NumPy 2, so
  the script runs those steps itself) on each picture as a BGR array (a face crop as
  ``image[y:y+size, x:x+size]`` of a cv2 frame).

Not verified: ``detect_from_video.py`` never calls ``model.eval()``, so it runs the
model in the mode it was pickled in; this reference assumes eval mode (``training``
False in the file). ``detect_from_video.py`` imports ``dlib`` for its face detector,
used by none of the functions called here: a stub module stands in for it. Their
requirements pin torchvision 0.2.1 and Pillow 5.4.1; this runs today's (the
``Resize`` of a PIL image is Pillow's bilinear resize in both).

The reference's ``save`` lists the official module tree (class paths from
``named_modules``), from which ``tests/official/weights.py`` pickles a stand-in with
the same class paths, tensors and layout; the script checks that deepsift's safe
reader gets the same tensors from both files.

Usage (from the project root)::

    PYTHONPATH=<scratch site-packages>:. python tests/official/make_faceforensics.py \\
        --repo <FaceForensics checkout>
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.official.images import reference_images  # noqa: E402
from tests.official.make_deepfakebench_xception import dump_reference  # noqa: E402
from tests.official.weights import key_spec, seeded_state_dict, write_official_file  # noqa: E402

COMMIT = "b952e41cba017eb37593c39e12bd884a934791e1"
SEED = 15
IMAGES_SEED = 0
#: as for DeepfakeBench's Xception: a wrong resize moves a random network's logits by
#: about 1e-3, so the comparison is tighter than the 2e-3 default
TOLERANCE = {"logit": 1e-4, "prob": 1e-4}


def import_faceforensics(classification: Path) -> dict[str, types.ModuleType]:
    sys.path.insert(0, str(classification))
    sys.modules.setdefault("dlib", types.ModuleType("dlib"))  # face detector: not called
    models = importlib.import_module("network.models")
    detect = importlib.import_module("detect_from_video")
    return {"models": models, "detect": detect}


def make(modules: dict, commit: str) -> dict:
    import cv2

    models, detect = modules["models"], modules["detect"]
    build = models.return_pytorch04_xception
    models.return_pytorch04_xception = lambda pretrained=True: build(pretrained=False)
    try:
        model, image_size, *_ = models.model_selection("xception", num_out_classes=2)
    finally:
        models.return_pytorch04_xception = build
    assert image_size == 299
    spec = key_spec(model.state_dict())
    model.load_state_dict(seeded_state_dict(spec, SEED), strict=True)
    model.eval()
    tree = [
        [path, f"{type(m).__module__}.{type(m).__qualname__}"]
        for path, m in model.named_modules(remove_duplicate=False)
    ]
    save = {"container": "pickled_module", "zipfile": False, "training": False, "modules": tree}
    logits, probs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "full_c23.p"
        torch.save(model, path, _use_new_zipfile_serialization=False)
        model = torch.load(path, map_location="cpu", weights_only=False)  # detect_from_video
        assert not model.training
        with torch.no_grad():
            for array in reference_images(IMAGES_SEED):
                bgr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
                # predict_with_model's lines up to its softmax (its last one,
                # float(prediction.numpy()) of a (1,) array, fails under NumPy 2)
                output = model(detect.preprocess_image(bgr, cuda=False))
                softmax = torch.nn.Softmax(dim=1)(output)
                logits.append(float(output[0, 1].double() - output[0, 0].double()))
                probs.append(float(softmax[0, 1]))
        check_stand_in(path, {"keys": spec, "seed": SEED, "save": save}, Path(tmp))
    return {
        "format": "FaceForensics++ full_c23.p (whole pickled TransferModel)",
        "detector": "xception",
        "overrides": {},
        "repository": "https://github.com/ondyari/FaceForensics",
        "commit": commit,
        "files": [
            "classification/network/models.py",
            "classification/network/xception.py",
            "classification/dataset/transform.py",
            "classification/detect_from_video.py",
        ],
        "preprocessing": (
            "detect_from_video.preprocess_image on the BGR crop: cv2.cvtColor BGR2RGB, "
            "PIL.Image.fromarray, xception_default_data_transforms['test'] = "
            "Resize((299, 299)) (PIL bilinear), ToTensor, Normalize([0.5]*3, [0.5]*3); "
            "predict_with_model: Softmax(dim=1)[:, 1]; model in eval mode (assumed: the "
            "script never calls eval())"
        ),
        "save": save,
        "filename": "full_c23.p",
        "seed": SEED,
        "images_seed": IMAGES_SEED,
        "dtype": "float32",
        "tolerance": TOLERANCE,
        "keys": spec,
        "outputs": {"logits": logits, "probs": probs},
    }


def check_stand_in(official: Path, reference: dict, tmp: Path) -> None:
    """deepsift's safe reader gets the same class and tensors from both pickles."""
    from detectors.layers.pickled_module import read_pickled_module

    stand_in = write_official_file(reference, tmp / "stand_in.p")
    name_a, state_a = read_pickled_module(official)
    name_b, state_b = read_pickled_module(stand_in)
    assert name_a == name_b == "network.models.TransferModel", (name_a, name_b)
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="FaceForensics checkout")
    parser.add_argument("--commit", default=COMMIT, help="the commit the checkout is at")
    args = parser.parse_args()
    torch.manual_seed(0)
    modules = import_faceforensics(args.repo.resolve() / "classification")
    reference = make(modules, args.commit)
    out = HERE / "faceforensics_xception_pickle.json"
    out.write_text(dump_reference(reference))
    print(out, "logits", np.round(reference["outputs"]["logits"], 4).tolist())


if __name__ == "__main__":
    main()

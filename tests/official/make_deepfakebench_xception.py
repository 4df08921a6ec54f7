"""Make the references of DeepfakeBench's Xception-based detectors: xception, spsl, core.

Runs the authors' own code (github.com/SCLBD/DeepfakeBench, commit
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04) from a checkout given with ``--repo``:

* ``training/networks/xception.py`` (``Xception``, the backbone of all three);
* ``training/detectors/xception_detector.py`` (``XceptionDetector``),
  ``training/detectors/spsl_detector.py`` (``SpslDetector``: the phase-only channel,
  ``inc: 4``), ``training/detectors/core_detector.py`` (``CoreDetector``), each built
  from its ``training/config/detector/<name>.yaml``;
* ``training/dataset/abstract_dataset.py``: ``DeepfakeAbstractBaseDataset.load_rgb``
  (``cv2.imread``, ``cv2.cvtColor(BGR2RGB)``, ``cv2.resize((256, 256),
  INTER_CUBIC)``), ``to_tensor`` (``T.ToTensor``) and ``normalize``
  (``T.Normalize(config mean, std)``), called on the reference pictures written as PNG;
* ``training/trainer/trainer.py``'s ``save_ckpt`` (``torch.save(model.state_dict())``)
  and ``training/test.py``'s loading (``model.load_state_dict(torch.load(...),
  strict=True)``, then ``model(data_dict, inference=True)``, ``prob = softmax[:, 1]``).

The ``__init__`` modules of ``detectors`` and ``dataset`` import every DeepfakeBench detector and dataset (and their
many packages), so this script registers the packages ``detectors``, ``networks`` and
``loss`` with their directories as search path and imports only the modules named
above; the registries are DeepfakeBench's own (``metrics/registry.py``). The
ImageNet file ``config['pretrained']`` the constructors read is replaced by a
randomly initialised Xception's state dict in that file's layout (2-D ``pointwise``
kernels); the seeded weights replace it anyway.
Packages their code imports that the project's venv lacks (albumentations 1.1.0,
lmdb, efficientnet_pytorch, tensorboard) go on ``PYTHONPATH`` from a scratch folder.

Findings recorded with the references:

* ``load_rgb`` always calls ``cv2.resize`` to ``resolution`` (256); for a crop that
  is already 256 x 256 OpenCV copies it unchanged (checked below), so the stored 256
  px crops of DeepfakeBench's datasets reach the network as they are, and other
  sizes are resized with ``INTER_CUBIC``.
* SPSL's phase (``phase_without_amplitude``): at this commit ``torch.fft.fftn(gray,
  dim=(-1, -2))``, a transform per image; the first release (up to commit 14eb0ce,
  Nov. 2023) called ``fftn(gray)`` with no ``dim``, a 4-D transform over the batch
  too, which mixes images of a batch (for a batch of one both are the same). The
  references here are computed one image at a time (batch size 1), and the script
  checks that the batch of all pictures gives the same outputs at this commit.

Usage (from the project root, with the checkout at ``COMMIT``)::

    PYTHONPATH=<scratch site-packages>:. python tests/official/make_deepfakebench_xception.py \
        --repo <DeepfakeBench checkout> [--only xception spsl core]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.official.images import reference_images  # noqa: E402
from tests.official.weights import key_spec, seeded_state_dict  # noqa: E402

COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
#: one seed per format, so that xception and core (the same network) differ
SEEDS = {"xception": 12, "spsl": 13, "core": 14}
#: a random network barely depends on its input: a wrong resize (PIL for cv2, bilinear
#: for bicubic) moves these logits by 5e-4 to 1e-2, the official code and deepsift
#: agree to 3e-7 in float32, so 1e-4 (tighter than the 2e-3 default) tells them apart
TOLERANCE = {"logit": 1e-4, "prob": 1e-4}
IMAGES_SEED = 0

#: deepsift detector name, DeepfakeBench detector module, class, config, reference name
FORMATS = {
    "xception": ("xception_detector", "XceptionDetector", "xception", "deepfakebench_xception"),
    "spsl": ("spsl_detector", "SpslDetector", "spsl", "deepfakebench_spsl"),
    "core": ("core_detector", "CoreDetector", "core", "deepfakebench_core"),
}
FILENAMES = {"xception": "xception_best.pth", "spsl": "spsl_best.pth", "core": "core_best.pth"}


def _package(name: str, path: Path) -> types.ModuleType:
    """Register ``name`` as a package searching ``path`` without running its ``__init__``."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
    return module


def import_deepfakebench(training: Path) -> dict[str, types.ModuleType]:
    sys.path.insert(0, str(training))
    registry = importlib.import_module("metrics.registry")
    detectors = _package("detectors", training / "detectors")
    detectors.DETECTOR = registry.DETECTOR
    networks = _package("networks", training / "networks")
    networks.BACKBONE = registry.BACKBONE
    loss = _package("loss", training / "loss")
    loss.LOSSFUNC = registry.LOSSFUNC
    importlib.import_module("networks.xception")
    importlib.import_module("loss.cross_entropy_loss")
    importlib.import_module("loss.consistency_loss")
    modules = {k: importlib.import_module(f"detectors.{v[0]}") for k, v in FORMATS.items()}
    _package("dataset", training / "dataset")
    modules["dataset"] = importlib.import_module("dataset.abstract_dataset")
    modules["registry"] = registry
    return modules


def official_inputs(dataset_module, config: dict, workdir: Path) -> list[torch.Tensor]:
    """The pictures through DeepfakeBench's own test-time loading: load_rgb, to_tensor, normalize."""
    import cv2

    base = dataset_module.DeepfakeAbstractBaseDataset
    fake_self = types.SimpleNamespace(config=config, lmdb=False)
    out = []
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for i, array in enumerate(reference_images(IMAGES_SEED)):
            name = f"./picture_{i}.png"  # load_rgb reads paths starting with '.' as given
            cv2.imwrite(name, cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
            image = np.array(base.load_rgb(fake_self, name))  # as __getitem__
            if array.shape[:2] == (config["resolution"],) * 2:
                assert np.array_equal(image, array), "cv2.resize at the same size changed pixels"
            tensor = base.normalize(fake_self, base.to_tensor(fake_self, image))
            out.append(tensor)
    finally:
        os.chdir(cwd)
    return out


def make(name: str, modules: dict, training: Path, commit: str) -> dict:
    import yaml

    module_name, class_name, config_name, reference_name = FORMATS[name]
    config = yaml.safe_load((training / "config" / "detector" / f"{config_name}.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the ImageNet file the constructor reads: a random Xception (replaced below)
        imagenet = modules["registry"].BACKBONE["xception"]({**config["backbone_config"], "inc": 3})
        state = {  # Cadene's xception-b5690688.pth keeps pointwise kernels 2-D
            k: v.flatten(1) if "pointwise" in k else v for k, v in imagenet.state_dict().items()
        }
        torch.save(state, tmp / "imagenet.pth")
        config["pretrained"] = str(tmp / "imagenet.pth")
        detector_class = modules["registry"].DETECTOR[config_name]
        assert detector_class.__name__ == class_name
        model = detector_class(config)
        spec = key_spec(model.state_dict())
        model.load_state_dict(seeded_state_dict(spec, SEEDS[name]), strict=True)
        path = tmp / FILENAMES[name]
        torch.save(model.state_dict(), path)  # trainer.save_ckpt
        model = detector_class(config)  # test.py: a fresh model, strict load
        model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
        model.eval()
        inputs = official_inputs(modules["dataset"], config, tmp)
        logits, probs = [], []
        with torch.no_grad():
            for tensor in inputs:  # batch size 1 (see the docstring on SPSL)
                pred = model({"image": tensor[None]}, inference=True)
                cls = pred["cls"].double()
                logits.append(float(cls[0, 1] - cls[0, 0]))
                probs.append(float(pred["prob"][0]))
            batch = model({"image": torch.stack(inputs)}, inference=True)
        np.testing.assert_allclose(batch["prob"].numpy(), probs, rtol=0, atol=1e-6)
    files = [
        "training/networks/xception.py",
        f"training/detectors/{module_name}.py",
        f"training/config/detector/{config_name}.yaml",
        "training/dataset/abstract_dataset.py",
        "training/trainer/trainer.py",
        "training/test.py",
    ]
    if name == "core":
        files.insert(2, "training/loss/consistency_loss.py")
    return {
        "format": f"DeepfakeBench {FILENAMES[name]}",
        "detector": name,
        "overrides": {},
        "repository": "https://github.com/SCLBD/DeepfakeBench",
        "commit": commit,
        "files": files,
        "preprocessing": (
            "DeepfakeAbstractBaseDataset.load_rgb: cv2.imread (PNG of the picture), "
            "cv2.cvtColor BGR2RGB, cv2.resize((256, 256), interpolation=cv2.INTER_CUBIC) "
            "(a copy when already 256 x 256); ToTensor; Normalize(mean=[0.5]*3, std=[0.5]*3); "
            "one picture per batch"
        ),
        "save": {"container": "state_dict"},
        "filename": FILENAMES[name],
        "seed": SEEDS[name],
        "images_seed": IMAGES_SEED,
        "dtype": "float32",
        "tolerance": TOLERANCE,
        "keys": spec,
        "outputs": {"logits": logits, "probs": probs},
        "_name": reference_name,
    }


def dump_reference(reference: dict) -> str:
    """JSON with one line per field and per key of ``keys`` (small, readable diffs)."""
    lines = []
    for field, value in reference.items():
        if field == "keys":
            rows = ",\n  ".join(json.dumps(row) for row in value)
            lines.append(f'"keys": [\n  {rows}\n ]')
        else:
            lines.append(f"{json.dumps(field)}: {json.dumps(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="DeepfakeBench checkout")
    parser.add_argument("--commit", default=COMMIT, help="the commit the checkout is at")
    parser.add_argument("--only", nargs="*", default=list(FORMATS), choices=list(FORMATS))
    args = parser.parse_args()
    torch.manual_seed(0)
    training = args.repo.resolve() / "training"
    modules = import_deepfakebench(training)
    for name in args.only:
        reference = make(name, modules, training, args.commit)
        out = HERE / f"{reference.pop('_name')}.json"
        out.write_text(dump_reference(reference))
        print(out, "logits", np.round(reference["outputs"]["logits"], 4).tolist())


if __name__ == "__main__":
    main()

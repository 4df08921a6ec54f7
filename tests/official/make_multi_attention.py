"""Make the Multi-Attention reference from DeepfakeBench's own code (not run by the tests).

``multi_attention`` (``multi_attention_best.pth``): github.com/SCLBD/DeepfakeBench at
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04, efficientnet-pytorch 0.7.1 (``install.sh``),
kornia (unpinned; only AGDA's blur, which inference does not run). Code that runs:
``training/detectors/multi_attention_detector.py`` (``MultiAttentionDetector`` with
``config/detector/multi_attention.yaml``, ``pretrained`` None so
``EfficientNet.from_name``) and ``training/networks/efficientnetb4.py``. DeepfakeBench's
registries, losses and metrics are stubbed (they only register classes or compute
training metrics). The weights are :func:`~tests.official.weights.official_state_dict`
of the detector's own ``state_dict()`` keys (its border mask as computed), saved and
reloaded strictly; the pictures are :func:`~tests.official.images.reference_images`
through ``abstract_dataset.load_rgb`` / ``to_tensor`` / ``normalize`` as written there
(BGR->RGB, ``cv2.resize`` to 256 x 256 INTER_CUBIC on uint8, ToTensor, Normalize 0.5).
``outputs``: ``forward(..., inference=True)`` after the warm-up (``batch_cnt`` past
35,910: the ensemble classifier, deepsift's default ``head``); ``outputs_backbone``: at
``batch_cnt`` 0 (what ``test.py`` scores with a fresh model: the EfficientNet's
``last_layer``, deepsift's ``head=backbone``).

Usage (a scratch copy of DeepfakeBench and a ``pip --target`` folder outside the
project)::

    PYTHONPATH=<site with efficientnet_pytorch 0.7.1 and kornia>:. python \\
        tests/official/make_multi_attention.py --repo <DeepfakeBench>
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import yaml

from tests.official.images import SIZES, reference_images
from tests.official.make_efficientnet_b4 import EFFICIENTNET_SCALE, dumps
from tests.official.weights import HERE, computed_tensor, key_spec, write_official_file

SEED = 0
COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
GAINS = {
    **EFFICIENTNET_SCALE,
    r"backbone\.last_layer\.weight": 0.25,
    r"ensemble_classifier_fc\.2\.weight": 0.25,
}


def _package_version() -> str:
    import efficientnet_pytorch

    return efficientnet_pytorch.__version__


def deepfakebench_input(array: np.ndarray) -> torch.Tensor:
    """abstract_dataset's test path on an RGB uint8 picture (the PNG round trip is lossless)."""
    import cv2

    image = cv2.resize(array, (256, 256), interpolation=cv2.INTER_CUBIC)
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.5


class _Registry(dict):
    def register_module(self, module_name: str):
        def add(cls: type) -> type:
            self[module_name] = cls
            return cls

        return add


class _Loss:
    def __init__(self, **_: object) -> None:
        pass


def _stub_deepfakebench() -> None:
    backbones, detectors_ = _Registry(), _Registry()
    modules = {
        "metrics": {},
        "metrics.registry": {"BACKBONE": backbones},
        "metrics.base_metrics_class": {"calculate_metrics_for_train": lambda *a: None},
        "networks": {"BACKBONE": backbones},
        "loss": {"LOSSFUNC": {"cross_entropy": _Loss, "region_independent_loss": _Loss}},
        "detectors": {"DETECTOR": detectors_},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        module.__path__ = []  # a package, for the relative imports
        sys.modules[name] = module


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    training = args.repo.resolve() / "training"
    _stub_deepfakebench()
    _load("networks.efficientnetb4", training / "networks" / "efficientnetb4.py")
    _load("detectors.base_detector", training / "detectors" / "base_detector.py")
    dfb = _load(
        "detectors.multi_attention_detector", training / "detectors" / "multi_attention_detector.py"
    )
    config = yaml.safe_load((training / "config" / "detector" / "multi_attention.yaml").read_text())
    config["pretrained"] = None
    torch.manual_seed(0)
    model = dfb.MultiAttentionDetector(config).eval()
    reference = {
        "format": "DeepfakeBench MultiAttentionDetector (multi_attention_best.pth)",
        "detector": "multi_attention",
        "overrides": {},
        "repository": "https://github.com/SCLBD/DeepfakeBench",
        "files": [
            "training/detectors/multi_attention_detector.py",
            "training/networks/efficientnetb4.py",
            "training/config/detector/multi_attention.yaml",
            "training/dataset/abstract_dataset.py",
        ],
        "packages": {"efficientnet_pytorch": _package_version()},
        "preprocessing": "abstract_dataset.load_rgb: cv2.imread, BGR->RGB, cv2.resize to 256 x 256 "
        "INTER_CUBIC on the uint8 array; T.ToTensor, T.Normalize(mean=std=0.5)",
        "save": {"container": "state_dict"},
        "filename": "multi_attention_best.pth",
        "commit": COMMIT,
        "seed": SEED,
        "images_seed": 0,
        "image_sizes": [list(s) for s in SIZES],
        "dtype": "float32",
        "tolerance": {"logit": 2e-3, "prob": 1e-4},
        "gains": GAINS,
        "computed": {"attention_generation.mask": ["border", 24, 2]},
        "keys": key_spec(model.state_dict()),
    }
    assert torch.equal(
        computed_tensor(["border", 24, 2]), model.state_dict()["attention_generation.mask"]
    )
    with tempfile.TemporaryDirectory() as tmp:  # saved and reloaded as the official code does
        path = write_official_file(reference, Path(tmp) / reference["filename"])
        model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
    model.eval()
    x = torch.stack([deepfakebench_input(a) for a in reference_images(0)])
    for key, count in (("outputs", 10**9), ("outputs_backbone", -1)):
        model.batch_cnt = count  # forward adds 1 first; <= 35,910: the backbone's head
        with torch.no_grad():
            out = model({"image": x.clone(), "label": torch.zeros(len(x), dtype=torch.long)}, True)
        cls = out["cls"].double()
        reference[key] = {
            "logits": (cls[:, 1] - cls[:, 0]).tolist(),
            "probs": out["prob"].double().tolist(),
        }
    (HERE / "deepfakebench_multi_attention.json").write_text(dumps(reference))
    print(reference["outputs"], reference["outputs_backbone"])


if __name__ == "__main__":
    main()

"""Make the DeepfakeBench references of F3-Net, SRM, RECCE and Face X-ray from DeepfakeBench's own code.

Repository: github.com/SCLBD/DeepfakeBench, commit 8a4a7bf5e966c5c5618bc27d1719c3683eae9a04
(2025-06-09). Its code runs from a checkout outside this project (``--repo``,
the repository root); nothing of it is copied here. Files whose code runs:

* the models: ``training/detectors/f3net_detector.py`` (``F3netDetector``, ``FAD_Head``),
  ``srm_detector.py`` (``SRMDetector``), ``recce_detector.py`` (``RecceDetector``),
  ``facexray_detector.py`` (``FaceXrayDetector``), ``base_detector.py``;
  ``training/networks/xception.py``, ``networks/cls_hrnet.py``; ``training/loss/*``
  the detectors build; ``training/metrics/registry.py``;
* their configs: ``training/config/detector/{f3net,srm,recce,facexray}.yaml``
  (``resolution: 256``, ``mean = std = 0.5``, ``backbone_config``) and
  ``training/config/backbone/cls_hrnet_w48.yaml``;
* the test-time input: ``training/dataset/abstract_dataset.py``
  ``DeepfakeAbstractBaseDataset.load_rgb`` (``cv2.imread``, ``COLOR_BGR2RGB``,
  ``cv2.resize((resolution, resolution), INTER_CUBIC)``), ``to_tensor``
  (``T.ToTensor``) and ``normalize`` (``T.Normalize(mean, std)``), called on PNG files of
  :func:`tests.official.images.reference_images` (no augmentation in test mode);
* the save and load: ``training/trainer/trainer.py`` ``save_ckpt``
  (``torch.save(self.model.state_dict())``: the detector's own state dict, no prefix;
  ``training/test.py`` loads it with ``model.load_state_dict(ckpt, strict=True)``,
  which is how the released ``*_best.pth`` load), then ``model.eval()`` and
  ``model(data_dict, inference=True)``: ``logit = cls[:, 1] - cls[:, 0]``, ``prob =
  pred_dict['prob']`` (``softmax(cls)[:, 1]``).

What is not theirs, and why: the packages their modules import but these models never
use (``dataset/__init__``'s other datasets, dlib, imgaug, tensorboard's
``SummaryWriter`` ...) are kept out by importing
the four modules directly under stub packages (``detectors``, ``networks``, ``loss``,
``dataset`` holding only their registries); their ``build_backbone`` reads ImageNet
files that cannot be downloaded here, so it is given stand-ins (an Xception file with
only ``conv1.weight``, an empty HRNet file; every tensor is then replaced by the seeded
weights); RECCE's timm encoder is built with ``pretrained=False`` for the same reason.
F3-Net's ``FAD_Head`` DCT matrices and band masks are constants every real
``f3net_best.pth`` holds with their formula's values, so the reference keeps them
(``computed`` in the JSON, checked here to equal what ``FAD_Head`` builds) instead of
seeding them. Needs albumentations 1.1 and lmdb (DeepfakeBench's pins) on
``PYTHONPATH`` for ``abstract_dataset.py``.

Usage::

    PYTHONPATH=<site with albumentations==1.1.0, qudida, lmdb> \\
        python tests/official/make_deepfakebench_f3net_srm_recce_xray.py \\
        --repo /path/to/DeepfakeBench [--only deepfakebench_f3net ...]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import types
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
REPOSITORY = "github.com/SCLBD/DeepfakeBench"
COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
TEST_INPUT = (
    "DeepfakeAbstractBaseDataset.load_rgb: cv2.imread, COLOR_BGR2RGB, "
    "cv2.resize((256, 256), interpolation=cv2.INTER_CUBIC) on the uint8 crop; "
    "T.ToTensor; T.Normalize(mean=[0.5] * 3, std=[0.5] * 3)"
)
COMMON_FILES = [
    "training/detectors/base_detector.py",
    "training/networks/xception.py",
    "training/metrics/registry.py",
    "training/dataset/abstract_dataset.py",
    "training/trainer/trainer.py",
    "training/test.py",
]

FORMATS: dict[str, dict[str, Any]] = {
    "deepfakebench_f3net": {
        "detector": "f3net",
        "overrides": {"mode": "fad"},
        "config": "f3net.yaml",
        "module": "f3net_detector",
        "filename": "f3net_best.pth",
        "files": ["training/detectors/f3net_detector.py", "training/config/detector/f3net.yaml"],
    },
    "deepfakebench_srm": {
        "detector": "srm",
        "overrides": {},
        "config": "srm.yaml",
        "module": "srm_detector",
        "filename": "srm_best.pth",
        "files": [
            "training/detectors/srm_detector.py",
            "training/config/detector/srm.yaml",
            "training/loss/am_softmax.py",
        ],
    },
    "deepfakebench_recce": {
        "detector": "recce",
        "overrides": {},
        "config": "recce.yaml",
        "module": "recce_detector",
        "filename": "recce_best.pth",
        "files": ["training/detectors/recce_detector.py", "training/config/detector/recce.yaml"],
    },
    "deepfakebench_facexray": {
        "detector": "face_xray",
        "overrides": {},
        "config": "facexray.yaml",
        "module": "facexray_detector",
        "filename": "facexray_best.pth",
        "files": [
            "training/detectors/facexray_detector.py",
            "training/config/detector/facexray.yaml",
            "training/networks/cls_hrnet.py",
            "training/config/backbone/cls_hrnet_w48.yaml",
        ],
    },
}


def _local(name: str) -> types.ModuleType:
    """One of this folder's modules, by file (the project root stays off ``sys.path``:
    its ``detectors`` package would shadow DeepfakeBench's)."""
    spec = importlib.util.spec_from_file_location(f"_official_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_deepfakebench(training: Path) -> None:
    """DeepfakeBench's packages as stubs that hold its registries, then the needed modules."""
    sys.path.insert(0, str(training))
    from metrics.registry import BACKBONE, DETECTOR, LOSSFUNC

    for name, attrs in {
        "detectors": {"DETECTOR": DETECTOR},
        "networks": {"BACKBONE": BACKBONE},
        "loss": {"LOSSFUNC": LOSSFUNC},
        "dataset": {},
    }.items():
        stub = types.ModuleType(name)
        stub.__path__ = [str(training / name)]
        for key, value in attrs.items():
            setattr(stub, key, value)
        sys.modules[name] = stub
    board = types.ModuleType("torch.utils.tensorboard")  # imported, never used by the models
    board.SummaryWriter = None
    sys.modules["torch.utils.tensorboard"] = board
    for module in (
        "networks.xception",
        "networks.cls_hrnet",
        "loss.cross_entropy_loss",
        "loss.am_softmax",
        "loss.bce_loss",
    ):
        importlib.import_module(module)


def build(fmt: dict[str, Any], root: Path, stand_ins: Path) -> torch.nn.Module:
    """The official detector from its config, as ``test.py`` builds it."""
    training = root / "training"
    config = yaml.safe_load((training / "config/detector" / fmt["config"]).read_text())
    config.update(yaml.safe_load((training / "config/test_config.yaml").read_text()))
    xception = stand_ins / "xception-b5690688.pth"
    torch.save({"conv1.weight": torch.zeros(32, 3, 3, 3)}, xception)
    config["pretrained"] = str(xception)
    hrnet = root / "training/pretrained/hrnetv2_w48_imagenet_pretrained.pth"
    if not hrnet.exists():
        hrnet.parent.mkdir(parents=True, exist_ok=True)
        torch.save({}, hrnet)
    module = importlib.import_module(f"detectors.{fmt['module']}")
    if fmt["module"] == "recce_detector":  # timm's Xception, without the ImageNet download
        module.encoder_params["xception"]["init_op"] = partial(module.xception, pretrained=False)
    from detectors import DETECTOR

    return DETECTOR[config["model_name"]](config)


def official_inputs(root: Path, images: list[np.ndarray], folder: Path) -> torch.Tensor:
    """DeepfakeBench's test-time tensors of the pictures, by its own dataset methods."""
    from dataset.abstract_dataset import DeepfakeAbstractBaseDataset as Dataset

    fake_self = types.SimpleNamespace(
        config={"resolution": 256, "mean": [0.5] * 3, "std": [0.5] * 3, "rgb_dir": "."},
        lmdb=False,
    )
    tensors = []
    for i, array in enumerate(images):
        path = folder / f"image_{i}.png"
        Image.fromarray(array).save(path)
        relative = "./" + os.path.relpath(path, root)
        image = np.array(Dataset.load_rgb(fake_self, relative))
        tensors.append(Dataset.normalize(fake_self, Dataset.to_tensor(fake_self, image)))
    return torch.stack(tensors)


def run_official(model: torch.nn.Module, inputs: torch.Tensor, dtype: torch.dtype):
    model = model.to(dtype).eval()
    with torch.no_grad():
        pred = model({"image": inputs.to(dtype), "label": torch.zeros(len(inputs))}, inference=True)
    cls = pred["cls"].double()
    return (cls[:, 1] - cls[:, 0]).tolist(), pred["prob"].double().tolist()


def make(name: str, root: Path, dtype_name: str) -> dict[str, Any]:
    weights, pictures = _local("weights"), _local("images")
    fmt = FORMATS[name]
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tmp = Path(tmp)
        model = build(fmt, root, tmp)
        own = model.state_dict()
        reference: dict[str, Any] = {
            "format": name,
            "detector": fmt["detector"],
            "overrides": fmt["overrides"],
            "repository": REPOSITORY,
            "commit": COMMIT,
            "files": fmt["files"] + COMMON_FILES,
            "preprocessing": TEST_INPUT,
            "save": {"container": "state_dict"},
            "filename": fmt["filename"],
            "seed": 0,
            "images_seed": 0,
            "dtype": dtype_name,
            # the Xception family's random nets react little to their input: a wrong resize
            # (bilinear for bicubic, Pillow for OpenCV) moves them by only 2e-3 to 1.4e-2, so
            # 2e-3 could pass one; measured 4.5e-7 to 9.2e-7 (audit #12). Face X-ray runs in
            # float64, where its logits of ~100 move far more.
            "tolerance": {} if name == "deepfakebench_facexray" else {"logit": 1e-4, "prob": 1e-4},
        }
        if name == "deepfakebench_f3net":
            size = own["FAD_head._DCT_all"].shape[-1]
            bands = [
                (0, size // 2.82),
                (size // 2.82, size // 2),
                (size // 2, size * 2),
                (0, size * 2),
            ]
            reference["computed"] = {
                "FAD_head._DCT_all": ["dct", size],
                "FAD_head._DCT_all_T": ["dct_t", size],
                **{
                    f"FAD_head.filters.{i}.base": ["band", size, start, end]
                    for i, (start, end) in enumerate(bands)
                },
            }
        reference["keys"] = weights.key_spec(own)
        state = weights.official_state_dict(reference)
        for key in reference.get("computed", {}):
            gap = (state[key].double() - own[key].double()).abs().max().item()
            assert gap < 1e-6, f"{key}: the recipe is {gap} from what FAD_Head builds"
        path = weights.write_official_file(reference, tmp / fmt["filename"])
        model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)  # test.py
        inputs = official_inputs(root, pictures.reference_images(0), tmp)
        dtype = torch.float64 if dtype_name == "float64" else torch.float32
        logits, probs = run_official(model, inputs, dtype)
        other = torch.float32 if dtype == torch.float64 else torch.float64
        check, _ = run_official(model, inputs, other)
        gap = max(abs(a - b) for a, b in zip(logits, check, strict=True))
        print(f"{name}: logits {np.round(logits, 4).tolist()}; float32 vs float64 {gap:.2e}")
    reference["outputs"] = {"logits": logits, "probs": probs}
    return reference


def dumps(reference: dict[str, Any]) -> str:
    """The JSON, one field a line and one key of the state dict a line."""
    lines = []
    for field, value in reference.items():
        if field == "keys":
            body = ",\n".join("  " + json.dumps(item) for item in value)
            lines.append(f' "keys": [\n{body}\n ]')
        else:
            lines.append(f" {json.dumps(field)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a DeepfakeBench checkout")
    parser.add_argument("--only", nargs="*", choices=sorted(FORMATS), default=sorted(FORMATS))
    parser.add_argument("--dtype", nargs="*", default=[], help="NAME=float64 for a format")
    args = parser.parse_args()
    dtypes = dict(item.split("=", 1) for item in args.dtype)
    root = args.repo.resolve()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    os.chdir(root)  # their configs and ImageNet paths are relative to the repository root
    import_deepfakebench(root / "training")
    for name in args.only:
        reference = make(name, root, dtypes.get(name, "float32"))
        (HERE / f"{name}.json").write_text(dumps(reference))


if __name__ == "__main__":
    main()

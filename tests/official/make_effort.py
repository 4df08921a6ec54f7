"""Make ``effort_dfb.json`` and ``effort_authors.json`` from the two copies of ``EffortDetector``.

Repositories (checkouts outside this project, never copied here):

* ``effort_dfb``: github.com/SCLBD/DeepfakeBench, commit
  ``8a4a7bf5e966c5c5618bc27d1719c3683eae9a04``, ``--repo`` = the repository root;
* ``effort_authors``: github.com/YZY-stack/Effort-AIGI-Detection, commit
  ``96f5dea2b534d400cfd7003f053c7e93c8e16461``, ``--repo`` = its ``DeepfakeBench/`` folder
  (the same detector, whose ``SVDResidualLinear`` also keeps ``U_r``, ``S_r``, ``V_r``).

Files whose code runs: ``training/detectors/effort_detector.py`` (``EffortDetector``,
``SVDResidualLinear``, ``apply_svd_residual_to_self_attn``, ``replace_with_svd_residual``),
``training/detectors/base_detector.py``, ``training/metrics/registry.py``,
``training/config/detector/effort.yaml``; the test-time input of
``training/dataset/abstract_dataset.py`` (``load_rgb``: ``cv2.imread``, ``COLOR_BGR2RGB``,
``cv2.resize((224, 224), INTER_CUBIC)``; ``to_tensor``; ``normalize`` with the config's
CLIP mean and std); the save and load of ``trainer.py`` / ``test.py``
(``torch.save(model.state_dict())``, ``load_state_dict(strict=True)``) and
``model(data_dict, inference=True)``: ``logit = cls[:, 1] - cls[:, 0]``, ``prob =
softmax(cls)[:, 1]``.

What is not theirs, and why: ``build_backbone`` calls ``CLIPModel.from_pretrained`` on a
local folder of ``openai/clip-vit-large-patch14`` (not reachable here), so the module's
``CLIPModel`` is given a stand-in whose ``from_pretrained`` returns a tiny ``CLIPModel``
of the same class: a vision tower of the full width 1024 (so ``r = 1024 - 1`` leaves one
residual triplet, as in ViT-L/14), 16 heads, 2 layers, MLP width 64, 224 px input; its
weights are then replaced by the seeded ones. ``loralib`` (imported, never used) is a
stub; the packages are stubs holding their registries (as in
``make_deepfakebench_f3net_srm_recce_xray.py``). Run with transformers 5.x (the
references used 4.x; the vision keys are the same). Needs albumentations 1.1, qudida
and lmdb on ``PYTHONPATH`` for ``abstract_dataset.py``.

    PYTHONPATH=<site with albumentations==1.1.0, qudida, lmdb> \\
        python tests/official/make_effort.py --name effort_dfb --repo /path/to/DeepfakeBench
    ... --name effort_authors --repo /path/to/Effort-AIGI-Detection/DeepfakeBench

``--full --out /tmp/effort_full.json`` runs the full ViT-L/14 tower instead (24 layers, MLP
4096; 96 SVDs of 1024 x 1024), for a one-off check outside the test suite (the file is
1.2 GB).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
VISION = {
    "hidden_size": 1024,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}
TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}
NAMES: dict[str, dict[str, Any]] = {
    "effort_dfb": {
        "repository": "https://github.com/SCLBD/DeepfakeBench",
        "commit": "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04",
        "format": "DeepfakeBench effort_best.pth (torch.save(EffortDetector.state_dict())), "
        "tiny tower of width 1024",
    },
    "effort_authors": {
        "repository": "https://github.com/YZY-stack/Effort-AIGI-Detection",
        "commit": "96f5dea2b534d400cfd7003f053c7e93c8e16461",
        "format": "the authors' EffortDetector state dict (with U_r, S_r, V_r), "
        "tiny tower of width 1024",
    },
}
TEST_INPUT = (
    "DeepfakeAbstractBaseDataset.load_rgb: cv2.imread, COLOR_BGR2RGB, "
    "cv2.resize((224, 224), interpolation=cv2.INTER_CUBIC) on the uint8 crop; T.ToTensor; "
    "T.Normalize(CLIP mean, CLIP std) (effort.yaml)"
)


def _local(name: str) -> types.ModuleType:
    """One of this folder's modules, by file (the project's ``detectors`` stays off the path)."""
    spec = importlib.util.spec_from_file_location(f"_official_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FULL = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24}


def build(training: Path) -> torch.nn.Module:
    """``EffortDetector(config)`` as ``test.py`` builds it, on a tiny CLIP (or ``VISION``)."""
    from transformers import CLIPConfig, CLIPModel

    _local("make_deepfakebench_f3net_srm_recce_xray").import_deepfakebench(training)
    sys.modules["loralib"] = types.ModuleType("loralib")
    module = importlib.import_module("detectors.effort_detector")
    tiny = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION))
    module.CLIPModel = types.SimpleNamespace(from_pretrained=lambda *a, **k: tiny)
    config = yaml.safe_load((training / "config/detector/effort.yaml").read_text())
    from detectors import DETECTOR

    return DETECTOR[config["model_name"]](config)


def official_inputs(root: Path, images: list[np.ndarray], folder: Path) -> torch.Tensor:
    from dataset.abstract_dataset import DeepfakeAbstractBaseDataset as Dataset

    fake_self = types.SimpleNamespace(
        config={"resolution": 224, "mean": CLIP_MEAN, "std": CLIP_STD, "rgb_dir": "."},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", choices=sorted(NAMES), required=True)
    parser.add_argument("--repo", type=Path, required=True, help="the folder holding training/")
    parser.add_argument("--full", action="store_true", help="the full ViT-L/14 tower")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.full:
        VISION.update(FULL)
    root = args.repo.resolve()
    torch.set_num_threads(1)
    os.chdir(root)
    weights, pictures = _local("weights"), _local("images")
    dump = _local("make_deepfakebench_f3net_srm_recce_xray").dumps
    model = build(root / "training")
    info = NAMES[args.name]
    reference: dict[str, Any] = {
        "format": info["format"],
        "detector": "effort",
        "overrides": {} if args.full else {"vision": VISION},
        "repository": info["repository"],
        "commit": info["commit"],
        "files": [
            "training/detectors/effort_detector.py",
            "training/detectors/base_detector.py",
            "training/config/detector/effort.yaml",
            "training/dataset/abstract_dataset.py",
        ],
        "preprocessing": TEST_INPUT,
        "save": {"container": "state_dict"},
        "filename": "effort_best.pth",
        "seed": 0,
        "images_seed": 0,
        "dtype": "float32",
        "tolerance": {"logit": 1e-4, "prob": 1e-5},
        "keys": weights.key_spec(model.state_dict()),
    }
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        path = weights.write_official_file(reference, Path(tmp) / "effort_best.pth")
        model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)  # test.py
        model.eval()
        inputs = official_inputs(root, pictures.reference_images(0), Path(tmp))
        with torch.no_grad():
            pred = model({"image": inputs, "label": torch.zeros(len(inputs))}, inference=True)
            pred64 = model.double()({"image": inputs.double()}, inference=True)
    cls = pred["cls"].double()
    logits = (cls[:, 1] - cls[:, 0]).tolist()
    gap = (pred64["cls"][:, 1] - pred64["cls"][:, 0] - cls[:, 1] + cls[:, 0]).abs().max()
    print(f"{args.name}: logits {np.round(logits, 4).tolist()}; float32 vs float64 {gap:.2e}")
    reference["outputs"] = {"logits": logits, "probs": pred["prob"].double().tolist()}
    (args.out or HERE / f"{args.name}.json").write_text(dump(reference))


if __name__ == "__main__":
    main()

"""Make ``uia_vit_dfb.json`` and ``uia_vit_authors.json`` from DeepfakeBench's and the authors' code.

* ``uia_vit_dfb``: github.com/SCLBD/DeepfakeBench, commit
  ``8a4a7bf5e966c5c5618bc27d1719c3683eae9a04`` (``--repo`` = the repository root). Runs
  ``training/detectors/uia_vit_detector.py`` (``UIAViTDetector``, ``VisionTransformer``),
  ``training/loss/patch_consistency_loss.py``, ``training/config/detector/uia_vit.yaml``,
  the test input of ``training/dataset/abstract_dataset.py`` (``load_rgb``: ``cv2.resize``
  to 224, ``INTER_CUBIC``; ``to_tensor``; ``normalize`` with mean = std = 0.5), the save of
  ``trainer.py`` (``torch.save(model.state_dict())``) and the load of ``test.py``
  (``strict=True``); ``model(data_dict, inference=True)`` in eval mode; logit ``cls[:, 1] -
  cls[:, 0]``.
* ``uia_vit_authors``: github.com/wany0824/UIA-ViT, commit
  ``e11c41d4ce3644e7e4b1fb33b11679b9a8be2032`` (``--repo`` = the repository root). Runs
  ``network/vit_16_base_feat_middle_gal_v2.py`` (``vit_base_patch16_224(pretrained=False,
  num_classes=2)``), ``test.py``'s transform (``Resize((224, 224))``, ``ToTensor``,
  ``Normalize(0.5, 0.5)``, on ``Image.open(path).convert('RGB')``) and its call
  ``model(img, step=1.0, attn_blk=[8, 9, 10, 11, 12], feat_blk=6, k=12.0, thr=0.7,
  is_progressive=1)``; the file is ``train.py``'s ``torch.save(model.state_dict())``
  (``model_bestacc.pt``), loaded as ``test.py`` does (``load_state_dict``, strict).

What is not theirs, and why: both build ViT-B/16 by hand; the module's
``VisionTransformer`` is wrapped to give width 64 and 4 heads (12 blocks, as the default
``attn_blk`` needs), so the reference stays small; deepsift gets the same through
``overrides``. DeepfakeBench's ``build_backbone`` downloads the ImageNet ViT
(``torch.hub.load_state_dict_from_url``): it is handed the random model's own state dict
(every tensor is then replaced by the seeded ones). Its packages are stubs holding the
registries (as in ``make_deepfakebench_f3net_srm_recce_xray.py``). Runs with timm 1.x
(the references used 0.4.12; the modules used, ``DropPath``, ``to_2tuple``,
``trunc_normal_``, are the same). Needs albumentations 1.1, qudida and lmdb on
``PYTHONPATH`` for ``abstract_dataset.py``.

    PYTHONPATH=<site with albumentations==1.1.0, qudida, lmdb> \\
        python tests/official/make_uia_vit.py --name uia_vit_dfb --repo /path/to/DeepfakeBench
    ... --name uia_vit_authors --repo /path/to/UIA-ViT

``--full --out /tmp/uia_vit_full.json`` keeps ViT-B/16's width (768, 12 heads), for a
one-off check outside the test suite (the file is 340 MB).
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
WIDTH = {"embed_dim": 64, "num_heads": 4}
NAMES: dict[str, dict[str, Any]] = {
    "uia_vit_dfb": {
        "repository": "https://github.com/SCLBD/DeepfakeBench",
        "commit": "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04",
        "format": "DeepfakeBench uia_vit_best.pth (torch.save(UIAViTDetector.state_dict())), "
        "ViT of width 64",
        "files": [
            "training/detectors/uia_vit_detector.py",
            "training/loss/patch_consistency_loss.py",
            "training/config/detector/uia_vit.yaml",
            "training/dataset/abstract_dataset.py",
        ],
        "preprocessing": "DeepfakeAbstractBaseDataset.load_rgb: cv2.imread, COLOR_BGR2RGB, "
        "cv2.resize((224, 224), interpolation=cv2.INTER_CUBIC); T.ToTensor; "
        "T.Normalize([0.5] * 3, [0.5] * 3)",
        "filename": "uia_vit_best.pth",
    },
    "uia_vit_authors": {
        "repository": "https://github.com/wany0824/UIA-ViT",
        "commit": "e11c41d4ce3644e7e4b1fb33b11679b9a8be2032",
        "format": "the authors' model_bestacc.pt (torch.save(model.state_dict())), ViT of width 64",
        "files": ["network/vit_16_base_feat_middle_gal_v2.py", "test.py", "train.py"],
        "preprocessing": "test.py: Image.open().convert('RGB'), transforms.Resize((224, 224)) "
        "(PIL bilinear), ToTensor, Normalize([0.5] * 3, [0.5] * 3)",
        "filename": "model_bestacc.pt",
    },
}


def _local(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"_official_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def narrow(module: types.ModuleType) -> None:
    """The module's ``VisionTransformer`` at width 64 (12 blocks, 4 heads)."""
    original = module.VisionTransformer
    module.VisionTransformer = lambda *a, **kw: original(*a, **{**kw, **WIDTH})


def build_dfb(root: Path) -> tuple[torch.nn.Module, Any]:
    training = root / "training"
    _local("make_deepfakebench_f3net_srm_recce_xray").import_deepfakebench(training)
    importlib.import_module("loss.patch_consistency_loss")
    module = importlib.import_module("detectors.uia_vit_detector")
    narrow(module)
    holder: dict[str, torch.nn.Module] = {}
    original = module.VisionTransformer

    def keep(*a, **kw):
        holder["model"] = original(*a, **kw)
        return holder["model"]

    module.VisionTransformer = keep
    torch.hub.load_state_dict_from_url = lambda url, **kw: {
        k: v.clone() for k, v in holder["model"].state_dict().items()
    }
    config = yaml.safe_load((training / "config/detector/uia_vit.yaml").read_text())
    from detectors import DETECTOR

    model = DETECTOR[config["model_name"]](config)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        pred = model({"image": inputs, "label": torch.zeros(len(inputs))}, inference=True)
        return pred["cls"]

    return model, run


def build_authors(root: Path) -> tuple[torch.nn.Module, Any]:
    sys.path.insert(0, str(root))
    module = importlib.import_module("network.vit_16_base_feat_middle_gal_v2")
    narrow(module)
    model = module.vit_base_patch16_224(pretrained=False, num_classes=2)

    def run(inputs: torch.Tensor) -> torch.Tensor:  # test.py's call, its defaults
        cls, _, _ = model(
            inputs, step=1.0, attn_blk=[8, 9, 10, 11, 12], feat_blk=6, k=12.0, thr=0.7,
            is_progressive=1,
        )  # fmt: skip
        return cls

    return model, run


def dfb_inputs(root: Path, images: list[np.ndarray], folder: Path) -> torch.Tensor:
    from dataset.abstract_dataset import DeepfakeAbstractBaseDataset as Dataset

    fake_self = types.SimpleNamespace(
        config={"resolution": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "rgb_dir": "."},
        lmdb=False,
    )
    tensors = []
    for i, array in enumerate(images):
        path = folder / f"image_{i}.png"
        Image.fromarray(array).save(path)
        image = np.array(Dataset.load_rgb(fake_self, "./" + os.path.relpath(path, root)))
        tensors.append(Dataset.normalize(fake_self, Dataset.to_tensor(fake_self, image)))
    return torch.stack(tensors)


def authors_inputs(images: list[np.ndarray], folder: Path) -> torch.Tensor:
    from torchvision import transforms

    # test.py's TestSet transform, on the PNG as its _load_image opens it
    transform = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3),
        ]
    )
    tensors = []
    for i, array in enumerate(images):
        path = folder / f"image_{i}.png"
        Image.fromarray(array).save(path)
        tensors.append(transform(Image.open(path).convert("RGB")))
    return torch.stack(tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", choices=sorted(NAMES), required=True)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--full", action="store_true", help="ViT-B/16's full width")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.full:
        WIDTH.update(embed_dim=768, num_heads=12)
    root = args.repo.resolve()
    torch.set_num_threads(1)
    os.chdir(root)
    weights, pictures = _local("weights"), _local("images")
    dump = _local("make_deepfakebench_f3net_srm_recce_xray").dumps
    dfb = args.name == "uia_vit_dfb"
    model, run = build_dfb(root) if dfb else build_authors(root)
    info = NAMES[args.name]
    reference: dict[str, Any] = {
        "format": info["format"],
        "detector": "uia_vit",
        "overrides": {} if args.full else dict(WIDTH),
        "repository": info["repository"],
        "commit": info["commit"],
        "files": info["files"],
        "preprocessing": info["preprocessing"],
        "save": {"container": "state_dict"},
        "filename": info["filename"],
        "seed": 0,
        "images_seed": 0,
        "dtype": "float32",
        "tolerance": {"logit": 1e-4, "prob": 1e-5},
        "keys": weights.key_spec(model.state_dict()),
    }
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        path = weights.write_official_file(reference, Path(tmp) / info["filename"])
        model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
        model.eval()
        images = pictures.reference_images(0)
        inputs = dfb_inputs(root, images, Path(tmp)) if dfb else authors_inputs(images, Path(tmp))
        with torch.no_grad():
            cls = run(inputs).double()
            cls64 = (model.double(), run(inputs.double()))[1]
    logits = (cls[:, 1] - cls[:, 0]).tolist()
    gap = (cls64[:, 1] - cls64[:, 0] - cls[:, 1] + cls[:, 0]).abs().max()
    print(f"{args.name}: logits {np.round(logits, 4).tolist()}; float32 vs float64 {gap:.2e}")
    probs = torch.softmax(cls, dim=1)[:, 1].tolist()
    reference["outputs"] = {"logits": logits, "probs": probs}
    (args.out or HERE / f"{args.name}.json").write_text(dump(reference))


if __name__ == "__main__":
    main()

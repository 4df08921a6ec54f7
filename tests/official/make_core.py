"""Make the reference of the CORE authors' checkpoints from the authors' own code.

Repository: github.com/niyunsheng/CORE, commit f156593 (its last). Its code runs from a
checkout outside this project (``--repo``, the repository root); nothing of it is
copied here. Files whose code runs:

* the model: ``src/xception.py`` (``xception(pretrained=False, num_classes=2)``, as
  ``main.py`` builds it but without the ImageNet download; ``forward`` returns
  ``[feature, logits]``);
* the save: ``src/trainer.py`` ``test_epoch`` (``torch.save({'model':
  model.state_dict(), 'optimizer': optimizer.state_dict(), 'acc', 'auc', 'epoch'})``
  to ``epoch_<n>_acc_<acc>_auc_<auc>.pth``; ``acc`` and ``auc`` are NumPy floats) and
  the load of ``main.py`` (``torch.load(path)['model']``, ``model.load_state_dict``);
* the test-time input: ``src/transform.py`` ``get_augs(name="None", norm="0.5",
  size=299)`` (``main.py``'s defaults for the test set: ``Resize(299)``, ``ToTensor``,
  ``Normalize(0.5, 0.5)``) on ``Image.open(path).convert('RGB')`` as
  ``src/datasets/base_dataset.py`` reads it, for PNG files of
  :func:`tests.official.images.reference_images`;
* the score: ``src/utils.py`` ``evaluate`` (``1 - softmax(output)[:, 0]``, the fake
  probability), so the fake logit is ``z1 - z0``.

Not theirs, and why: the ImageNet initialisation is not downloaded (every tensor is
replaced by the seeded weights); the optimiser state is a stand-in with Adam's param
groups and no per-parameter state (the loader of a test reads only ``'model'``).
``transform.py`` imports albumentations at the top (only its training augmentations
use it): any version on ``PYTHONPATH`` will do.

Usage::

    PYTHONPATH=<site with albumentations> python tests/official/make_core.py --repo /path/to/CORE
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
from PIL import Image

HERE = Path(__file__).resolve().parent
NAME = "core_official"


def _local(name: str) -> types.ModuleType:
    """One of this folder's modules, by file (the project root stays off ``sys.path``)."""
    spec = importlib.util.spec_from_file_location(f"_official_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(model: torch.nn.Module, inputs: list[torch.Tensor], dtype: torch.dtype):
    """Fake logits ``z1 - z0`` and ``evaluate``'s ``1 - softmax[:, 0]``, image by image."""
    model = model.to(dtype).eval()
    logits, probs = [], []
    with torch.no_grad():
        for x in inputs:
            _, output = model(x[None].to(dtype))
            logits.append(float(output[0, 1] - output[0, 0]))
            probs.append(float(1 - torch.softmax(output, dim=1)[0, 0]))
    return logits, probs


def make(root: Path, dtype_name: str) -> dict[str, Any]:
    weights, pictures = _local("weights"), _local("images")
    sys.path.insert(0, str(root / "src"))
    xception = importlib.import_module("xception")
    transform = importlib.import_module("transform")
    model = xception.xception(pretrained=False, num_classes=2)
    reference: dict[str, Any] = {
        "format": NAME,
        "detector": "core",
        "overrides": {},
        "repository": "github.com/niyunsheng/CORE",
        "commit": "f156593",
        "files": [
            "src/xception.py",
            "src/trainer.py",
            "src/main.py",
            "src/transform.py",
            "src/datasets/base_dataset.py",
            "src/utils.py",
        ],
        "preprocessing": (
            "get_augs(name='None', norm='0.5', size=299): transforms.Resize(299) (shorter "
            "side, Pillow bilinear), ToTensor, Normalize(mean=[0.5]*3, std=[0.5]*3), on "
            "Image.open(png).convert('RGB'); one picture per batch"
        ),
        "save": {
            "container": "dict",
            "key": "model",
            "extra": {
                "optimizer": {
                    "state": {},
                    "param_groups": [
                        {
                            "lr": 0.0002,
                            "betas": [0.9, 0.999],
                            "eps": 1e-08,
                            "weight_decay": 0,
                            "amsgrad": False,
                            "params": [],
                        }
                    ],
                },
                "epoch": 29,
            },
            "numpy_extra": {"acc": 0.9375, "auc": 0.98125},
        },
        "filename": "epoch_29_acc_93.750_auc_98.125.pth",
        "seed": 15,
        "images_seed": 0,
        "dtype": dtype_name,
        "tolerance": {"logit": 1e-4, "prob": 1e-4},
        "keys": weights.key_spec(model.state_dict()),
    }
    test_transform = transform.get_augs(name="None", norm="0.5", size=299)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = weights.write_official_file(reference, tmp / reference["filename"])
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # main.py
        assert isinstance(checkpoint["acc"], np.floating)
        model.load_state_dict(checkpoint["model"])
        inputs = []
        for i, array in enumerate(pictures.reference_images(0)):
            image = tmp / f"image_{i}.png"
            Image.fromarray(array).save(image)
            inputs.append(test_transform(Image.open(image).convert("RGB")))
    dtype = torch.float64 if dtype_name == "float64" else torch.float32
    logits, probs = run(model, inputs, dtype)
    check, _ = run(model, inputs, torch.float32 if dtype == torch.float64 else torch.float64)
    gap = max(abs(a - b) for a, b in zip(logits, check, strict=True))
    print(f"{NAME}: logits {np.round(logits, 4).tolist()}; float32 vs float64 {gap:.2e}")
    print(f"{NAME}: input sizes {[tuple(x.shape[1:]) for x in inputs]}")
    reference["outputs"] = {"logits": logits, "probs": probs}
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a niyunsheng/CORE checkout")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    dumps = _local("make_deepfakebench_f3net_srm_recce_xray").dumps
    reference = make(args.repo.resolve(), args.dtype)
    (HERE / f"{NAME}.json").write_text(dumps(reference))


if __name__ == "__main__":
    main()

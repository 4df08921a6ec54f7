"""Make the reference of the authors' RECCE checkpoint from the authors' own code.

Repository: github.com/VISION-SJTU/RECCE, commit 58cabeb7a0fef31a202334ff0b8f2a285e69d393
(2022-06-08). Its code runs from a checkout outside this project (``--repo``, the
repository root); nothing of it is copied here. Files whose code runs:

* the model: ``model/network/Recce.py`` (``Recce(num_classes=1)``, as ``inference.py``
  builds it), ``model/common.py``;
* the save: ``trainer/exp_mgpu_trainer.py`` ``_save_ckpt`` (``torch.save({"step",
  "best_step", "best_metric", "eval_metric", "model": self.model.module.state_dict(),
  "optimizer", "scheduler"})``, a ``.bin``), and the load and test of ``inference.py``
  (``torch.load(bin)["model"]``, ``model.load_state_dict``, ``freeze_weights``,
  ``model.eval()``; ``torch.sigmoid(model(img))`` is the fake probability, the model's
  one output the fake logit);
* the test-time input: ``inference.py`` ``preprocess`` (``cv2.imread``,
  ``COLOR_BGR2RGB``, albumentations ``Resize(299, 299)`` (``cv2.INTER_LINEAR``),
  ``Normalize(mean=[0.5] * 3, std=[0.5] * 3)``, ``ToTensorV2``; ``--image_size``'s
  default 299), called on PNG files of :func:`tests.official.images.reference_images`.

Not theirs, and why: the timm encoder is built with ``pretrained=False`` (the ImageNet
download is not possible here; every tensor is replaced by the seeded weights). The
optimiser and scheduler states of the saved ``.bin`` are empty stand-ins (the loader
reads only ``"model"``). Needs albumentations 1.1 (the version of their era) on
``PYTHONPATH``.

Usage::

    PYTHONPATH=<site with albumentations==1.1.0, qudida> \\
        python tests/official/make_recce.py --repo /path/to/RECCE
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
import types
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
NAME = "recce_official"


def _local(name: str) -> types.ModuleType:
    """One of this folder's modules, by file (the project root stays off ``sys.path``)."""
    spec = importlib.util.spec_from_file_location(f"_official_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(model: torch.nn.Module, inputs: torch.Tensor, dtype: torch.dtype):
    """The fake logits and ``inference.py``'s ``torch.sigmoid(model(img))``, image by image."""
    model = model.to(dtype).eval()
    logits, probs = [], []
    with torch.no_grad():
        for x in inputs:
            prediction = model(x[None].to(dtype))
            logits.append(float(prediction.reshape(-1)[0]))
            probs.append(float(torch.sigmoid(prediction).reshape(-1)[0]))
    return logits, probs


def make(root: Path, dtype_name: str) -> dict[str, Any]:
    weights, pictures = _local("weights"), _local("images")
    sys.path.insert(0, str(root))
    recce = importlib.import_module("model.network.Recce")
    recce.encoder_params["xception"]["init_op"] = partial(recce.xception, pretrained=False)
    inference = importlib.import_module("inference")
    inference.args = types.SimpleNamespace(image_size=299)  # its --image_size default
    model = recce.Recce(num_classes=1)
    reference: dict[str, Any] = {
        "format": NAME,
        "detector": "recce",
        "overrides": {},
        "repository": "github.com/VISION-SJTU/RECCE",
        "commit": "58cabeb7a0fef31a202334ff0b8f2a285e69d393",
        "files": [
            "model/network/Recce.py",
            "model/common.py",
            "inference.py",
            "trainer/exp_mgpu_trainer.py",
        ],
        "preprocessing": (
            "inference.py preprocess: cv2.imread, COLOR_BGR2RGB, albumentations "
            "Resize(299, 299) (cv2.INTER_LINEAR), Normalize(mean=[0.5] * 3, std=[0.5] * 3), "
            "ToTensorV2"
        ),
        "save": {
            "container": "dict",
            "key": "model",
            "extra": {
                "step": 90000,
                "best_step": 90000,
                "best_metric": 0.0,
                "eval_metric": "Acc",
                "optimizer": {},
                "scheduler": {},
            },
        },
        "filename": "best_model_90000.bin",
        "seed": 0,
        "images_seed": 0,
        "dtype": dtype_name,
        # a wrong resize moves these random logits by only 2.9e-3 to 4.5e-3: 2e-3 could pass
        # one; measured 1.8e-7 (audit #12)
        "tolerance": {"logit": 1e-4, "prob": 1e-4},
        "keys": weights.key_spec(model.state_dict()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = weights.write_official_file(reference, tmp / reference["filename"])
        model.load_state_dict(torch.load(path, map_location="cpu")["model"])  # inference.py --bin
        inference.freeze_weights(model)
        inputs = []
        for i, array in enumerate(pictures.reference_images(0)):
            image = tmp / f"image_{i}.png"
            Image.fromarray(array).save(image)
            inputs.append(inference.preprocess(str(image))[0])
        inputs = torch.stack(inputs)
    dtype = torch.float64 if dtype_name == "float64" else torch.float32
    logits, probs = run(model, inputs, dtype)
    check, _ = run(model, inputs, torch.float32 if dtype == torch.float64 else torch.float64)
    gap = max(abs(a - b) for a, b in zip(logits, check, strict=True))
    print(f"{NAME}: logits {np.round(logits, 4).tolist()}; float32 vs float64 {gap:.2e}")
    reference["outputs"] = {"logits": logits, "probs": probs}
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a VISION-SJTU/RECCE checkout")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    dumps = _local("make_deepfakebench_f3net_srm_recce_xray").dumps
    reference = make(args.repo.resolve(), args.dtype)
    (HERE / f"{NAME}.json").write_text(dumps(reference))


if __name__ == "__main__":
    main()

"""Make the LaDeDa and SAFE references from the authors' own code (not run by the tests).

``ladeda`` (``WildRF_LaDeDa.pth``, ``ForenSynth_LaDeDa.pth``):
github.com/barcavia/RealTime-DeepfakeDetection-in-the-RealWorld at
e734562bbb6763f5bb2951099e9dc9a38df5e7dd. Code that runs: ``networks/LaDeDa.py``
(``LaDeDa9``; at that commit its four factory functions put ``preprocess_type`` without a
default after ``strides=[...]``, a SyntaxError, so the script gives it the class's own
default ``"NPR"`` before executing the file: nothing else changes), ``test.py``'s
``get_model`` steps (``model.fc = nn.Linear(2048, 1)``, ``torch.load`` of the plain state
dict, ``load_state_dict(strict=True)``), and ``data/datasets.py``'s ``binary_dataset``
transform with test.py's flags (``no_resize=False``, ``no_crop=True``, ``loadSize 256``).

``safe`` (``checkpoint-best.pth``): github.com/Ouxiang-Li/SAFE at
722620a (``models/resnet.py`` ``resnet50(num_classes=2)``, whose forward calls
``pytorch_wavelets.DWTForward(J=1, mode='symmetric', wave='bior1.3')``;
``data/datasets.py`` ``Get_Transforms`` with ``scripts/eval.sh``'s ``--input_size 256
--transform_mode crop``; saved as ``utils.save_model`` saves, less its ``args``). Needs
``pytorch_wavelets`` (1.3.0: it imports ``pkg_resources`` and ``kornia`` at import time,
neither used on this path; empty stand-ins do).

Usage (scratch checkouts and a ``pip --target`` folder outside the project)::

    PYTHONPATH=<site with pytorch_wavelets>:. python tests/official/make_ladeda_safe.py \\
        ladeda --repo <RealTime-DeepfakeDetection-in-the-RealWorld>
    PYTHONPATH=<site with pytorch_wavelets>:. python tests/official/make_ladeda_safe.py \\
        safe --repo <SAFE>
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.official.images import SIZES, reference_images
from tests.official.make_efficientnet_b4 import dumps
from tests.official.weights import HERE, key_spec, write_official_file

SEED = 0
LADEDA_COMMIT = "e734562bbb6763f5bb2951099e9dc9a38df5e7dd"
SAFE_COMMIT = "722620a"


def ladeda(repo: Path) -> tuple[dict, torch.nn.Module, list[torch.Tensor]]:
    source = (repo / "networks" / "LaDeDa.py").read_text()
    source = re.sub(
        r"(def LaDeDa\d+\(.*?), preprocess_type,", r'\1, preprocess_type="NPR",', source
    )
    source = source.replace(
        "], preprocess_type, **kwargs)", "], preprocess_type=preprocess_type, **kwargs)"
    )
    module = types.ModuleType("LaDeDa")
    module.__file__ = str(repo / "networks" / "LaDeDa.py")
    exec(compile(source, str(repo / "networks" / "LaDeDa.py"), "exec"), module.__dict__)
    model = module.LaDeDa9(num_classes=1)
    model.fc = torch.nn.Linear(2048, 1)
    sys.path.insert(0, str(repo))
    from data.datasets import binary_dataset

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "0_real").mkdir()
        Image.new("RGB", (8, 8)).save(Path(tmp) / "0_real" / "a.png")
        opt = argparse.Namespace(
            isTrain=False, no_crop=True, no_resize=False, no_flip=False, loadSize=256,
            cropSize=224, is_aug=False, mode="binary",
        )  # fmt: skip
        transform = binary_dataset(opt, tmp)[0].transform
    inputs = [transform(Image.fromarray(a)) for a in reference_images()]
    reference = {
        "format": "LaDeDa (LaDeDa9)",
        "detector": "ladeda",
        "overrides": {},
        "repository": "https://github.com/barcavia/RealTime-DeepfakeDetection-in-the-RealWorld",
        "commit": LADEDA_COMMIT,
        "files": ["networks/LaDeDa.py", "test.py", "data/datasets.py"],
        "preprocessing": "binary_dataset(no_resize=False, no_crop=True): Resize((256, 256)) "
        "(PIL bilinear), ToTensor, ImageNet Normalize",
        "save": {"container": "state_dict"},
        "filename": "WildRF_LaDeDa.pth",
        "gains": {r"fc\.weight": 4.0},
    }
    return reference, model, inputs


def safe(repo: Path) -> tuple[dict, torch.nn.Module, list[torch.Tensor]]:
    sys.modules.setdefault("kornia", types.ModuleType("kornia"))
    stub = types.ModuleType("pkg_resources")
    stub.resource_stream = None  # type: ignore[attr-defined]
    sys.modules.setdefault("pkg_resources", stub)
    sys.path.insert(0, str(repo))
    from data.datasets import Get_Transforms
    from models.resnet import resnet50

    model = resnet50(num_classes=2)
    opt = argparse.Namespace(
        input_size=256, transform_mode="crop", jpeg_factor=None, blur_sigma=None,
        mask_ratio=None, mask_patch_size=None,
    )  # fmt: skip
    transform = Get_Transforms(opt)[1]
    inputs = [transform(Image.fromarray(a)) for a in reference_images()]
    reference = {
        "format": "SAFE",
        "detector": "safe",
        "overrides": {},
        "repository": "https://github.com/Ouxiang-Li/SAFE",
        "commit": SAFE_COMMIT,
        "files": ["models/resnet.py", "data/datasets.py", "utils.py", "scripts/eval.sh"],
        "packages": {"pytorch_wavelets": "1.3.0"},
        "preprocessing": "Get_Transforms(input_size=256, transform_mode='crop') eval: "
        "CenterCrop([256, 256]), ToTensor; no normalisation",
        "save": {"container": "dict", "key": "model", "extra": {"epoch": "best", "scaler": {}}},
        "filename": "checkpoint-best.pth",
        "gains": {r"fc1\.weight": 8.0},
    }
    return reference, model, inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=("ladeda", "safe"))
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    reference, model, inputs = {"ladeda": ladeda, "safe": safe}[args.which](args.repo.resolve())
    reference.update(
        {
            "seed": SEED,
            "images_seed": 0,
            "image_sizes": [list(s) for s in SIZES],
            "dtype": "float32",
            "tolerance": {"logit": 1e-4, "prob": 2e-5},
            "keys": key_spec(model.state_dict()),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:  # saved and reloaded as the official code does
        path = write_official_file(reference, Path(tmp) / reference["filename"])
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"] if args.which == "safe" else state, strict=True)
    model.eval()
    logits, probs = [], []
    with torch.no_grad():
        for x in inputs:
            z = model(x[None])
            if args.which == "safe":
                logits.append(float(z[0, 1].double() - z[0, 0].double()))
                probs.append(float(z.softmax(1)[0, 1]))
            else:
                logits.append(float(z.reshape(-1)[0]))
                probs.append(float(z.sigmoid().reshape(-1)[0]))
    reference["outputs"] = {"logits": logits, "probs": probs}
    print(args.which, np.round(logits, 4).tolist(), np.round(probs, 5).tolist())
    out = HERE / f"{args.which}.json"
    out.write_text(dumps(reference))
    print("wrote", out)


if __name__ == "__main__":
    main()

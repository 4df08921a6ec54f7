"""Make the DRCT (ConvNeXt-B) reference from the authors' own code (not run by the tests).

``drct_convnext_base`` (``pretrained.zip``'s ``convnext_base_in22k_224_drct_amp_crop/
*.pth``, e.g. ``DRCT-2M/sdv14/.../14_acc0.9996.pth``): github.com/beibuwandeluori/DRCT
at 01aa7d0b6de903cf3208801f8f6b469edffbc762. Code that runs: ``network/models.py``
``get_models(model_name="convnext_base_in22k", pretrained=False, num_classes=2,
embedding_size=1024)`` (a ``ContrastiveModels``: timm ConvNeXt-B whose ``head.fc`` is
1024 -> 1024, then ``fc`` 1024 -> 2), loaded as ``scripts/train.py`` loads it
(``load_state_dict(torch.load(path), strict=True)`` of the plain state dict that
``torch.save(model.state_dict())`` wrote); ``data/transform.py``
``create_val_transforms(size=224, is_crop=True)`` (``scripts/test_DRCT-2M.sh``:
``--input_size 224 --is_crop``); the score is ``Softmax(dim=1)(y)[:, 1]``
(``train.py`` ``eval_model``). ``models.py`` imports ``transformers``, ``clip``,
``f3net`` and ``resnet_gram`` at import time, none used on this path: empty stand-ins do.
Needs the pinned ``timm==0.6.12`` and ``albumentations==1.3.0`` (requirements.txt) in a
``pip --target`` folder; timm 0.6.12's ``models/__init__.py`` line ``from .maxxvit import
*`` must be commented out there (its dataclass defaults fail on Python 3.11; ConvNeXt
does not use it).

Usage (a scratch checkout and a ``pip --target`` folder outside the project)::

    PYTHONPATH=<site with timm 0.6.12, albumentations 1.3.0>:. \\
        python tests/official/make_drct.py --repo <DRCT>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

from tests.official.images import SIZES, reference_images
from tests.official.make_efficientnet_b4 import dumps
from tests.official.weights import HERE, key_spec, write_official_file

SEED = 0
COMMIT = "01aa7d0b6de903cf3208801f8f6b469edffbc762"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    repo = args.repo.resolve()
    for name in ("transformers", "clip", "f3net", "resnet_gram"):
        stub = types.ModuleType(name)
        stub.CLIPModel = stub.F3Net = stub.get_GramNet = None  # type: ignore[attr-defined]
        sys.modules.setdefault(name, stub)
    sys.path.insert(0, str(repo / "network"))
    sys.path.insert(0, str(repo))
    import timm
    from data.transform import create_val_transforms
    from models import get_models

    assert timm.__version__ == "0.6.12", timm.__version__
    model = get_models(
        model_name="convnext_base_in22k", pretrained=False, num_classes=2, embedding_size=1024
    )
    transform = create_val_transforms(size=224, is_crop=True)
    inputs = [transform(image=a)["image"] for a in reference_images()]
    reference = {
        "format": "DRCT (ConvNeXt-B)",
        "detector": "drct",
        "overrides": {},
        "repository": "https://github.com/beibuwandeluori/DRCT",
        "commit": COMMIT,
        "files": ["network/models.py", "data/transform.py", "scripts/train.py"],
        "packages": {"timm": "0.6.12", "albumentations": "1.3.0"},
        "preprocessing": "create_val_transforms(224, is_crop=True): PadIfNeeded(224, "
        "constant 0), CenterCrop(224) (floor offsets), PadIfNeeded, ImageNet Normalize, "
        "ToTensorV2",
        "save": {"container": "state_dict"},
        "filename": "14_acc0.9996.pth",
        "seed": SEED,
        "images_seed": 0,
        "image_sizes": [list(s) for s in SIZES],
        "dtype": "float32",
        "tolerance": {"logit": 1e-4, "prob": 2e-5},
        "keys": key_spec(model.state_dict()),
    }
    with tempfile.TemporaryDirectory() as tmp:  # saved and reloaded as train.py does
        path = write_official_file(reference, Path(tmp) / reference["filename"])
        model.load_state_dict(torch.load(path, map_location="cpu"), strict=True)
    model.eval()
    logits, probs = [], []
    with torch.no_grad():
        for x in inputs:
            y = model(x[None])
            logits.append(float(y[0, 1].double() - y[0, 0].double()))
            probs.append(float(torch.nn.Softmax(dim=1)(y)[0, 1]))
    reference["outputs"] = {"logits": logits, "probs": probs}
    print(np.round(logits, 4).tolist(), np.round(probs, 5).tolist())
    out = HERE / "drct_convnext_base.json"
    out.write_text(dumps(reference))
    print("wrote", out)


if __name__ == "__main__":
    main()

"""Make ``patchcraft.json`` from PatchCraft's released test code (not run by the tests).

The first author's repository (github.com/Ekko-zn/AIGCDetectBenchmark) holds no
PatchCraft network; its README points to a ModelScope release of "the official test
code". That release, as vendored by github.com/kylin0421/AIGIDetectionZOO at
1bbeca183586327c467d0712f5b93300a177c642, is what runs here:
``aigidetection_zoo/PatchCraft/networks/RPTC.py`` (``Net``, ``initWeights``),
``networks/srm_filter_kernel.py`` and ``patchcraft_api.py`` (``processing_RPTC(img,
seed=42)``: the smash & reconstruction, reseeded before each picture; and
``PATCHCRAFT_API.__init__``'s loading steps: ``torch.load``, ``state_dict['netC']``,
``module.`` removed, ``load_state_dict(strict=True)``). Shims, none in their code:
the package's ``__init__`` (it imports the zoo's other detectors) and ``..api`` (a
base class) are stand-ins, so only the PatchCraft files load.

The six pictures of ``images.py``; seeded weights (seed 0) saved as ``RPTC.pth`` is
(``{'netC': state_dict}`` with ``module.`` keys); eval mode, float32. Besides the
logits, ``selection`` records per picture the top-left corners of the 64 crops
``processing_RPTC`` tiles into its poor picture (poorest first) and into its rich one
(richest first), read by wrapping ``transforms.RandomCrop.get_params`` (which returns
each draw) and matching each output tile to its draw, and the sum and sum of squares of
each reconstructed picture: ``tests/test_patchcraft.py`` checks deepsift's selection
against them.

Usage (a scratch checkout outside the project)::

    python -m tests.official.make_patchcraft --repo /path/to/AIGIDetectionZOO
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from tests.official.images import SIZES, reference_images
from tests.official.make_efficientnet_b4 import dumps
from tests.official.weights import HERE, key_spec, write_official_file

SEED = 0
COMMIT = "1bbeca183586327c467d0712f5b93300a177c642"


def load_their_code(repo: Path) -> types.ModuleType:
    """``patchcraft_api`` of the zoo with its package ``__init__`` and ``..api`` stubbed."""
    package = types.ModuleType("aigidetection_zoo")
    package.__path__ = [str(repo / "aigidetection_zoo")]  # type: ignore[attr-defined]
    api = types.ModuleType("aigidetection_zoo.api")
    api.AIGIDetection_API = type("AIGIDetection_API", (), {})  # type: ignore[attr-defined]
    sys.modules["aigidetection_zoo"] = package
    sys.modules["aigidetection_zoo.api"] = api
    from aigidetection_zoo.PatchCraft import patchcraft_api

    return patchcraft_api


def their_selection(api: types.ModuleType, picture: Image.Image) -> dict:
    """Corners of the tiles of ``processing_RPTC(picture, seed=42)`` and the views' sums."""
    drawn: list[tuple[int, int]] = []
    original = transforms.RandomCrop.get_params

    def recording(img: torch.Tensor, output_size: tuple[int, int]) -> tuple[int, int, int, int]:
        params = original(img, output_size)
        drawn.append((int(params[0]), int(params[1])))
        return params

    transforms.RandomCrop.get_params = staticmethod(recording)  # type: ignore[method-assign]
    try:
        views = api.processing_RPTC(picture, seed=42)  # (2, 3, 256, 256): poor, rich
    finally:
        transforms.RandomCrop.get_params = staticmethod(original)  # type: ignore[method-assign]
    assert len(drawn) == 192, len(drawn)
    image = transforms.ToTensor()(picture)
    corners = {}
    for name, view in zip(("poor", "rich"), views, strict=True):
        found = []
        for r in range(8):
            for c in range(8):
                tile = view[:, 32 * r : 32 * (r + 1), 32 * c : 32 * (c + 1)]
                match = [
                    (i, j) for i, j in drawn if torch.equal(image[:, i : i + 32, j : j + 32], tile)
                ]
                assert match, (name, r, c)
                found.append(list(match[0]))
        corners[name] = found
    return {
        "drawn_first": [list(d) for d in drawn[:4]],
        "poor": corners["poor"],
        "rich": corners["rich"],
        "sums": [float(v.double().sum()) for v in views],
        "sums_of_squares": [float(v.double().square().sum()) for v in views],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    api = load_their_code(args.repo.resolve())
    model = api.RPTC()
    model.apply(api.initWeights)
    pictures = [Image.fromarray(a) for a in reference_images()]
    reference = {
        "format": "PatchCraft (RPTC) SRM + CNN on the poor - rich texture contrast",
        "detector": "patchcraft",
        "overrides": {},
        "repository": "https://github.com/kylin0421/AIGIDetectionZOO",
        "commit": COMMIT,
        "files": [
            "aigidetection_zoo/PatchCraft/networks/RPTC.py",
            "aigidetection_zoo/PatchCraft/networks/srm_filter_kernel.py",
            "aigidetection_zoo/PatchCraft/patchcraft_api.py",
        ],
        "preprocessing": "processing_RPTC(img, seed=42): ToTensor at the picture's size, "
        "192 RandomCrop(32) crops ranked by ED, the 64 poorest and the 64 richest tiled "
        "into two 256 x 256 pictures; no normalisation",
        "save": {"container": "dict", "key": "netC", "prefix": "module."},
        "filename": "RPTC.pth",
        "gains": {r"group1_b\.0\.weight": 8.0, r"fc2\.weight": 8.0},
        "seed": SEED,
        "images_seed": 0,
        "image_sizes": [list(s) for s in SIZES],
        "dtype": "float32",
        "tolerance": {"logit": 1e-5, "prob": 2e-6},
        "keys": key_spec(model.state_dict()),
    }
    with tempfile.TemporaryDirectory() as tmp:  # saved and reloaded as PATCHCRAFT_API does
        path = write_official_file(reference, Path(tmp) / reference["filename"])
        state = torch.load(path, map_location="cpu", weights_only=False)["netC"]
        state = {
            k.replace("module.", "") if k.startswith("module.") else k: v for k, v in state.items()
        }
        model.load_state_dict(state, strict=True)
    model.eval()
    logits, probs = [], []
    with torch.no_grad():
        for picture in pictures:
            z = model(api.processing_RPTC(picture, seed=42)[None])
            logits.append(float(z.reshape(-1)[0]))
            probs.append(float(z.sigmoid().reshape(-1)[0]))
    reference["outputs"] = {"logits": logits, "probs": probs}
    reference["selection"] = [their_selection(api, p) for p in pictures]
    print(np.round(logits, 5).tolist(), np.round(probs, 6).tolist())
    out = HERE / "patchcraft.json"
    out.write_text(dumps(reference))
    print("wrote", out)


if __name__ == "__main__":
    main()

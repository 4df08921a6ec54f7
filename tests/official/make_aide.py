"""Make ``aide/aide_reference.json``: AIDE's own input pipeline, SRM bank and model keys.

Reference: github.com/shilinyan99/AIDE (the official code of Yan et al., ICLR 2025),
commit ``6725b710d5c437ab2f59792908ce0377dfc907de``; files run: ``data/datasets.py``
(``TestDataset.__getitem__``: ``ToTensor``, ``DCT_base_Rec_Module``, ``Resize([256,
256])``, ImageNet ``Normalize``), ``data/dct.py`` and ``models/AIDE.py`` (``HPF``;
``AIDE_Model`` built on the meta device for its state-dict keys and shapes, the layout
``utils.save_model`` writes under ``'model'``). With ``--forward`` it also runs the
whole ``AIDE_Model`` (ConvNeXt-XXLarge, two ResNet-50s) on seeded weights for two
pictures and records the logits (minutes and ~10 GB of memory on a CPU; not part of
the test suite, see ``tests/test_aide.py``). The model is built on the CPU even for
its keys (``open_clip.create_model_and_transforms`` moves it there).

The JSON lives in ``tests/official/aide/``, not beside the other references: it is
not a weights file for ``test_official_parity.py`` (the full model is too large to
run there). Per picture of ``images.py`` it holds the row-major indices of the four
windows ``DCT_base_Rec_Module`` picks (found by matching each returned patch against
every 32 x 32 window, stride 16, of the picture; the match is exact up to the
reference's DCT round trip, recorded as ``match_error``) and, per view of the
(5, 3, 256, 256) stack, its sum, sum of squares and 16 sampled values.

Shims for today's packages, none in their code: ``kornia`` (``data/datasets.py``
builds its training perturbations at import; the test path never calls them) and
``clip`` (imported, unused, by ``models/AIDE.py``) are empty stand-ins.

``--tiny`` (re)computes only ``tiny_forward`` and keeps the rest of the JSON: their whole
``AIDE_Model`` -- ``TestDataset`` views, ``HPF``, both ResNets, the OpenCLIP trunk,
``convnext_proj``, ``fc`` -- at a size the test suite can rebuild
(``tests/test_aide.py``, ``test_tiny_model_matches_the_authors_code``). Two names in
their modules are swapped for the run, no line of their code: ``ResNet._make_layer``
of ``models/AIDE.py`` builds ``[1, 1, 1, 1]`` blocks instead of ``[3, 4, 6, 3]``, and
``timm.create_model('convnext_xxlarge', ...)`` (which open_clip's ``TimmModel`` calls)
gets ``depths``/``dims`` overrides that keep the final 3072 channels their forward
asserts (timm's builder lets keyword arguments override its defaults; everything else
is convnext_xxlarge's). The six pictures of ``images.py``, seeded weights (seed 1, SRM
bank as it is), eval mode, float32.

    python -m tests.official.make_aide --repo /path/to/AIDE [--forward | --tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.official.images import reference_images
from tests.official.weights import HERE, key_spec, seeded_state_dict

NAME = "aide_reference"
COMMIT = "6725b710d5c437ab2f59792908ce0377dfc907de"
OUT = HERE / "aide" / f"{NAME}.json"
SAMPLES = 16
FORWARD_PICTURES = 2
TINY_RESNET_LAYERS = [1, 1, 1, 1]
TINY_TRUNK = {"depths": [1, 1, 2, 0], "dims": [16, 32, 64, 3072]}
TINY_SEED = 1


def sample_positions(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(v) for v in rng.integers(0, 256, 3)] for _ in range(SAMPLES)]


def view_summary(view: torch.Tensor, positions: list[list[int]]) -> dict:
    v = view.double()
    return {
        "sum": round(float(v.sum()), 4),
        "sum_sq": round(float((v * v).sum()), 4),
        "samples": [round(float(view[c % 3, y, x]), 6) for c, y, x in positions],
    }


def install_shims() -> None:
    kornia = types.ModuleType("kornia")
    augmentation = types.ModuleType("kornia.augmentation")

    class _Unused:
        def __init__(self, *args, **kwargs) -> None:
            pass

    augmentation.RandomGaussianBlur = _Unused
    augmentation.RandomJPEG = _Unused
    augmentation.container = types.SimpleNamespace(ImageSequential=_Unused)
    kornia.augmentation = augmentation
    sys.modules.update({"kornia": kornia, "kornia.augmentation": augmentation})
    sys.modules["clip"] = types.ModuleType("clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--forward", action="store_true", help="also run the full model")
    parser.add_argument("--tiny", action="store_true", help="only the tiny whole model")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    torch.set_num_threads(1)
    install_shims()
    if args.tiny:
        reference = json.loads(args.out.read_text())
        assert reference["commit"] == args.commit, "the JSON was made at another commit"
        reference["tiny_forward"] = run_tiny()
        args.out.write_text(json.dumps(reference, indent=None, separators=(",", ":")) + "\n")
        print(args.out)
        return

    from data.datasets import TestDataset  # their code
    from models.AIDE import HPF, AIDE_Model

    positions = sample_positions()
    pictures = reference_images(0)
    selections = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for folder in ("0_real", "1_fake"):
            (root / folder).mkdir()
        for i, array in enumerate(pictures):
            Image.fromarray(array).save(root / "0_real" / f"{i}.png")
        dataset = TestDataset(False, argparse.Namespace(data_path=None, eval_data_path=str(root)))
        by_index = {int(Path(s["image_path"]).stem): idx for idx, s in enumerate(dataset.data_list)}
        stacks = []
        for i, array in enumerate(pictures):
            stack, _ = dataset[by_index[i]]
            stacks.append(stack)
            x = torch.from_numpy(array).permute(2, 0, 1).float() / 255
            windows = x.unfold(1, 32, 16).unfold(2, 32, 16).permute(1, 2, 0, 3, 4)
            windows = windows.reshape(-1, 3, 32, 32)
            patches = dataset.dct(x)  # x_minmin, x_maxmax, x_minmin1, x_maxmax1
            indices, errors = [], []
            for patch in patches:
                distance = (windows - patch.reshape(1, 3, 32, 32)).abs().flatten(1).amax(1)
                indices.append(int(distance.argmin()))
                errors.append(float(distance.min()))
            selections.append(
                {
                    "size": [int(array.shape[1]), int(array.shape[0])],
                    "windows": indices,
                    "match_error": max(errors),
                    "views": [view_summary(v, positions) for v in stack],
                }
            )

    srm = HPF().hpf.weight.detach()[:, 0]
    model = AIDE_Model(None, None)  # open_clip moves it to the CPU: not on the meta device
    keys = key_spec(model.state_dict())

    reference = {
        "repository": "https://github.com/shilinyan99/AIDE",
        "commit": args.commit,
        "files": ["data/datasets.py", "data/dct.py", "models/AIDE.py", "utils.py"],
        "preprocessing": "TestDataset: PIL RGB, ToTensor, DCT_base_Rec_Module(window 32, "
        "stride 16, 6 bands) -> x_minmin, x_maxmax, x_minmin1, x_maxmax1, then each and the "
        "picture Resize([256, 256]) and Normalize(ImageNet)",
        "save": {
            "container": "dict",
            "key": "model",
            "extra": ["optimizer", "epoch", "scaler", "args"],
        },
        "sample_positions": positions,
        "srm": [[[round(float(v), 8) for v in row] for row in k] for k in srm],
        "selections": selections,
        "keys": keys,
    }
    if args.forward:
        reference["forward"] = run_forward(model, keys, stacks[:FORWARD_PICTURES], srm)
    del model
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(reference, indent=None, separators=(",", ":")) + "\n")
    print(args.out)


def run_forward(model, keys, stacks, srm) -> dict:
    """Their AIDE_Model on seeded weights (the SRM bank as it is), eval mode, float32."""
    start = time.time()
    state = seeded_state_dict(keys, seed=0)
    state["hpf.hpf.weight"] = srm[:, None].repeat(1, 3, 1, 1)
    model.load_state_dict(state)
    del state
    model.eval()
    with torch.no_grad():
        z = model(torch.stack(stacks))
    print(f"official forward: {time.time() - start:.1f} s", file=sys.stderr)
    return {
        "seed": 0,
        "pictures": len(stacks),
        "class_logits": [[round(float(v), 7) for v in row] for row in z],
    }


def run_tiny() -> dict:
    """Their whole AIDE_Model, made small by two swapped names (see the module docstring)."""
    import models.AIDE as aide  # their code
    import timm
    from data.datasets import TestDataset

    real_layer, real_create = aide.ResNet._make_layer, timm.create_model
    stage = iter(TINY_RESNET_LAYERS * 2)  # two ResNets, four stages each

    def make_layer(self, block, planes, blocks, stride=1):
        return real_layer(self, block, planes, next(stage), stride)

    def create(name: str, *args, **kwargs):
        if name == "convnext_xxlarge":
            kwargs = {**kwargs, **TINY_TRUNK}
        return real_create(name, *args, **kwargs)

    aide.ResNet._make_layer, timm.create_model = make_layer, create
    try:
        model = aide.AIDE_Model(None, None)
    finally:
        aide.ResNet._make_layer, timm.create_model = real_layer, real_create
    keys = key_spec(model.state_dict())
    state = seeded_state_dict(keys, seed=TINY_SEED)
    state["hpf.hpf.weight"] = aide.HPF().hpf.weight.detach().clone()
    model.load_state_dict(state, strict=True)
    model.eval()
    pictures = reference_images(0)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for folder in ("0_real", "1_fake"):
            (root / folder).mkdir()
        for i, array in enumerate(pictures):
            Image.fromarray(array).save(root / "0_real" / f"{i}.png")
        dataset = TestDataset(False, argparse.Namespace(data_path=None, eval_data_path=str(root)))
        by_index = {int(Path(s["image_path"]).stem): idx for idx, s in enumerate(dataset.data_list)}
        stacks = [dataset[by_index[i]][0] for i in range(len(pictures))]
    with torch.no_grad():
        z = model(torch.stack(stacks))
    return {
        "seed": TINY_SEED,
        "resnet_layers": TINY_RESNET_LAYERS,
        "trunk_kwargs": TINY_TRUNK,
        "pictures": len(pictures),
        "keys": keys,
        "class_logits": [[float(v) for v in row] for row in z],
    }


if __name__ == "__main__":
    main()

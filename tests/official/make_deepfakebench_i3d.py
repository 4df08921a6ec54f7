"""Make the reference of DeepfakeBench's I3D: ``tests/official/video/deepfakebench_i3d.json``.

Runs the authors' own code (github.com/SCLBD/DeepfakeBench, commit
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04) from a checkout given with ``--repo``:
``training/detectors/utils/slowfast/models/video_model_builder.py`` (``ResNet``, with
its ``resnet_helper``/``stem_helper``/``head_helper``) built from
``training/config/defaults.py``'s ``get_cfg()`` merged with the ``config_text`` of
``training/detectors/i3d_detector.py`` (``ARCH: i3d``, ``NUM_CLASSES: 1``,
``HEAD_ACT: sigmoid``), ``NUM_GPUS`` 1 and ``DATA.NUM_FRAMES`` = the clip length, as
``I3DDetector.__init__`` does; ``I3DDetector.features``' call ``resnet([x.permute(0, 2,
1, 3, 4)])`` in eval mode gives the probability.

Two variants: ``tiny`` (``DEPTH`` 18 = 2 bottlenecks per stage, ``WIDTH_PER_GROUP`` 8,
4 frames of 32 x 32, ``DATA.CROP_SIZE`` 32 so the head's pool covers the map) is
what ``tests/test_i3d.py`` recomputes; ``full`` (the released configuration: DEPTH
50, width 64, 16 frames of 224 x 224) is recorded, too slow for the test suite.
Weights: ``seeded_state_dict`` of the authors' module's own ``state_dict`` keys
(seed 11), saved as ``i3d_best.pth`` is (``resnet.`` + those keys); input
``torch.manual_seed(0); torch.randn(2, T, 3, S, S)`` (B, T, C, H, W).

The packages their code imports that the project's venv lacks are replaced in a
scratch folder (``--scratch``): ``yacs`` is pip-installed there; ``fvcore``'s
``CfgNode`` (yacs' with ``merge_from_str``), ``Registry``, ``c2_msra_fill``,
``PathManager`` and ``simplejson`` are stubbed (none affects the forward pass).

``kinetics``: the Kinetics-400 pretraining file (``I3D_8x8_R50.pth``, SlowFast's
``ResNet`` keys with a 400-way head, a flat state dict) as DeepfakeBench reads it:
``I3DDetector.__init__`` itself (imported by :mod:`tests.official.deepfakebench_import`)
with ``config['pretrained']`` = that file, which strips ``resnet.``, keeps row 0 of the
head and loads strictly; then ``I3DDetector.features({'image': x})``. The file is
``seeded_state_dict`` (seed 12) of the 400-way tiny ``ResNet``'s keys; the module's
``config_text`` is swapped for the tiny one (DEPTH 18, WIDTH_PER_GROUP 8,
NUM_BLOCK_TEMP_KERNEL [[2]] x 4, DATA.CROP_SIZE 32: the only edits, all to
configuration text, none to their code), ``clip_size`` 4, input as above.

Run: ``python tests/official/make_deepfakebench_i3d.py --repo /path/to/DeepfakeBench
--scratch /tmp/ref_i3d [--only kinetics]`` (the scratch folder holds ``site/`` with
yacs and ``stubs/``; see ``write_stubs``; ``--only`` recomputes the variants named and
keeps the others of the existing JSON).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "video" / "deepfakebench_i3d.json"
COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
VARIANTS = {
    "tiny": {"frames": 4, "size": 32, "depth": 18, "blocks": [2, 2, 2, 2], "width": 8},
    "full": {"frames": 16, "size": 224, "depth": 50, "blocks": [3, 4, 6, 3], "width": 64},
}
SEED = 11
KINETICS_SEED = 12

STUBS = {
    "fvcore/__init__.py": "",
    "fvcore/common/__init__.py": "",
    "fvcore/nn/__init__.py": "",
    "fvcore/common/config.py": (
        "from yacs.config import CfgNode as _C\n"
        "class CfgNode(_C):\n"
        "    def merge_from_str(self, text):\n"
        "        self.merge_from_other_cfg(self.load_cfg(text))\n"
    ),
    "fvcore/common/registry.py": (
        "class Registry(dict):\n"
        "    def __init__(self, name): super().__init__()\n"
        "    def register(self, obj=None):\n"
        "        def deco(o):\n"
        "            self[o.__name__] = o\n"
        "            return o\n"
        "        return deco(obj) if obj is not None else deco\n"
    ),
    "fvcore/nn/weight_init.py": (
        "import torch.nn as nn\n"
        "def c2_msra_fill(m):\n"
        "    nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')\n"
        "    if m.bias is not None:\n"
        "        nn.init.constant_(m.bias, 0)\n"
    ),
    "fvcore/common/file_io.py": "PathManager = None\n",
    "simplejson.py": "from json import *\n",
}


def write_stubs(scratch: Path) -> None:
    for name, text in STUBS.items():
        path = scratch / "stubs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--only", nargs="+", choices=[*VARIANTS, "kinetics"])
    args = parser.parse_args()
    only = set(args.only or [*VARIANTS, "kinetics"])
    write_stubs(args.scratch)
    utils = args.repo / "training" / "detectors" / "utils"
    sys.path[:0] = [str(args.scratch / "site"), str(args.scratch / "stubs"), str(utils), str(ROOT)]
    from slowfast.config.defaults import get_cfg
    from slowfast.models.video_model_builder import ResNet

    from tests.official.weights import key_spec, seeded_state_dict

    source = (args.repo / "training" / "detectors" / "i3d_detector.py").read_text()
    config_text = re.search(r'config_text = """(.*?)"""', source, re.S).group(1)
    torch.set_num_threads(1)
    out: dict = json.loads(OUT.read_text()) if args.only and OUT.exists() else {}
    out.update(
        {"commit": COMMIT, "seed": SEED, "input": "torch.manual_seed(0); randn(2, T, 3, S, S)"}
    )
    for name, v in VARIANTS.items():
        if name not in only:
            continue
        cfg = get_cfg()
        cfg.merge_from_str(config_text)
        cfg.NUM_GPUS = 1
        cfg.DATA.NUM_FRAMES = v["frames"]
        cfg.DATA.CROP_SIZE = v["size"]
        cfg.RESNET.DEPTH = v["depth"]
        cfg.RESNET.WIDTH_PER_GROUP = v["width"]
        cfg.RESNET.NUM_BLOCK_TEMP_KERNEL = [[n] for n in v["blocks"]]
        model = ResNet(cfg).eval()
        spec = key_spec(model.state_dict())
        model.load_state_dict(seeded_state_dict(spec, seed=SEED), strict=True)
        torch.manual_seed(0)
        x = torch.randn(2, v["frames"], 3, v["size"], v["size"])
        with torch.no_grad():
            prob = model([x.permute(0, 2, 1, 3, 4)]).view(-1)
        out[name] = {
            **v,
            "parameters": sum(p.numel() for p in model.parameters()),
            "keys": len(spec),
            "prob": prob.tolist(),
        }
        if name == "tiny":
            out[name]["key_spec"] = spec
    if "kinetics" in only:
        out["kinetics"] = kinetics(args.repo, args.scratch, config_text)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


def tiny_config_text(config_text: str) -> str:
    """``i3d_detector.py``'s ``config_text`` at the tiny variant's sizes (text edits only)."""
    v = VARIANTS["tiny"]
    edits = {
        "WIDTH_PER_GROUP: 64": f"WIDTH_PER_GROUP: {v['width']}",
        "DEPTH: 50": f"DEPTH: {v['depth']}",
        "NUM_BLOCK_TEMP_KERNEL: [[3], [4], [6], [3]]": "NUM_BLOCK_TEMP_KERNEL: "
        + str([[n] for n in v["blocks"]]),
        "DATA:\n": f"DATA:\n  CROP_SIZE: {v['size']}\n",
    }
    for old, new in edits.items():
        assert config_text.count(old) == 1, old
        config_text = config_text.replace(old, new)
    return config_text


def kinetics(repo: Path, scratch: Path, config_text: str) -> dict:
    """DeepfakeBench's ``I3DDetector`` built from a seeded Kinetics-400 file (see above)."""
    from slowfast.config.defaults import get_cfg
    from slowfast.models.video_model_builder import ResNet

    from tests.official.deepfakebench_import import import_detector
    from tests.official.weights import key_spec, seeded_state_dict

    v = VARIANTS["tiny"]
    module = import_detector(repo, "i3d_detector")
    module.config_text = tiny_config_text(config_text)
    cfg = get_cfg()
    cfg.merge_from_str(module.config_text)
    cfg.NUM_GPUS = 1
    cfg.DATA.NUM_FRAMES = v["frames"]
    cfg.MODEL.NUM_CLASSES = 400
    spec = key_spec(ResNet(cfg).state_dict())
    path = scratch / "I3D_8x8_R50.pth"
    torch.save(seeded_state_dict(spec, seed=KINETICS_SEED), path)
    detector = module.I3DDetector({"clip_size": v["frames"], "pretrained": str(path)}).eval()
    torch.manual_seed(0)
    x = torch.randn(2, v["frames"], 3, v["size"], v["size"])
    with torch.no_grad():
        prob = detector.features({"image": x}).view(-1)
    return {
        **v,
        "seed": KINETICS_SEED,
        "file": "I3D_8x8_R50.pth: torch.save(flat state dict of SlowFast's ResNet, 400 classes)",
        "classes": 400,
        "keys": len(spec),
        "prob": prob.tolist(),
    }


if __name__ == "__main__":
    main()

"""Make the reference of AltFreezing's I3D8x8: ``tests/official/video/altfreezing.json``.

Runs the authors' own code (github.com/ZhendongWang6/AltFreezing, commit
f76b061717f534dd9b21dd932e6ec53540925a8d) from a checkout given with ``--repo``:
``slowfast/models/video_model_builder.py`` (``ResNet``, imported as ``ResNetOri`` by
``model/classifier/i3d_ori.py``) built from ``slowfast/config/defaults.py``'s
``get_cfg()`` merged with ``i3d_ori.py``'s ``config_text``, ``NUM_GPUS`` 1 and
``DATA.NUM_FRAMES`` = the clip length (``clip_size``), as ``I3D8x8.__init__`` does;
``I3D8x8.forward``'s ``resnet([images])`` in eval mode gives the logit: this copy's
``head_helper.ResNetBasicHead`` has its ``HEAD_ACT`` (sigmoid) commented out.

Two variants: ``tiny`` (``DEPTH`` 18 = 2 bottlenecks per stage, ``WIDTH_PER_GROUP`` 8,
4 frames of 32 x 32, ``DATA.CROP_SIZE`` 32 so the head's pool covers the map) is what
``tests/test_altfreezing.py`` recomputes; ``full`` (the released configuration: DEPTH
50, width 64, 32 frames of 224 x 224) is recorded. Weights: ``seeded_state_dict`` of the
authors' module's ``state_dict`` keys (seed 13), saved as ``model.pth`` is
(``I3D8x8.state_dict()``: ``resnet.`` + those keys); input ``torch.manual_seed(0);
torch.randn(2, T, 3, S, S)`` (B, T, C, H, W).

The packages their code imports that the venv lacks are replaced in ``--scratch`` as
``make_deepfakebench_i3d.py`` does (yacs in ``site/``, fvcore etc. stubbed).

Run: ``python tests/official/make_altfreezing.py --repo /path/to/AltFreezing
--scratch /tmp/ref_i3d``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "video" / "altfreezing.json"
COMMIT = "f76b061717f534dd9b21dd932e6ec53540925a8d"
VARIANTS = {
    "tiny": {"frames": 4, "size": 32, "depth": 18, "blocks": [2, 2, 2, 2], "width": 8},
    "full": {"frames": 32, "size": 224, "depth": 50, "blocks": [3, 4, 6, 3], "width": 64},
}
SEED = 13


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT)]
    from tests.official.make_deepfakebench_i3d import write_stubs

    write_stubs(args.scratch)
    sys.path[:0] = [str(args.scratch / "site"), str(args.scratch / "stubs"), str(args.repo)]
    from slowfast.config.defaults import get_cfg
    from slowfast.models.video_model_builder import ResNet

    from tests.official.weights import key_spec, seeded_state_dict

    source = (args.repo / "model" / "classifier" / "i3d_ori.py").read_text()
    config_text = re.search(r'config_text = """(.*?)"""', source, re.S).group(1)
    torch.set_num_threads(4)
    out: dict = {
        "commit": COMMIT,
        "seed": SEED,
        "input": "torch.manual_seed(0); randn(2, T, 3, S, S)",
    }
    for name, v in VARIANTS.items():
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
            logit = model([x.permute(0, 2, 1, 3, 4)]).view(-1)
        out[name] = {
            **v,
            "parameters": sum(p.numel() for p in model.parameters()),
            "keys": len(spec),
            "logit": logit.tolist(),
        }
        if name == "tiny":
            out[name]["key_spec"] = spec
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

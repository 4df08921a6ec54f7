"""Make the reference of FTCN's ``ftcn_tt``: ``tests/official/video/ftcn_tt.json``.

Runs the authors' own code (github.com/yinglinzheng/FTCN, commit
853256a888bd5c4879955c06a4c5a666740f91a4) from a checkout given with ``--repo``:
``config.py``'s ``config`` initialised as ``test_on_raw_video.py`` does
(``init_with_yaml()``, ``update_with_yaml("ftcn_tt.yaml")``, ``freeze()``), then
``model/classifier/i3d_temporal_var_fix_dropout_tt_cfg.py``'s ``I3D8x8`` (SlowFast
``ResNet`` + ``temporal_only_conv`` + ``TransformerHead``) in eval mode; its
``final_output`` is the probability.

Two variants: ``tiny`` (``DEPTH`` 18 = 2 bottlenecks per stage, ``WIDTH_PER_GROUP`` 8,
``clip_size`` 4, frames of 32 x 32, transformer 2 heads x 16, mlp 32) is what
``tests/test_ftcn.py`` recomputes; ``full`` (the released configuration: 32 frames of
224 x 224) is recorded, too slow for the test suite. The tiny variant overrides the
code's hard-coded head parameters (``spatial_size`` 14, ``time_size`` 16,
``in_channels`` 1024 for ``stop_point`` 5) to the tiny map's (2, 2, 128).
Weights: ``seeded_state_dict`` of the authors' module's own ``state_dict`` keys (seed
11), saved as ``ftcn_tt.pth`` is; input ``torch.manual_seed(0); torch.randn(2, T, 3, S,
S)`` (B, T, C, H, W).

The packages their code imports that the project's venv lacks are supplied in a scratch
folder (``--scratch``): ``yacs`` and ``einops`` pip-installed into ``site/``; ``fvcore``
and ``simplejson`` stubbed in ``stubs/`` (as ``make_deepfakebench_i3d.py`` writes them;
none affects the forward pass). Their code reads ``nn.Conv3d``'s constructor arguments
off a built conv (written for torch 1.4); the ``device``/``dtype`` arguments of newer
torch are given as ``None`` class attributes so that works.

Run: ``python tests/official/make_ftcn.py --repo /path/to/FTCN --scratch /tmp/ref_ftcn``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "video" / "ftcn_tt.json"
COMMIT = "853256a888bd5c4879955c06a4c5a666740f91a4"
VARIANTS = {
    "tiny": {"frames": 4, "size": 32, "depth": 18, "blocks": [2, 2, 2], "width": 8},  # res5: 2
    "full": {"frames": 32, "size": 224, "depth": 50, "blocks": [3, 4, 6], "width": 64},
}
TINY_TRANSFORMER = {"heads": 2, "dim_head": 16, "mlp_dim": 32}
SEED = 11


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    args = parser.parse_args()
    sys.path[:0] = [str(args.scratch / "site"), str(args.scratch / "stubs"), str(args.repo)]
    sys.path.append(str(ROOT))
    nn.Conv3d.device = None  # type: ignore[attr-defined]
    nn.Conv3d.dtype = None  # type: ignore[attr-defined]
    from config import config as cfg

    cfg.init_with_yaml()
    cfg.update_with_yaml("ftcn_tt.yaml")
    import model.classifier.i3d_temporal_var_fix_dropout_tt_cfg as ftcn
    import model.classifier.time_transformer as tt

    from tests.official.weights import key_spec, seeded_state_dict

    torch.set_num_threads(1)
    out: dict = {
        "commit": COMMIT,
        "seed": SEED,
        "input": "torch.manual_seed(0); randn(2, T, 3, S, S)",
    }
    head_init = ftcn.TransformerHead.__init__
    tt_init = tt.TimeTransformer.__init__
    original_text = ftcn.config_text
    for name, v in VARIANTS.items():
        cfg.clip_size = v["frames"]
        cfg.model.transformer.dim = -1  # TransformerHead writes the resolved dim back
        ftcn.config_text = original_text
        if name == "tiny":
            text = original_text.replace("DEPTH: 50", f"DEPTH: {v['depth']}")
            text = text.replace("WIDTH_PER_GROUP: 64", f"WIDTH_PER_GROUP: {v['width']}")
            ftcn.config_text = text.replace("[[3], [4], [6], [3]]", "[[2], [2], [2], [2]]")
            dim = v["width"] * 16

            def init(self, spatial_size=7, time_size=16, in_channels=2048, _v=v, _dim=dim):
                head_init(
                    self,
                    spatial_size=_v["size"] // 16,
                    time_size=_v["frames"] // 2,
                    in_channels=_dim,
                )

            def tt_patched(self, *a, **kw):
                tt_init(self, *a, **kw, dim_head=TINY_TRANSFORMER["dim_head"])

            ftcn.TransformerHead.__init__ = init
            ftcn.TimeTransformer.__init__ = tt_patched
            cfg.model.transformer.heads = TINY_TRANSFORMER["heads"]
            cfg.model.transformer.mlp_dim = TINY_TRANSFORMER["mlp_dim"]
        else:
            ftcn.TransformerHead.__init__ = head_init
            ftcn.TimeTransformer.__init__ = tt_init
            del cfg.model.transformer.heads, cfg.model.transformer.mlp_dim
        model = ftcn.I3D8x8().eval()
        spec = key_spec(model.state_dict())
        model.load_state_dict(seeded_state_dict(spec, seed=SEED), strict=True)
        torch.manual_seed(0)
        x = torch.randn(2, v["frames"], 3, v["size"], v["size"])
        with torch.no_grad():
            prob = model(x.permute(0, 2, 1, 3, 4))["final_output"].view(-1)
        out[name] = {
            **v,
            "parameters": sum(p.numel() for p in model.parameters()),
            "keys": len(spec),
            "prob": prob.tolist(),
        }
        if name == "tiny":
            out[name]["transformer"] = TINY_TRANSFORMER
            out[name]["key_spec"] = spec
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

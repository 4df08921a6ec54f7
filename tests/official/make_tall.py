"""Make the reference of DeepfakeBench's TALL: ``tests/official/video/tall_dfb.json``.

Runs the authors' own code (github.com/SCLBD/DeepfakeBench, commit
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04) from a checkout given with ``--repo``:
``training/detectors/tall_detector.py``'s ``TALLDetector`` (imported on its own by
:mod:`tests.official.deepfakebench_import`; its own Swin copy ``SwinTransformer`` with
``create_thumbnail``/``create_image_pos_embed``). ``forward({'image': x})`` in eval mode
gives ``cls`` (B, 2) and ``prob``. Two shims, neither on the numerical path:
``create_image_pos_embed`` calls ``torch.zeros(...).cuda()`` and ``load_pretrained``
logs through an undefined ``_logger`` when ``pretrained`` is null (a NameError in the
authors' file), so ``Tensor.cuda`` is the identity here and ``_logger`` is defined.
``einops`` (imported by the file) is pip-installed into ``--scratch``/site.

Two variants: ``tiny`` (frames of 56 x 56, a 2 x 2 thumbnail resized 112 -> 56, patch 4,
embed 16, depths (2, 2) so a shifted-window block runs, heads (1, 2), window 7, ape) is
what ``tests/test_tall.py`` recomputes; ``full`` (``tall.yaml``: 224 px, embed 128,
depths (2, 2, 18, 2), heads (4, 8, 16, 32), windows (14, 14, 14, 7)) records the
parameter count, the state-dict keys and its outputs too (the same seed and input
recipe), which ``tests/test_tall.py``'s slow test recomputes.
Weights: ``seeded_state_dict`` (seed 31) of the detector's ``state_dict`` keys, the
buffers (``relative_position_index``, ``attn_mask``) kept as the module builds them;
saved as DeepfakeBench saves ``tall_best.pth`` (``model.`` + the keys). Input
``torch.manual_seed(0); torch.randn(2, 4, 3, S, S)`` (B, T, C, H, W).

Run: ``python tests/official/make_tall.py --repo /path/to/DeepfakeBench --scratch /tmp/ref_tall``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "video" / "tall_dfb.json"
COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
BASE = {
    "num_classes": 2,
    "mlp_ratio": 4,
    "patch_size": 4,
    "ape": True,
    "thumbnail_rows": 2,
    "drop_rate": 0,
    "drop_path_rate": 0.1,
    "clip_size": 4,
    "pretrained": None,
    "loss_func": "cross_entropy",
}
TINY = {"resolution": 56, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 7}
FULL = {
    "resolution": 224,
    "embed_dim": 128,
    "depths": [2, 2, 18, 2],
    "num_heads": [4, 8, 16, 32],
    "window_size": [14, 14, 14, 7],
}
SEED = 31


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    args = parser.parse_args()
    sys.path[:0] = [str(args.scratch / "site"), str(ROOT)]
    from tests.official.deepfakebench_import import import_detector
    from tests.official.weights import key_spec, seeded_state_dict

    module = import_detector(args.repo, "tall_detector")
    module._logger = logging.getLogger("tall_detector")
    torch.Tensor.cuda = lambda self, *a, **k: self  # create_image_pos_embed's .cuda()
    torch.set_num_threads(1)
    out: dict = {
        "commit": COMMIT,
        "seed": SEED,
        "input": "torch.manual_seed(0); randn(2, 4, 3, S, S)",
    }
    torch.manual_seed(0)
    tiny = module.TALLDetector({**BASE, **TINY}).eval()
    own = tiny.state_dict()
    spec = key_spec(own)
    buffers = {n for n, _ in tiny.named_buffers()}
    state = seeded_state_dict(spec, seed=SEED)
    state |= {k: v for k, v in own.items() if k in buffers}
    tiny.load_state_dict(state, strict=True)
    size = TINY["resolution"]
    torch.manual_seed(0)
    x = torch.randn(2, BASE["clip_size"], 3, size, size)
    with torch.no_grad():
        pred = tiny({"image": x})
    out["tiny"] = {
        "config": {**BASE, **TINY},
        "parameters": sum(p.numel() for p in tiny.parameters()),
        "cls": pred["cls"].tolist(),
        "prob": pred["prob"].tolist(),
        "buffers": sorted(buffers),
        "key_spec": spec,
    }
    full = module.TALLDetector({**BASE, **FULL}).eval()  # on CPU: drop-path calls .item()
    own = full.state_dict()
    buffers = {n for n, _ in full.named_buffers()}
    state = seeded_state_dict(key_spec(own), seed=SEED)
    full.load_state_dict(state | {k: v for k, v in own.items() if k in buffers}, strict=True)
    size = FULL["resolution"]
    torch.manual_seed(0)
    x = torch.randn(2, BASE["clip_size"], 3, size, size)
    with torch.no_grad():
        pred = full({"image": x})
    out["full"] = {
        "config": {**BASE, **FULL},
        "parameters": sum(p.numel() for p in full.parameters()),
        "cls": pred["cls"].tolist(),
        "prob": pred["prob"].tolist(),
        "buffers": sorted(buffers),
        "key_spec": key_spec(own),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

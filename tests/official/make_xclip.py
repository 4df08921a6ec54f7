"""Make the reference of DeepfakeBench's X-CLIP: ``tests/official/video/xclip_dfb.json``.

Runs the authors' own code (github.com/SCLBD/DeepfakeBench, commit
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04) from a checkout given with ``--repo``:
``training/detectors/xclip_detector.py``'s ``XCLIPDetector`` (imported on its own by
:mod:`tests.official.deepfakebench_import`), whose ``build_backbone`` calls
``transformers.XCLIPVisionModel.from_pretrained(config['pretrained'])``. Offline,
``from_pretrained`` is replaced by ``XCLIPVisionModel(XCLIPVisionConfig(**variant))``.
``forward({'image': x})`` in eval mode gives ``cls`` (B, 2) and ``prob``.

Two variants: ``tiny`` (2 layers, width 768 as the detector's ``fc_norm``/``head`` need,
4 heads, MLP 64, frames of 32 x 32, patch 8, ``num_frames`` 4 and clips of 8 frames, so the
cross-frame message attention runs over two groups of 4 frames per clip as DeepfakeBench's
32-frame clips run over groups of the model's 8) is what ``tests/test_xclip.py``
recomputes; ``full`` (``XCLIPVisionConfig()`` = ``microsoft/xclip-base-patch32``'s vision
tower: ViT-B/32, 8 frames of 224 x 224) records the parameter count and the state-dict
keys (meta device). Weights: ``seeded_state_dict`` of the detector's own ``state_dict`` keys
(seed 51), what DeepfakeBench saves as ``xclip_best.pth`` (under transformers 5's names);
input ``torch.manual_seed(0); torch.randn(2, T, 3, S, S)`` (B, T, C, H, W).

Run: ``python tests/official/make_xclip.py --repo /path/to/DeepfakeBench``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "video" / "xclip_dfb.json"
COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
TINY = {
    "hidden_size": 768,  # the detector's fc_norm / head are LayerNorm(768) / Linear(768, 2)
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "num_frames": 4,
}
CLIP_LEN = 8
SEED = 51


def build(module, variant: dict) -> torch.nn.Module:
    import transformers

    config = transformers.XCLIPVisionConfig(**variant)
    original = transformers.XCLIPVisionModel.from_pretrained
    transformers.XCLIPVisionModel.from_pretrained = classmethod(
        lambda cls, *args, **kwargs: cls(config)
    )
    try:
        detector = module.XCLIPDetector(
            {"pretrained": "microsoft/xclip-base-patch32", "loss_func": "cross_entropy"}
        )
    finally:
        transformers.XCLIPVisionModel.from_pretrained = original
    return detector.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.official.deepfakebench_import import import_detector
    from tests.official.weights import key_spec, seeded_state_dict

    module = import_detector(args.repo, "xclip_detector")
    torch.set_num_threads(1)
    out: dict = {
        "commit": COMMIT,
        "seed": SEED,
        "input": "torch.manual_seed(0); randn(2, T, 3, S, S)",
    }
    tiny = build(module, TINY)
    spec = key_spec(tiny.state_dict())
    tiny.load_state_dict(seeded_state_dict(spec, seed=SEED), strict=True)
    torch.manual_seed(0)
    x = torch.randn(2, CLIP_LEN, 3, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        pred = tiny({"image": x})
    out["tiny"] = {
        "config": TINY,
        "clip_len": CLIP_LEN,
        "parameters": sum(p.numel() for p in tiny.parameters()),
        "cls": pred["cls"].tolist(),
        "prob": pred["prob"].tolist(),
        "key_spec": spec,
    }
    with torch.device("meta"):
        full = build(module, {})
    out["full"] = {
        "config": "transformers.XCLIPVisionConfig() (microsoft/xclip-base-patch32's vision tower)",
        "parameters": sum(p.numel() for p in full.parameters()),
        "keys": list(full.state_dict()),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

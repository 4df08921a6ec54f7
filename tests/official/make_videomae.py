"""Make the reference of DeepfakeBench's VideoMAE: ``tests/official/video/videomae_dfb.json``.

Runs the authors' own code (github.com/SCLBD/DeepfakeBench, commit
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04) from a checkout given with ``--repo``:
``training/detectors/videomae_detector.py``'s ``VideoMAEDetector`` (imported on its own
by :mod:`tests.official.deepfakebench_import`; the ``loralib`` and tensorboard imports it
never calls are stubbed), whose ``build_backbone`` calls
``transformers.VideoMAEModel.from_pretrained("MCG-NJU/videomae-base")``. Offline,
``from_pretrained`` is replaced by ``VideoMAEModel(VideoMAEConfig(**variant))`` with
``use_mean_pooling=False``, as the ``videomae-base`` (self-supervised pre-training)
checkpoint is configured by transformers' conversion script (``"finetuned" not in
model_name`` -> ``use_mean_pooling = False``: the encoder keeps its final ``layernorm``).
``forward({'image': x})`` in eval mode gives ``cls`` (B, 2) and ``prob``.

Two variants: ``tiny`` (2 layers, width 768 as the detector's ``fc_norm``/``head`` need,
4 heads, MLP 64, 4 frames of 32 x 32, patch 8, tubelet 2) is what
``tests/test_videomae.py`` recomputes; ``full`` (``videomae-base``: ViT-B/16, 16 frames
of 224 x 224, tubelet 2) records the parameter count and the state-dict keys (meta device).
Weights: ``seeded_state_dict`` of the detector's own ``state_dict`` keys (seed 41), which
is what DeepfakeBench saves as ``videomae_best.pth``; input ``torch.manual_seed(0);
torch.randn(2, T, 3, S, S)`` (B, T, C, H, W).

Run: ``python tests/official/make_videomae.py --repo /path/to/DeepfakeBench``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "video" / "videomae_dfb.json"
COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
TINY = {
    "hidden_size": 768,  # the detector's fc_norm / head are LayerNorm(768) / Linear(768, 2)
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "num_frames": 4,
    "tubelet_size": 2,
    "use_mean_pooling": False,
}
SEED = 41


def build(module, variant: dict) -> torch.nn.Module:
    import transformers

    config = transformers.VideoMAEConfig(**variant)
    original = transformers.VideoMAEModel.from_pretrained
    transformers.VideoMAEModel.from_pretrained = classmethod(
        lambda cls, *args, **kwargs: cls(config)
    )
    try:
        detector = module.VideoMAEDetector({"loss_func": "cross_entropy"})
    finally:
        transformers.VideoMAEModel.from_pretrained = original
    return detector.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.official.deepfakebench_import import import_detector
    from tests.official.weights import key_spec, seeded_state_dict

    module = import_detector(args.repo, "videomae_detector")
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
    x = torch.randn(2, TINY["num_frames"], 3, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        pred = tiny({"image": x})
    out["tiny"] = {
        "config": TINY,
        "parameters": sum(p.numel() for p in tiny.parameters()),
        "cls": pred["cls"].tolist(),
        "prob": pred["prob"].tolist(),
        "key_spec": spec,
    }
    with torch.device("meta"):
        full = build(module, {"use_mean_pooling": False})
    out["full"] = {
        "config": "transformers.VideoMAEConfig(use_mean_pooling=False) (MCG-NJU/videomae-base)",
        "parameters": sum(p.numel() for p in full.parameters()),
        "keys": list(full.state_dict()),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

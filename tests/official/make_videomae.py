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

import sys
from pathlib import Path
from typing import Any

import torch

OUT = Path(__file__).resolve().parent / "video" / "videomae_dfb.json"
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


def build(module: Any, variant: dict[str, Any]) -> torch.nn.Module:
    """``VideoMAEDetector`` with ``from_pretrained`` building ``VideoMAEConfig(**variant)``
    (also what ``full_size_video.py`` builds)."""
    from tests.official.hf_video_reference import build_detector

    return build_detector(
        module,
        "VideoMAEDetector",
        "VideoMAEModel",
        "VideoMAEConfig",
        variant,
        {"loss_func": "cross_entropy"},
    )


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.official.hf_video_reference import make_reference

    make_reference(
        detector_module="videomae_detector",
        build=build,
        tiny=TINY,
        full={"use_mean_pooling": False},
        full_description="transformers.VideoMAEConfig(use_mean_pooling=False) (MCG-NJU/videomae-base)",
        seed=SEED,
        out=OUT,
    )


if __name__ == "__main__":
    main()

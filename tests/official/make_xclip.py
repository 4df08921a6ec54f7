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

import sys
from pathlib import Path
from typing import Any

import torch

OUT = Path(__file__).resolve().parent / "video" / "xclip_dfb.json"
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


def build(module: Any, variant: dict[str, Any]) -> torch.nn.Module:
    """``XCLIPDetector`` with ``from_pretrained`` building ``XCLIPVisionConfig(**variant)``
    (also what ``full_size_video.py`` builds)."""
    from tests.official.hf_video_reference import build_detector

    return build_detector(
        module,
        "XCLIPDetector",
        "XCLIPVisionModel",
        "XCLIPVisionConfig",
        variant,
        {
            "pretrained": "microsoft/xclip-base-patch32",
            "loss_func": "cross_entropy",
        },
    )


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.official.hf_video_reference import make_reference

    make_reference(
        detector_module="xclip_detector",
        build=build,
        tiny=TINY,
        full={},
        full_description="transformers.XCLIPVisionConfig() (microsoft/xclip-base-patch32's vision tower)",
        seed=SEED,
        out=OUT,
        clip_len=CLIP_LEN,
    )


if __name__ == "__main__":
    main()

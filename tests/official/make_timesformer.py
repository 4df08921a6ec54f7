"""Make the reference of DeepfakeBench's TimeSformer: ``tests/official/video/timesformer_dfb.json``.

Runs the authors' own code (github.com/SCLBD/DeepfakeBench, commit
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04) from a checkout given with ``--repo``:
``training/detectors/timesformer_detector.py``'s ``TimeSformerDetector`` (imported on its
own by :mod:`tests.official.deepfakebench_import`; built and run by
:mod:`tests.official.hf_video_reference`), whose ``build_backbone`` calls
``transformers.TimesformerModel.from_pretrained(config['pretrained'])``. Offline,
``from_pretrained`` is replaced by ``TimesformerModel(TimesformerConfig(**variant))``
(the architecture only; every tensor is then overwritten). ``forward({'image': x})``
in eval mode gives ``cls`` (B, 2) and ``prob``.

Two variants: ``tiny`` (2 layers, width 768 as the detector's ``nn.Linear(768, 2)`` head
needs, 4 heads, MLP 64, 4 frames of 32 x 32, patch 8) is
what ``tests/test_timesformer.py`` recomputes; ``full`` (``facebook/timesformer-base-
finetuned-k400``'s configuration, transformers' ``TimesformerConfig()`` defaults: 12
layers, width 768, 8 frames of 224 x 224, patch 16) records the parameter count and the
state-dict keys only (its forward is too slow for the test suite on CPU).
Weights: ``seeded_state_dict`` of the detector's own ``state_dict`` keys (seed 21), which
is what DeepfakeBench saves as ``timesformer_best.pth``; input ``torch.manual_seed(0);
torch.randn(2, T, 3, S, S)`` (B, T, C, H, W), as DeepfakeBench's video datasets stack it.

Run: ``python tests/official/make_timesformer.py --repo /path/to/DeepfakeBench``
(a checkout or ``git archive`` of ``training/detectors``; no scratch packages needed:
transformers is in deepsift's environment).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

OUT = Path(__file__).resolve().parent / "video" / "timesformer_dfb.json"
TINY = {
    "hidden_size": 768,  # the detector's head is nn.Linear(768, 2)
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "num_frames": 4,
}
SEED = 21


def build(module: Any, variant: dict[str, Any]) -> torch.nn.Module:
    """``TimeSformerDetector`` with ``from_pretrained`` building ``TimesformerConfig(**variant)``
    (also what ``full_size_video.py`` builds)."""
    from tests.official.hf_video_reference import build_detector

    return build_detector(
        module,
        "TimeSformerDetector",
        "TimesformerModel",
        "TimesformerConfig",
        variant,
        {
            "pretrained": "facebook/timesformer-base-finetuned-k400",
            "loss_func": "cross_entropy",
        },
    )


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.official.hf_video_reference import make_reference

    make_reference(
        detector_module="timesformer_detector",
        build=build,
        tiny=TINY,
        full={},
        full_description="transformers.TimesformerConfig() (facebook/timesformer-base-finetuned-k400)",
        seed=SEED,
        out=OUT,
    )


if __name__ == "__main__":
    main()

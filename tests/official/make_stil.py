"""Make the reference of DeepfakeBench's STIL (``tests/official/video/deepfakebench_stil.json``).

Runs the authors' own code (github.com/SCLBD/DeepfakeBench, commit
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04, ``training/detectors/stil_detector.py``) from
a checkout given with ``--repo``. Its module header imports DeepfakeBench's registries,
sklearn and tensorboard, none of which the network needs, so this script executes the
module's source from ``class STIL_Model`` on (``STIL_Model``, ``ISM_Module``,
``TIM_Module``, ``ShiftModule``, ``SCConv``, ``SCBottleneck``, ``SCNet``) with ``torch``,
``nn``, ``F`` and ``model_zoo`` in scope, and builds ``STIL_Model(num_class=2,
num_segment=4)`` with its ``scnet50_v1d`` replaced by a test-size SCNet of the authors'
classes (``SCNet(4, SCBottleneck, [1, 1, 1, 1], deep_stem=True, stem_width=32,
avg_down=True, avd=True)``: the same code at one block per stage, no ImageNet download).
``STILDetector`` holds it as ``self.model``, so its ``stil_best.pth`` keys are
``model.base_model.*``; the seeded weights are loaded with ``strict=True`` and the
module run in eval mode on a seeded (B, T, 3, 64, 64) clip reshaped as
``STILDetector.features`` does (``view(bs, t * c, h, w)``).

Usage (from the project root)::

    python tests/official/make_stil.py --repo <DeepfakeBench checkout>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.model_zoo as model_zoo
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.official.weights import key_spec, seeded_state_dict  # noqa: E402

COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"
SEED = 21
CLIP_SEED = 5
SHAPE = [2, 4, 3, 64, 64]
OVERRIDES = {"clip_len": 4, "layers": [1, 1, 1, 1], "width": 64, "stem_width": 32, "size": 64}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    source = (args.repo / "training/detectors/stil_detector.py").read_text()
    scope = {"torch": torch, "nn": nn, "F": F, "model_zoo": model_zoo}
    exec(source[source.index("class STIL_Model") :], scope)
    scope["scnet50_v1d"] = lambda segments, pretrained=False: scope["SCNet"](
        segments,
        scope["SCBottleneck"],
        [1, 1, 1, 1],
        deep_stem=True,
        stem_width=32,
        avg_down=True,
        avd=True,
    )
    model = scope["STIL_Model"](num_class=2, num_segment=SHAPE[1])
    spec = key_spec({f"model.{k}": v for k, v in model.state_dict().items()})
    state = seeded_state_dict(spec, SEED)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)
    model.eval()
    clip = torch.randn(SHAPE, generator=torch.Generator().manual_seed(CLIP_SEED))
    b, t, c, h, w = SHAPE
    with torch.no_grad():
        out = model(clip.view(b, t * c, h, w))
    reference = {
        "format": "DeepfakeBench STIL",
        "detector": "stil",
        "overrides": OVERRIDES,
        "repository": "github.com/SCLBD/DeepfakeBench",
        "commit": COMMIT,
        "file": "training/detectors/stil_detector.py",
        "filename": "stil_best.pth",
        "seed": SEED,
        "clip_seed": CLIP_SEED,
        "clip_shape": SHAPE,
        "parameters": sum(p.numel() for p in model.parameters()),
        "keys": spec,
        "outputs": {"two_class_logits": out.tolist()},
    }
    (HERE / "video" / "deepfakebench_stil.json").write_text(json.dumps(reference) + "\n")
    print(out)


if __name__ == "__main__":
    main()

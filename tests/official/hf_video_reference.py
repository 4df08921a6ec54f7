"""What ``make_timesformer.py``, ``make_videomae.py`` and ``make_xclip.py`` share: build one of
DeepfakeBench's video-transformer detectors offline (its ``from_pretrained`` replaced by the
architecture of a given configuration), run it on seeded weights and write the JSON.

The detector module is imported on its own by :mod:`tests.official.deepfakebench_import`;
every tensor is then overwritten by ``seeded_state_dict`` of the detector's own
``state_dict`` keys, which is what DeepfakeBench saves as ``*_best.pth``. The input is
``torch.manual_seed(0); torch.randn(2, T, 3, S, S)`` (B, T, C, H, W), as DeepfakeBench's
video datasets stack it; ``forward({'image': x})`` in eval mode gives ``cls`` (B, 2) and
``prob``. The ``full`` variant is built on the meta device: its parameter count and keys.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
#: the DeepfakeBench commit the references were made at
COMMIT = "8a4a7bf5e966c5c5618bc27d1719c3683eae9a04"


def build_detector(
    module: Any,
    detector: str,
    model: str,
    config: str,
    variant: dict[str, Any],
    detector_config: dict[str, Any],
) -> torch.nn.Module:
    """``module.<detector>(detector_config)`` in eval mode, with
    ``transformers.<model>.from_pretrained`` building ``<model>(<config>(**variant))``."""
    import transformers

    model_class = getattr(transformers, model)
    built = getattr(transformers, config)(**variant)
    original = model_class.from_pretrained
    model_class.from_pretrained = classmethod(lambda cls, *args, **kwargs: cls(built))
    try:
        net = getattr(module, detector)(detector_config)
    finally:
        model_class.from_pretrained = original
    return net.eval()


def make_reference(
    *,
    detector_module: str,
    build: Callable[[Any, dict[str, Any]], torch.nn.Module],
    tiny: dict[str, Any],
    full: dict[str, Any],
    full_description: str,
    seed: int,
    out: Path,
    clip_len: int | None = None,
) -> None:
    """Parse ``--repo`` (a DeepfakeBench checkout), import ``training/detectors/<detector_module>``
    and write ``out``: ``build(module, variant)``'s detector for the ``tiny`` variant's
    configuration, count, ``cls``/``prob`` on clips of ``clip_len`` frames (default its
    ``num_frames``) and key spec; the ``full`` variant's count and keys."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.official.deepfakebench_import import import_detector
    from tests.official.weights import key_spec, seeded_state_dict

    module = import_detector(args.repo, detector_module)
    torch.set_num_threads(1)
    result: dict = {
        "commit": COMMIT,
        "seed": seed,
        "input": "torch.manual_seed(0); randn(2, T, 3, S, S)",
    }
    net = build(module, tiny)
    spec = key_spec(net.state_dict())
    net.load_state_dict(seeded_state_dict(spec, seed=seed), strict=True)
    torch.manual_seed(0)
    frames = clip_len or tiny["num_frames"]
    x = torch.randn(2, frames, 3, tiny["image_size"], tiny["image_size"])
    with torch.no_grad():
        pred = net({"image": x})
    result["tiny"] = {"config": tiny}
    if clip_len is not None:
        result["tiny"]["clip_len"] = clip_len
    result["tiny"] |= {
        "parameters": sum(p.numel() for p in net.parameters()),
        "cls": pred["cls"].tolist(),
        "prob": pred["prob"].tolist(),
        "key_spec": spec,
    }
    with torch.device("meta"):
        big = build(module, full)
    result["full"] = {
        "config": full_description,
        "parameters": sum(p.numel() for p in big.parameters()),
        "keys": list(big.state_dict()),
    }
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")

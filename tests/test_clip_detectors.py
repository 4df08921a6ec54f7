"""Every input_kind == "clip" config: frames -> transform -> (B, T, C, H, W) -> (B,) logits -> grads.

CPU-small overrides come from ``tests/video_detectors.py`` (``TINY``, written by the
video detector engineers); configs without an entry are skipped with the reason.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.clip_cost import clip_detectors
from detectors import load_detector

try:
    from tests.video_detectors import TINY
except ImportError:
    TINY = {}

OWN = {"clip_mean": {"backbone": "resnet10t", "clip_len": 3, "size": 32}}


@pytest.mark.parametrize("name", clip_detectors())
def test_clip_detector_contract(name):
    overrides = {**OWN, **TINY}.get(name)
    if overrides is None:
        pytest.skip(f"{name}: no CPU-small overrides in tests/video_detectors.py TINY")
    torch.manual_seed(0)
    detector = load_detector(name, **overrides)
    assert detector.input_kind == "clip"
    span = (detector.clip_len - 1) * detector.clip_stride + 1
    rng = np.random.default_rng(0)
    video = [
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(span)
    ]
    frames = video[:: detector.clip_stride]
    sample = {"frames": frames, "record": None}
    if detector.needs_mouth:
        sample["mouth_frames"] = [f.crop((16, 32, 48, 56)) for f in frames]
    clip = detector.transform(sample, train=True)["clip"]
    assert clip.dim() == 4 and clip.shape[0] == detector.clip_len and clip.dtype == torch.float32
    batch = {"clip": torch.stack([clip, clip]), "label": torch.tensor([0.0, 1.0])}
    detector.train()
    assert detector({"clip": batch["clip"]})["logits"].shape == (2,)
    detector.training_step(batch)["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in detector.parameters())

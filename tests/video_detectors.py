"""CPU-small overrides of the clip detectors, read by their tests and the end-to-end test."""

from __future__ import annotations

from typing import Any

TINY: dict[str, dict[str, Any]] = {
    "tall": {
        "frame_size": 28,
        "model_kwargs": {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2]},
    },
    "stil": {"clip_len": 4, "size": 64, "layers": [1, 1, 1, 1], "width": 32, "stem_width": 8},
}

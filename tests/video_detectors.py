"""CPU-small variants of the video (clip) detectors, for tests.

``TINY[config name]`` are overrides for ``load_detector(name, **TINY[name])``: few
blocks, narrow layers, short clips of small frames, so a forward and a training step
take well under a second on one core. The end-to-end clip test reads this table.
"""

from __future__ import annotations

from typing import Any

TINY: dict[str, dict[str, Any]] = {
    # I3D's tiny network; alter_freq 2 so a short run sees both freezing phases
    "altfreezing": {
        "clip_len": 4,
        "blocks": [1, 1, 1, 1],
        "width_per_group": 8,
        "dropout": 0.0,
        "alter_freq": 2,
        "preprocessing": {"size": 32, "resize_to": 32},
    },
    # the frame-averaging baseline on a ResNet-10t, 3 frames 2 apart of 32 x 32
    "clip_mean": {"backbone": "resnet10t", "size": 32, "clip_len": 3, "clip_stride": 2},
    # one bottleneck per stage, 8-channel stem, 4 frames of 32 x 32 (s5 map: 2 x 1 x 1)
    "i3d": {
        "clip_len": 4,
        "blocks": [1, 1, 1, 1],
        "width_per_group": 8,
        "dropout": 0.0,
        "preprocessing": {"size": 32, "resize_to": 32},
    },
    # one bottleneck per stage, 8-channel stem (dim 128), 4 frames of 32 x 32 (res4 map: 2 x 2 x 2)
    "ftcn": {
        "clip_len": 4,
        "blocks": [1, 1, 1],
        "width_per_group": 8,
        "heads": 2,
        "dim_head": 16,
        "mlp_dim": 32,
        "dropout": 0.0,
        "preprocessing": {"size": 32, "resize_to": 32},
    },
    "tall": {
        "frame_size": 28,
        "model_kwargs": {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2]},
    },
    # full-width ResNet-18 trunk is cheap at 32 x 32; a 2-level, 8-per-branch MS-TCN
    "lipforensics": {
        "clip_len": 5,
        "size": 32,
        "resize": 36,
        "width": 16,
        "trunk_layers": [1, 1, 1, 1],
        "hidden_dim": 8,
        "tcn_layers": 2,
        "dropout": 0.0,
    },
    "stil": {"clip_len": 4, "size": 64, "layers": [1, 1, 1, 1], "width": 32, "stem_width": 8},
    # 2 layers of width 32, 4 frames of 32 x 32 in 8 x 8 patches (64 space-time tokens)
    "timesformer": {
        "clip_len": 4,
        "backbone": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
            "num_frames": 4,
        },
        "preprocessing": {"size": 32, "resize_to": 32},
    },
    # 2 layers of width 32, 4 frames of 32 x 32 in 2 x 8 x 8 tubelets (32 tokens)
    "videomae": {
        "clip_len": 4,
        "backbone": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "patch_size": 8,
        },
        "preprocessing": {"size": 32, "resize_to": 32},
    },
    # 2 layers of width 32, frames of 32 x 32 in 8 x 8 patches, message groups of 2 frames
    "xclip": {
        "clip_len": 4,
        "backbone": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "patch_size": 8,
            "num_frames": 2,
        },
        "preprocessing": {"size": 32, "resize_to": 32},
    },
}

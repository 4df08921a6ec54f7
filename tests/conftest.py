"""Shared fixtures: tiny image trees generated on the fly, and Hydra runners."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# No test may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def _real(rng: np.random.Generator, size: int) -> np.ndarray:
    """ "Photo-like" content: smooth shapes plus per-pixel sensor noise."""
    small = rng.integers(0, 256, (max(size // 8, 2), max(size // 8, 2), 3), dtype=np.uint8)
    smooth = np.asarray(
        Image.fromarray(small).resize((size, size), Image.BILINEAR), dtype=np.float64
    )
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def _fake(rng: np.random.Generator, size: int) -> np.ndarray:
    """The same kind of content from a nearest-neighbour x2 up-sampler: noise in 2x2 blocks."""
    half = _real(rng, size // 2)
    return np.asarray(Image.fromarray(half).resize((size, size), Image.NEAREST))


def make_folder_tree(
    root: Path, per_class: int = 16, size: int = 32, seed: int = 0, corrupt: bool = True
) -> Path:
    """A ``0_real``/``1_fake`` tree with train/val/test and two generators in test."""
    rng = np.random.default_rng(seed)
    layout = {
        "train": [""],
        "val": [""],
        "test": ["gen_a/", "gen_b/"],
    }
    for split, generators in layout.items():
        for gen in generators:
            for label, maker in (("0_real", _real), ("1_fake", _fake)):
                folder = root / split / gen / label
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    Image.fromarray(maker(rng, size)).save(folder / f"{i:03d}.png")
    if corrupt:
        (root / "test" / "gen_a" / "1_fake" / "broken.png").write_bytes(
            b"\x89PNG\r\n\x1a\n not really"
        )
    return root


@pytest.fixture(scope="session")
def folder_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_tree(tmp_path_factory.mktemp("tree"))


# Overrides that make a training run take seconds on 2 CPU cores.
FAST = [
    "detector=timm_classifier",
    "detector.backbone=resnet18",
    "detector.preprocessing.size=32",
    "trainer=cpu",
    "trainer.batch_size=16",
    "trainer.eval_batch_size=32",
    "trainer.num_workers=0",
]


def run_script(
    script: str, overrides: Sequence[str], cwd: Path = ROOT, torchrun: int = 0, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py as a user would; output captured for assertions."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1" if torchrun else os.environ.get("OMP_NUM_THREADS", "2"),
    }
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            str(ROOT / script),
        ]
    else:
        cmd = [sys.executable, str(ROOT / script)]
    return subprocess.run(
        [*cmd, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )

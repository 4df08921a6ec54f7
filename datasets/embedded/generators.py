"""Four small generator-style autoencoders that differ only in their up-sampling layer.

Following AutoGAN (X. Zhang, S. Karaman, S.-F. Chang, "Detecting and
Simulating Artifacts in GAN Fake Images", WIFS 2019), each real crop is passed
through a generator trained as an autoencoder: the content of the fake is the
content of its real twin, and what tells them apart is the trace the generator's
up-sampling leaves (plus its small reconstruction error). The families follow
the up-sampling choices of GAN and diffusion decoders discussed by Odena,
Dumoulin and Olah, "Deconvolution and Checkerboard Artifacts", Distill 2016:

* ``tconv``: transposed convolution, kernel 3, stride 2 (the CycleGAN / AutoGAN
  choice; uneven kernel overlap gives checkerboard patterns);
* ``nearest``: nearest-neighbour up-sampling then a 3x3 convolution;
* ``bilinear``: bilinear up-sampling then a 3x3 convolution;
* ``pixelshuffle``: a 3x3 convolution to 4x the channels then sub-pixel
  shuffling (ESPCN).

The encoder (two convolutions at full resolution and half resolution) is the
same for all four; the decoder up-samples once, x2, with the family's layer.
Training uses random sub-patches of the train-split crops with colour
augmentation (channel permutation and per-channel gains), so colours never
seen in the few training photos are still reproduced on val and test photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.errors import UserError
from deepsift.core.progress import progress_bar

FAMILIES: tuple[str, ...] = ("tconv", "nearest", "bilinear", "pixelshuffle")
#: embedded v2's families: v1's four, an iterative denoiser with no up-sampling at all
#: (``diffusion``) and a bicubic-up-sampling autoencoder whose output is JPEG-compressed
#: (``jpeg``); see :mod:`datasets.embedded.v2`.
FAMILIES_V2: tuple[str, ...] = (*FAMILIES, "diffusion", "jpeg")


def upsample(family: str, cin: int, cout: int) -> nn.Module:
    """The x2 up-sampling layer of ``family`` from ``cin`` to ``cout`` channels."""
    if family == "tconv":
        return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
    if family == "nearest":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1)
        )
    if family == "bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(cin, cout, 3, padding=1),
        )
    if family == "pixelshuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))
    if family == "bicubic":  # v2's jpeg family
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False),
            nn.Conv2d(cin, cout, 3, padding=1),
        )
    raise ValueError(f"unknown generator family {family!r}; choose from {', '.join(FAMILIES)}")


class GeneratorAE(nn.Module):
    """Encoder (full -> half resolution) and a decoder with one ``family`` up-sampling."""

    def __init__(self, family: str, width: int = 32) -> None:
        super().__init__()
        self.family = family
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.LeakyReLU(0.2),
        )
        self.decoder = nn.Sequential(
            upsample(family, 2 * width, width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255)


def _sample_batch(
    crops: np.ndarray, batch: int, patch: int, rng: np.random.Generator
) -> torch.Tensor:
    """Random ``patch``-pixel sub-crops with flips, channel permutations and channel gains."""
    n, height, width = crops.shape[:3]
    idx = rng.integers(0, n, batch)
    ys = rng.integers(0, height - patch + 1, batch)
    xs = rng.integers(0, width - patch + 1, batch)
    patches = np.stack(
        [crops[i, y : y + patch, x : x + patch] for i, y, x in zip(idx, ys, xs, strict=True)]
    )
    flips = rng.random(batch) < 0.5
    patches[flips] = patches[flips, :, ::-1]
    perms = np.stack([rng.permutation(3) for _ in range(batch)])
    patches = np.take_along_axis(patches, perms[:, None, None, :], axis=3)
    gains = rng.uniform(0.5, 1.5, (batch, 3, 1, 1)).astype(np.float32)
    return (_to_tensor(patches) * torch.from_numpy(gains)).clamp_(0, 1)


def train_autoencoder(
    family: str,
    crops: np.ndarray,
    *,
    steps: int,
    batch: int,
    patch: int,
    lr: float,
    width: int,
    seed: int,
    progress: bool = True,
) -> tuple[GeneratorAE, float]:
    """Train a ``family`` autoencoder on uint8 crops ``(N, H, W, 3)`` with an L1 loss.

    Weights are initialised under ``torch.manual_seed(seed)`` inside a forked RNG
    (the caller's global torch RNG is left as it was) and batches are drawn from
    ``numpy.random.default_rng(seed)``, so the same inputs give the same weights on
    the same machine, thread count and library versions. Returns the model in
    eval mode and the mean loss of the last tenth of the steps.
    """
    patch = min(patch, crops.shape[1], crops.shape[2])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GeneratorAE(family, width)
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1
    )
    tail: list[float] = []
    model.train()
    bar = progress_bar(range(steps), f"train {family}", enabled=progress)
    for step in bar:
        x = _sample_batch(crops, batch, patch, rng)
        loss = F.l1_loss(model(x), x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step >= steps - max(steps // 10, 1):
            tail.append(loss.item())
        if step % 25 == 0:
            bar.set_postfix(l1=f"{loss.item():.4f}")
    model.eval()
    return model, float(np.mean(tail)) if tail else float("nan")


@torch.no_grad()
def synthesise_float(model: nn.Module, crops: np.ndarray, batch: int = 128) -> np.ndarray:
    """The generator's output for each uint8 crop as float32 ``(N, H, W, 3)`` on 0-255, unclipped."""
    out = np.empty(crops.shape, dtype=np.float32)
    for start in range(0, len(crops), batch):
        y = model(_to_tensor(crops[start : start + batch])).mul_(255)
        out[start : start + batch] = y.permute(0, 2, 3, 1).numpy()
    return out


@torch.no_grad()
def synthesise(model: GeneratorAE, crops: np.ndarray, batch: int = 128) -> np.ndarray:
    """The generator's output for each uint8 crop, quantised back to uint8 ``(N, H, W, 3)``."""
    out = np.empty_like(crops)
    for start in range(0, len(crops), batch):
        y = model(_to_tensor(crops[start : start + batch]))
        y = y.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        out[start : start + batch] = y.permute(0, 2, 3, 1).numpy()
    return out


def embedded_autoencoder(family: str, weights: str | None = None, width: int = 32) -> nn.Module:
    """A ``GeneratorAE`` of the embedded benchmark (``datasets.embedded.generators``).

    ``weights``: a state-dict file of that autoencoder (e.g. saved with
    ``torch.save(model.state_dict(), path)`` after ``train_autoencoder``). It takes
    and returns images in [0, 1], as the detector expects.
    """
    from datasets.embedded.generators import FAMILIES, GeneratorAE

    if family not in FAMILIES:
        raise UserError(
            f"unknown embedded autoencoder family {family!r}; choose from {', '.join(FAMILIES)}"
        )
    if not weights:
        raise UserError(
            "embedded_autoencoder needs a weights file: pass detector.autoencoder.weights=<state dict .pt>"
        )
    if not Path(weights).is_file():
        raise UserError(f"autoencoder weights {weights} do not exist; pass an existing .pt file")
    model = GeneratorAE(family, width)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return model.eval()

"""Embedded v2's ``diffusion`` family: a small iterative denoiser with no up-sampling.

A diffusion model generates by repeatedly denoising; SDEdit (Meng et al., ICLR 2022)
edits a real image by noising it part-way and running the reverse process from
there. Here a fully convolutional denoiser at full resolution (no stride, no
up-sampling layer of any kind) is trained on the train-split crops to predict the
clean crop from ``x + sigma * noise`` at random noise levels (an x0-prediction
denoising loss, L1, as the autoencoders), and each fake is the real crop noised to
``strength`` and denoised in ``steps`` ancestral steps on a geometric noise
schedule (fresh seeded noise between steps, the denoised estimate of the last
step is the output). So its content is its real twin's, like the autoencoders',
and its fingerprint is the denoiser's, not an up-sampler's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets.embedded.generators import _sample_batch, _to_tensor
from deepsift.core.progress import progress_bar


class Denoiser(nn.Module):
    """``layers`` 3x3 convolutions at full resolution on (image, noise level); predicts x0."""

    def __init__(self, width: int = 32, layers: int = 4) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(4, width, 3, padding=1), nn.LeakyReLU(0.2)]
        for _ in range(layers - 2):
            blocks += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(width, 3, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, H, W) noisy images, ``sigma`` (B,) noise levels -> x0 estimate."""
        level = sigma.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return x + self.net(torch.cat([x, level], dim=1))


def train_denoiser(
    crops: np.ndarray,
    *,
    steps: int,
    batch: int,
    patch: int,
    lr: float,
    width: int,
    sigma_range: tuple[float, float],
    seed: int,
    progress: bool = True,
) -> tuple[Denoiser, float]:
    """Train a :class:`Denoiser` on uint8 crops; seeded like ``train_autoencoder``.

    Noise levels are log-uniform in ``sigma_range`` (images in [0, 1]). Returns the
    model in eval mode and the mean L1 loss of the last tenth of the steps.
    """
    patch = min(patch, crops.shape[1], crops.shape[2])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Denoiser(width)
    rng = np.random.default_rng(seed)
    noise = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1
    )
    low, high = np.log(sigma_range[0]), np.log(sigma_range[1])
    tail: list[float] = []
    model.train()
    for step in progress_bar(range(steps), "train diffusion", enabled=progress):
        x = _sample_batch(crops, batch, patch, rng)
        sigma = torch.from_numpy(np.exp(rng.uniform(low, high, batch)).astype(np.float32))
        noisy = x + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=noise)
        loss = F.l1_loss(model(noisy, sigma), x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step >= steps - max(steps // 10, 1):
            tail.append(loss.item())
    model.eval()
    return model, float(np.mean(tail)) if tail else float("nan")


@torch.no_grad()
def sdedit(
    model: Denoiser,
    crops: np.ndarray,
    *,
    strength: float,
    steps: int,
    seed: int,
    batch: int = 128,
) -> np.ndarray:
    """Noise each uint8 crop to ``strength`` and denoise it in ``steps`` ancestral steps.

    Returns float32 ``(N, H, W, 3)`` on 0-255, unclipped. The noise comes from a
    generator seeded with ``seed`` and is drawn batch by batch in crop order.
    """
    sigmas = np.geomspace(strength, strength / 8, max(steps, 1)).astype(np.float32)
    noise = torch.Generator().manual_seed(seed)
    out = np.empty(crops.shape, dtype=np.float32)
    for start in range(0, len(crops), batch):
        clean = _to_tensor(crops[start : start + batch])
        x = clean + float(sigmas[0]) * torch.randn(clean.shape, generator=noise)
        for k, sigma in enumerate(sigmas):
            estimate = model(x, torch.full((len(x),), float(sigma)))
            if k + 1 < len(sigmas):
                x = estimate + float(sigmas[k + 1]) * torch.randn(x.shape, generator=noise)
        out[start : start + batch] = estimate.mul_(255).permute(0, 2, 3, 1).numpy()
    return out

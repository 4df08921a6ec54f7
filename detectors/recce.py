"""RECCE: reconstruction-classification learning on an Xception, for face forgeries.

After J. Cao, C. Ma, T. Yao, S. Chen, S. Ding and X. Yang, "End-to-End
Reconstruction-Classification Learning for Face Forgery Detection", CVPR 2022.
Official code: github.com/VISION-SJTU/RECCE (``model/network/Recce.py``,
``model/common.py``, ``trainer/exp_mgpu_trainer.py``, ``trainer/utils.py``,
``config/Recce.yml``, ``config/dataset/faceforensics.yml``); DeepfakeBench's port:
``training/detectors/recce_detector.py`` and ``training/config/detector/recce.yaml``.
An encoder-decoder learns to reconstruct *real* faces only, so it learns what
real faces have in common; its reconstruction error guides the classifier's
attention, and a graph-reasoning module fuses encoder and decoder features.

Architecture (official ``Recce``): the Xception entry flow and ``block4`` give
``embedding`` (728 channels, 1/16 of the input); a decoder (``decoder1`` ...
``decoder6``: nearest x2 up-sampling, separable convolutions, two Xception
blocks, a 1x1 convolution and ``tanh``) reconstructs the input from it (bilinear
up-sampling to the input size); ``block5``-``block7`` continue the encoder;
``GraphReasoning`` fuses their output (vertex A, one per position) with the
2x2 and 4x4 neighbourhoods of the decoder's ``decoder2`` and ``decoder4`` maps
(vertices B, C) and is added back; after ``block8``, the reconstruction-guided
attention ``GuidedAttention`` weights the features by a gate of
``|x - reconstruction|``; ``block9``-``block12``, ``conv3``/``conv4``, global
average pooling, dropout 0.2 and ``fc``. In training, white noise (std 1e-6) is
added to a random half of the inputs.

**Loss** (official ``exp_mgpu_trainer.py``, ``Recce.yml``: ``num_classes: 1``,
``binary_ce``, ``lambda_1 = lambda_2 = 0.1``)::

    L = flood(BCE(z, y)) + 0.1 * L_rec + 0.1 * L_metric,   flood(l) = |l - 0.04| + 0.04

``L_rec`` is the mean absolute error between the reconstruction and the input
over the *real* images of the batch (0 when there are none); ``L_metric`` sums,
over the pooled, L2-normalised ``block4``, ``decoder2`` and ``decoder4`` features
with pairwise similarities ``s_ij = (cos_ij + 1) / 2``, ``max(0, 1 - mean_{real
pairs i != j} s_ij + mean_{real-fake pairs} s_ij)`` (``MLLoss``, eps 1e-6 in the
denominators): reals are pulled together and pushed away from fakes; fakes are
free. :meth:`Recce.training_step` returns each term (``loss_cls`` before flooding).

Reference defaults:

* official: ImageNet ``timm`` Xception; FaceForensics++ (c40 in the config, c23
  for the released retrained weights) faces ``Resize(299, 299)``, horizontal
  flip, mean = std = 0.5; Adam lr 2e-4, weight decay 1e-5; ``StepLR`` every
  22500 *iterations* x0.5; 90000 iterations of batch 32 with AMP;
  ``SyncBatchNorm``;
* DeepfakeBench: 256 x 256 (``cv2.resize`` ``INTER_CUBIC`` on the uint8 crop), mean = std = 0.5, Adam lr 2e-4 betas
  (0.9, 0.999) eps 1e-8 weight decay 5e-4, batch 32, 10 epochs, no scheduler;
  a two-class ``fc`` with plain cross-entropy: DeepfakeBench trains RECCE
  **without** its reconstruction and metric-learning losses and without flooding.

Where this differs, and why:

* The loss is the official one (without it, RECCE is an Xception with an
  untrained decoder); the input size, normalisation and optimiser follow
  DeepfakeBench, the reference of this zoo and the layout of its released
  ``recce_best.pth``. The iteration-based ``StepLR`` is not reproduced
  (schedulers step per epoch here): set ``scheduler`` in the config if wanted.
* ``GraphReasoning`` is computed for all positions at once instead of the
  reference's Python loop over positions (the same arithmetic; a test checks it
  against the loop).
* The ImageNet classifier of the reference's timm encoder (``encoder.fc``,
  1000 x 2048, never used in the forward pass) is not built; checkpoints that
  carry it are checked and it is dropped.
* ImageNet initialisation only from a local file (``pretrained_file``); the
  references download it.

:meth:`Recce.load_weights` loads, with strict key matching, DeepfakeBench's
``recce_best.pth`` (``model.*`` = the official layout with a two-class ``fc``;
its ``backbone.*``, an unused DeepfakeBench Xception built by the port, is
checked and dropped), an official checkpoint (``{'model': ...}``, ``encoder.*``
... ``decoder6.*``, e.g. the authors' retrained FF++ c23 weights; it switches the
detector to the authors' ``inference.py`` input, 299 px, ``cv2.resize`` ``INTER_LINEAR``,
checked against their code in ``tests/official/recce_official.json``) or a deepsift
state dict. Two-class heads become the fake logit exactly (``w1 - w0``, ``b1 - b0``).
A DeepfakeBench file keeps the detector on DeepfakeBench's test input (a preprocessing
the user set still wins, with a warning); checked against DeepfakeBench's own
``RecceDetector`` and test input (``tests/official/deepfakebench_recce.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.heads import fake_logit_head
from detectors.layers.xception import XCEPTION_FEATURES, xception_backbone
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: DeepfakeBench: faces resized to 256 x 256 (``cv2.INTER_CUBIC``), mean = std = 0.5;
#: the official training flips horizontally (p 0.5)
DEFAULT_PREPROCESSING: dict[str, Any] = {**DEEPFAKEBENCH_FACE_PREPROCESSING, "hflip": 0.5}
#: the ImageNet classifier of the reference's timm encoder, never used
ENCODER_IMAGENET_HEAD = ("encoder.fc.weight", "encoder.fc.bias")
#: tensors of DeepfakeBench's Xception (``backbone.*`` of recce_best.pth) besides the network's
DEEPFAKEBENCH_XCEPTION_EXTRA = (
    "last_linear.weight",
    "last_linear.bias",
    "adjust_channel.0.weight",
    "adjust_channel.0.bias",
    "adjust_channel.1.weight",
    "adjust_channel.1.bias",
    "adjust_channel.1.running_mean",
    "adjust_channel.1.running_var",
    "adjust_channel.1.num_batches_tracked",
)
#: the official training and ``inference.py`` input size (albumentations ``Resize``, bilinear)
OFFICIAL_SIZE = 299
#: the authors' ``inference.py`` input: albumentations ``Resize(299, 299)`` (``cv2.resize``,
#: ``INTER_LINEAR``) of the uint8 crop, ``Normalize(0.5, 0.5)``
OFFICIAL_PREPROCESSING: dict[str, Any] = {
    **DEEPFAKEBENCH_FACE_PREPROCESSING,
    "size": OFFICIAL_SIZE,
    "resize_to": OFFICIAL_SIZE,
    "interpolation": "bilinear",
}
MIDDLE_WIDTH = 728


def check_key_set(
    state: Mapping[str, Any], expected: Iterable[str], source: str, layout: str
) -> None:
    """Refuse ``state`` unless its keys are exactly ``expected``, naming missing and unexpected keys."""
    expected = set(expected)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if not (missing or unexpected):
        return

    def show(keys: list[str]) -> str:
        if not keys:
            return "none"
        return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

    raise UserError(
        f"{source} does not match the {layout} layout: missing keys: {show(missing)}; "
        f"unexpected keys: {show(unexpected)}"
    )


def _blocks() -> tuple[type[nn.Module], type[nn.Module]]:
    """timm's Xception ``Block`` and ``SeparableConv2d`` (the reference's ``model/common.py`` ones)."""
    from timm.models.xception import Block, SeparableConv2d

    return Block, SeparableConv2d


def _up_separable(in_channels: int, out_channels: int) -> nn.Sequential:
    """``decoder1/3/5``: nearest x2, separable 3x3 (no bias), BatchNorm, ReLU."""
    _, separable = _blocks()
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        separable(in_channels, out_channels, 3, 1, 1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class GraphReasoning(nn.Module):
    """The reference's graph reasoning over vertex A (one per position of ``vert_a``) and the
    ``r x r`` neighbourhoods of B and C (maps ``r`` times larger), vectorised over positions.

    Per position: B's (C's) neighbours are embedded, weighted by ``softmax(relu(
    Linear([emb_a, emb_b])))`` over the neighbourhood, summed and gated by ``1 -
    sigmoid(conv(vert_a))``; ``[agg_b, agg_c, emb_a]`` goes through a sigmoid and a
    two-layer 1x1 re-projection back to ``vert_a``'s width.
    """

    def __init__(
        self,
        va_in: int = MIDDLE_WIDTH,
        va_out: int = 256,
        vb_in: int = 256,
        vb_out: int = 256,
        vc_in: int = 128,
        vc_out: int = 256,
        spatial_ratio: Sequence[int] = (2, 4),
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.ratio = tuple(int(r) for r in spatial_ratio)

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 1, bias=False)

        def mlp(cin: int, cout: int, layer: Callable[..., nn.Module]) -> nn.Sequential:
            return nn.Sequential(
                layer(cin, cout, bias=False), nn.ReLU(True), layer(cout, cout, bias=False)
            )

        self.va_embedding = nn.Sequential(conv(va_in, va_out), nn.ReLU(True), conv(va_out, va_out))
        self.va_gated_b = nn.Sequential(conv(va_in, va_out), nn.Sigmoid())
        self.va_gated_c = nn.Sequential(conv(va_in, va_out), nn.Sigmoid())
        self.vb_embedding = mlp(vb_in, vb_out, nn.Linear)
        self.vc_embedding = mlp(vc_in, vc_out, nn.Linear)
        self.reweight_ab = nn.Sequential(
            nn.Linear(va_out + vb_out, 1, bias=False), nn.ReLU(True), nn.Softmax(dim=1)
        )
        self.reweight_ac = nn.Sequential(
            nn.Linear(va_out + vc_out, 1, bias=False), nn.ReLU(True), nn.Softmax(dim=1)
        )
        self.reproject = nn.Sequential(
            conv(va_out + vb_out + vc_out, va_in),
            nn.ReLU(True),
            conv(va_in, va_in),
            nn.Dropout(drop_rate),
        )

    @staticmethod
    def _aggregate(
        emb_a: torch.Tensor,
        vert: torch.Tensor,
        ratio: int,
        embedding: nn.Module,
        reweight: nn.Module,
        gate: torch.Tensor,
    ) -> torch.Tensor:
        """(B, Ca, N) vertex A, (B, C, rH, rW) map -> the gated (B, C', N) aggregation."""
        batch, channels, n = emb_a.shape[0], vert.shape[1], emb_a.shape[2]
        neighbours = F.unfold(vert, kernel_size=ratio, stride=ratio)  # (B, C*r*r, N)
        neighbours = neighbours.reshape(batch, channels, ratio * ratio, n).permute(0, 3, 2, 1)
        emb = embedding(neighbours).reshape(batch * n, ratio * ratio, -1)  # (B*N, r*r, C')
        anchor = emb_a.transpose(1, 2).reshape(batch * n, 1, -1).expand(-1, ratio * ratio, -1)
        weights = reweight(torch.cat([anchor, emb], dim=-1))  # softmax over the r*r neighbours
        aggregated = (emb * weights).sum(dim=1).reshape(batch, n, -1).transpose(1, 2)
        return aggregated * gate

    def forward(
        self, vert_a: torch.Tensor, vert_b: torch.Tensor, vert_c: torch.Tensor
    ) -> torch.Tensor:
        batch, _, height, width = vert_a.shape
        expected = [(height * r, width * r) for r in self.ratio]
        if [tuple(vert_b.shape[-2:]), tuple(vert_c.shape[-2:])] != expected:
            raise ValueError(
                f"GraphReasoning needs maps {expected} for vertex A {(height, width)}, got "
                f"{tuple(vert_b.shape[-2:])} and {tuple(vert_c.shape[-2:])}"
            )
        emb_a = self.va_embedding(vert_a).flatten(2)  # (B, Ca, N)
        gate_b = 1 - self.va_gated_b(vert_a).flatten(2)
        gate_c = 1 - self.va_gated_c(vert_a).flatten(2)
        agg_b = self._aggregate(
            emb_a, vert_b, self.ratio[0], self.vb_embedding, self.reweight_ab, gate_b
        )
        agg_c = self._aggregate(
            emb_a, vert_c, self.ratio[1], self.vc_embedding, self.reweight_ac, gate_c
        )
        fused = torch.sigmoid(torch.cat([agg_b, agg_c, emb_a], dim=1))
        return self.reproject(fused.reshape(batch, -1, height, width))


class GuidedAttention(nn.Module):
    """Reconstruction-guided attention: ``gate(|x - x_rec|) * h(f) + dropout(f)``."""

    def __init__(self, depth: int = MIDDLE_WIDTH, drop_rate: float = 0.2) -> None:
        super().__init__()
        self.gated = nn.Sequential(
            nn.Conv2d(3, 3, kernel_size=3, stride=1, padding=1, bias=False),
            nn.ReLU(True),
            nn.Conv2d(3, 1, 1, bias=False),
            nn.Sigmoid(),
        )
        self.h = nn.Sequential(
            nn.Conv2d(depth, depth, 1, 1, bias=False), nn.BatchNorm2d(depth), nn.ReLU(True)
        )
        self.dropout = nn.Dropout(drop_rate)

    def forward(
        self, images: torch.Tensor, reconstruction: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        residual = torch.abs(images - reconstruction)
        residual = F.interpolate(
            residual, size=embedding.shape[-2:], mode="bilinear", align_corners=True
        )
        return self.gated(residual) * self.h(embedding) + self.dropout(embedding)


def pairwise_similarity(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, B) ``(cos + 1) / 2`` of the globally pooled features."""
    pooled = F.normalize(features.float().mean(dim=(2, 3)), dim=1)
    return (pooled @ pooled.T + 1.0) / 2.0


def metric_learning_loss(
    similarities: Sequence[torch.Tensor], labels: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """The reference's ``MLLoss``: sum of ``max(0, 1 - mean s(real, real') + mean s(real, fake))``."""
    labels = labels.reshape(-1) > 0.5
    eye = torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)
    different = (labels[:, None] ^ labels[None, :]).float()
    both_real = (~(labels[:, None] | labels[None, :] | eye)).float()
    loss = labels.new_zeros((), dtype=torch.float32)
    for sim in similarities:
        diff = (sim * different).sum() / (different.sum() + eps)
        same = (sim * both_real).sum() / (both_real.sum() + eps)
        loss = loss + torch.clamp(1.0 - same + diff, min=0.0)
    return loss


def reconstruction_loss(
    reconstruction: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean absolute error over the real images of the batch (0 when there are none)."""
    real = labels.reshape(-1) < 0.5
    if not bool(real.any()):
        return reconstruction.new_zeros((), dtype=torch.float32)
    return (reconstruction[real].float() - images[real].float()).abs().mean()


class Recce(Detector):
    """RECCE: Xception encoder, real-face decoder, graph reasoning, guided attention, one logit.

    Args:
        pretrained_file: local ImageNet Xception weights (``xception-b5690688.pth``);
            ``None`` starts from random weights (the references start from ImageNet).
        drop_rate: dropout of the embedding, attention, re-projection and head (0.2).
        lambda_recons, lambda_metric: weights of the reconstruction and metric losses (0.1).
        flood_level: flooding of the classification loss (0.04; 0 turns it off).
        input_noise_std: std of the white noise added to half the training inputs (1e-6).
        preprocessing: fields over DeepfakeBench's defaults.
        optimizer: default Adam(lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 5e-4).
        scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        drop_rate: float = 0.2,
        lambda_recons: float = 0.1,
        lambda_metric: float = 0.1,
        flood_level: float = 0.04,
        input_noise_std: float = 1e-6,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        block, _ = _blocks()
        self.lambda_recons = float(lambda_recons)
        self.lambda_metric = float(lambda_metric)
        self.flood_level = float(flood_level)
        self.input_noise_std = float(input_noise_std)
        self.encoder = xception_backbone(pretrained_file=pretrained_file)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(XCEPTION_FEATURES, 1)
        self.attention = GuidedAttention(MIDDLE_WIDTH, drop_rate)
        self.reasoning = GraphReasoning(MIDDLE_WIDTH, 256, 256, 256, 128, 256, (2, 4), drop_rate)
        self.decoder1 = _up_separable(MIDDLE_WIDTH, 256)
        self.decoder2 = block(256, 256, 3, 1)
        self.decoder3 = _up_separable(256, 128)
        self.decoder4 = block(128, 128, 3, 1)
        self.decoder5 = _up_separable(128, 64)
        self.decoder6 = nn.Sequential(nn.Conv2d(64, 3, 1, 1, bias=False), nn.Tanh())

    def _white_noise(self, images: torch.Tensor) -> torch.Tensor:
        """Training only: N(0, std) noise on a random half of the images, clipped to [-1, 1]."""
        chosen = (torch.rand(images.shape[0], 1, 1, 1, device=images.device) > 0.5).to(images)
        noise = torch.randn_like(images) * self.input_noise_std
        return torch.clamp(images + noise * chosen, -1.0, 1.0)

    def run(self, images: torch.Tensor) -> dict[str, Any]:
        """Logits (B,), the (B, 3, H, W) reconstruction and the three (B, B) similarity matrices."""
        enc = self.encoder
        x = self._white_noise(images) if self.training else images
        x = enc.act1(enc.bn1(enc.conv1(x)))
        x = enc.act2(enc.bn2(enc.conv2(x)))
        embedding = enc.block4(enc.block3(enc.block2(enc.block1(x))))

        out_d2 = self.decoder2(self.decoder1(self.dropout(embedding)))
        out_d4 = self.decoder4(self.decoder3(out_d2))
        decoded = self.decoder6(self.decoder5(out_d4))
        reconstruction = F.interpolate(
            decoded, size=images.shape[-2:], mode="bilinear", align_corners=True
        )
        similarities = [pairwise_similarity(f) for f in (embedding, out_d2, out_d4)]

        embedding = enc.block7(enc.block6(enc.block5(embedding)))
        embedding = self.reasoning(embedding, out_d2, out_d4) + embedding
        embedding = self.attention(images, reconstruction, enc.block8(embedding))
        embedding = enc.block12(enc.block11(enc.block10(enc.block9(embedding))))
        embedding = enc.act3(enc.bn3(enc.conv3(embedding)))
        embedding = enc.act4(enc.bn4(enc.conv4(embedding)))
        pooled = self.dropout(embedding.mean(dim=(2, 3)))
        return {
            "logits": self.fc(pooled).squeeze(1),
            "reconstruction": reconstruction,
            "similarities": similarities,
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.run(batch["image"])
        return {"logits": out["logits"], "reconstruction": out["reconstruction"]}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["label"]
        out = self.run(images)
        cls = F.binary_cross_entropy_with_logits(out["logits"].float(), labels.float())
        flooded = (cls - self.flood_level).abs() + self.flood_level if self.flood_level else cls
        recons = reconstruction_loss(out["reconstruction"], images, labels)
        metric = metric_learning_loss(out["similarities"], labels)
        return {
            "loss": flooded + self.lambda_recons * recons + self.lambda_metric * metric,
            "loss_cls": cls.detach(),
            "loss_recons": recons.detach(),
            "loss_metric": metric.detach(),
        }

    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench ``recce_best.pth``, an official RECCE checkpoint or a deepsift state dict."""
        state = read_state_dict(path)
        source = f"weights file {path}"
        own = list(self.state_dict())
        official = [*own, *ENCODER_IMAGENET_HEAD]
        deepfakebench = any(k.startswith("model.") for k in state)
        if deepfakebench:
            backbone = [*self.encoder.state_dict(), *DEEPFAKEBENCH_XCEPTION_EXTRA]
            expected = [f"model.{k}" for k in official] + [f"backbone.{k}" for k in backbone]
            check_key_set(state, expected, source, "DeepfakeBench recce_best.pth")
            state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
            log.info("RECCE: DeepfakeBench checkpoint %s (its unused backbone.* dropped)", path)
        elif any(k in state for k in ENCODER_IMAGENET_HEAD):
            check_key_set(state, official, source, "official RECCE")
            log.info("RECCE: official checkpoint %s", path)
        else:
            load_state_dict_strict(self, state, source)
            return
        mapped = {k: state[k] for k in own if k not in ("fc.weight", "fc.bias")}
        mapped["fc.weight"], mapped["fc.bias"] = fake_logit_head(
            state["fc.weight"], state["fc.bias"], source
        )
        load_state_dict_strict(self, mapped, source)
        if deepfakebench:  # DeepfakeBench's test input (the defaults; a user's setting wins)
            self.use_protocol(
                "DeepfakeBench", DEEPFAKEBENCH_FACE_PREPROCESSING, DEFAULT_PREPROCESSING
            )
        else:  # the authors' inference.py input; a user's setting wins
            self.use_protocol("RECCE (VISION-SJTU)", OFFICIAL_PREPROCESSING, DEFAULT_PREPROCESSING)

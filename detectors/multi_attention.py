"""Multi-Attention: multi-attentional deepfake detection on an EfficientNet-B4.

After H. Zhao, T. Wei, W. Zhou, W. Zhang, D. Chen and N. Yu, "Multi-attentional
Deepfake Detection", CVPR 2021 (github.com/yoctta/multiple-attention), as
DeepfakeBench ports it (commit 8a4a7bf): ``training/detectors/
multi_attention_detector.py``, ``training/loss/region_independent_loss.py``,
``training/networks/efficientnetb4.py``, ``training/config/detector/multi_attention.yaml``.

Network (DeepfakeBench's): an efficientnet_pytorch EfficientNet-B4 whose stem is
an unpadded ``nn.Conv2d(3, 48, 3, 2)``, walked child by child, so the stem's and
the head's batch norms are *not* followed by swish (``_swish`` comes after
``_avg_pooling`` in the module order, where the walk stops) and blocks run
without drop-connect. The shallow features are block 5's output (``b2``, 32
channels, stride 4), the attention features block 21's (``b5``, 160 channels,
stride 16), the final features the head batch norm's (1792 channels).

* **attention maps** (``attention_generation``): 3x3 conv, BN, ReLU, 1x1 conv to
  M = 4 maps, BN, ``elu + 1``, times a 24 x 24 border mask (2 px zeroed) resized
  (nearest) to the map size;
* **textural enhancement** (``texture_enhance``, TextureEnhanceV1): shallow
  features minus their average-pooled (to the attention size) copy, a 4-layer
  dense block (1x1 conv, then BN-ReLU-3x3 conv on the concatenations), BN-ReLU-
  1x1 conv to 4 x 32 channels, BN;
* **bilinear attention pooling**: ``einsum(attention, features)`` per map,
  L2-normalised (textural matrix, M x 128), and the summed attention's weighted
  average of the final features (global feature);
* **ensemble classifier**: dropout 0.25 on the textural matrix, ``projection_local``
  (Linear-Hardswish-Linear-Hardswish, 512 -> 256), ``projection_final``
  (Linear-Hardswish, then another hardswish), concatenated, Linear-Hardswish-Linear.

Training (DeepfakeBench): for the first ``backbone_nEpochs`` x ``batch_per_epoch``
= 10 x 3591 batches only the EfficientNet with its own ``last_layer`` head is
trained (cross-entropy); afterwards each batch is first augmented by AGDA
(attention-guided data augmentation: one attention map drawn per image with
probability ~ sqrt(1 + its sum), normalised to max 1, squashed by
``(sigmoid((a - t) z) - sigmoid(-t z)) / (1 - sigmoid(-t z))`` with t ~ U(0.4, 0.6),
z ~ U(3, 5), used to blend the image with its half-size, Gaussian-blurred
(11 x 11, sigma 7, reflect border), noised (0.1 N(0, 1)), re-upsampled copy), then
trained with cross-entropy on the ensemble plus the region independence loss
(feature centres of the attention-pooled texture (M x 32) moved by alpha = 0.05,
decayed x 0.9 every 3591 batches; intra-class margins 0.05 (real) / 0.1 (fake),
inter-class margin 0.2), weights 1 : 1. 256 x 256 faces, mean = std = 0.5, no
augmentation (``use_data_augmentation: false``), ImageNet
``efficientnet-b4-6ed6700e.pth`` init (the replaced stem stays random), Adam lr 2e-4,
weight decay 1e-6, StepLR step 5 gamma 0.5, 50 epochs, batch 32.

Test time: the paper's prediction is the ensemble classifier (``head="ensemble"``).
DeepfakeBench counts batches in ``forward`` whether training or not, so a model
freshly built by its ``test.py`` scores the first 35,910 batches with the
backbone's ``last_layer`` instead; ``head="backbone"`` reproduces those numbers.

Where deepsift differs: one fake logit per head (the 2-class layers load as
``w[1] - w[0]``: the same probability) and BCE (equal to the 2-class
cross-entropy on ``z1 - z0``); the warm-up length is counted in training steps
(``backbone_steps``), not in ``forward`` calls; the stem gets the ImageNet weights
when ``pretrained_file`` is given; the Gaussian blur is written here (kornia's
``GaussianBlur2d`` kernel and border); the region-independence centres are a
non-persistent buffer, as in DeepfakeBench where the loss is not in the state dict.

DeepfakeBench's ``multi_attention_best.pth`` (``backbone.efficientnet.*``,
``backbone.last_layer.*``, ``attention_generation.*``, ``texture_enhance.*``,
``projection_local.*``, ``projection_final.*``, ``ensemble_classifier_fc.*``)
loads strictly and brings DeepfakeBench's test-time input.

Verified against DeepfakeBench's code (``tests/official/make_multi_attention.py``,
efficientnet-pytorch 0.7.1): ``MultiAttentionDetector`` on the reference pictures
through its data pipeline gives the same logits to 1e-5, with both heads. In a scratch
run (kornia 0.9.0, not a test: kornia is not a dependency), :func:`agda` with the same
seeds, :func:`gaussian_blur` and :class:`RegionIndependenceLoss` over five steps with
alpha decay equalled DeepfakeBench's ``AGDA``, kornia's ``GaussianBlur2d`` and
``RegionIndependentLoss`` exactly.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.efficientnet import (
    B4_FEATURES,
    convert_efficientnet_pytorch_keys,
    efficientnet_b4_backbone,
)
from detectors.layers.heads import fake_logit_head, fill_num_batches_tracked
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: DeepfakeBench multi_attention.yaml: 256 x 256 faces, mean = std = 0.5, no augmentation
DEFAULT_PREPROCESSING: dict[str, Any] = dict(DEEPFAKEBENCH_FACE_PREPROCESSING)
#: DeepfakeBench's test-time input
DEEPFAKEBENCH_PROTOCOL: dict[str, Any] = {**DEEPFAKEBENCH_FACE_PREPROCESSING, "resize_to": 256}
#: DeepfakeBench's block_layer: the block index whose output each name is
BLOCK_LAYER = {"b1": 1, "b2": 5, "b3": 9, "b4": 15, "b5": 21, "b6": 29, "b7": 31}
#: output channels of those blocks in EfficientNet-B4
BLOCK_CHANNELS = {"b1": 24, "b2": 32, "b3": 56, "b4": 112, "b5": 160, "b6": 272, "b7": 448}
HEADS = ("ensemble", "backbone")
#: DeepfakeBench: backbone_nEpochs x batch_per_epoch
BACKBONE_STEPS = 10 * 3591


def bn_without_act(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """timm's BatchNormAct2d as a plain batch norm (efficientnet_pytorch's ``_bn0``/``_bn1``)."""
    return nn.BatchNorm2d.forward(bn, x)


class AttentionMap(nn.Module):
    """M attention maps: conv3x3-BN-ReLU-conv1x1-BN, ``elu + 1``, border mask."""

    def __init__(self, in_channels: int, num_attentions: int) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, 24, 24)
        mask[0, 0, 2:-2, 2:-2] = 1
        self.register_buffer("mask", mask)
        self.num_attentions = num_attentions
        self.conv_extract = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, num_attentions, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(num_attentions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv_extract(x)))
        x = F.elu(self.bn2(self.conv2(x))) + 1
        return x * F.interpolate(self.mask, x.shape[2:], mode="nearest")


def attention_pooling(features: torch.Tensor, attentions: torch.Tensor, norm: int) -> torch.Tensor:
    """Bilinear attention pooling: (B, M, C); ``norm`` 2 = L2 per map, 1 = attention-weighted mean."""
    if features.shape[-2:] != attentions.shape[-2:]:
        attentions = F.interpolate(
            attentions, size=features.shape[-2:], mode="bilinear", align_corners=True
        )
    matrix = torch.einsum("bmhw,bchw->bmc", attentions, features)
    if norm == 1:
        return matrix / (attentions + 1e-8).sum(dim=(2, 3)).unsqueeze(-1)
    return F.normalize(matrix, p=2, dim=-1)


class TextureEnhance(nn.Module):
    """DeepfakeBench's TextureEnhanceV1: residual of local averages, 4-layer dense block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        n = channels
        self.output_features = 4 * n
        self.conv0 = nn.Conv2d(n, n, 1)
        self.conv1 = nn.Conv2d(n, n, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(n)
        self.conv2 = nn.Conv2d(2 * n, n, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * n)
        self.conv3 = nn.Conv2d(3 * n, n, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(3 * n)
        self.conv_last = nn.Conv2d(4 * n, 4 * n, 1)
        self.bn4 = nn.BatchNorm2d(4 * n)
        self.bn_last = nn.BatchNorm2d(4 * n)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(enhanced (B, 4C, H, W), local averages D (B, C, *size))."""
        d = F.adaptive_avg_pool2d(x, size)
        x = x - F.interpolate(d, x.shape[2:], mode="nearest")
        f0 = self.conv0(x)
        f1 = torch.cat([f0, self.conv1(F.relu(self.bn1(f0)))], dim=1)
        f2 = torch.cat([f1, self.conv2(F.relu(self.bn2(f1)))], dim=1)
        f3 = torch.cat([f2, self.conv3(F.relu(self.bn3(f2)))], dim=1)
        return self.bn_last(self.conv_last(F.relu(self.bn4(f3)))), d


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """kornia's ``GaussianBlur2d((k, k), (s, s))``: separable, normalised, reflect border."""
    grid = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - kernel_size // 2
    if kernel_size % 2 == 0:
        grid = grid + 0.5
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    pad = kernel_size // 2
    x = F.pad(x, (pad, kernel_size - 1 - pad, pad, kernel_size - 1 - pad), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def agda(
    x: torch.Tensor,
    attentions: torch.Tensor,
    kernel_size: int = 11,
    sigma: float = 7.0,
    threshold: tuple[float, float] = (0.4, 0.6),
    zoom: tuple[float, float] = (3.0, 5.0),
    scale_factor: float = 0.5,
    noise_rate: float = 0.1,
) -> torch.Tensor:
    """Attention-guided data augmentation: blend each image with a blurred, noised copy."""
    with torch.no_grad():
        weight = torch.sqrt(attentions.sum(dim=(2, 3)) + 1)
        index = torch.distributions.Categorical(weight).sample()
        maps = F.interpolate(attentions, x.shape[2:], mode="bilinear", align_corners=True)
        maps = maps.gather(1, index.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:]))
        maps = maps / (maps.flatten(1).amax(dim=1) + 1e-8).view(-1, 1, 1, 1)
        t, z = random.uniform(*threshold), random.uniform(*zoom)
        bottom = torch.sigmoid((torch.tensor(0.0) - t) * z).to(maps)  # DeepfakeBench's order
        maps = (torch.sigmoid((maps - t) * z) - bottom) / (1 - bottom)
        small = F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=True)
        small = gaussian_blur(small, kernel_size, sigma)
        small = small + torch.randn_like(small) * noise_rate
        small = F.interpolate(small, x.shape[2:], mode="bilinear", align_corners=True)
        return x * (1 - maps) + small * maps


class RegionIndependenceLoss(nn.Module):
    """DeepfakeBench's RegionIndependentLoss, centres as a non-persistent buffer."""

    def __init__(
        self,
        num_attentions: int,
        channels: int,
        alpha: float = 0.05,
        alpha_decay: float = 0.9,
        decay_steps: int = 3591,
        inter_margin: float = 0.2,
        intra_margin: tuple[float, float] = (0.05, 0.1),
    ) -> None:
        super().__init__()
        self.register_buffer("centers", torch.zeros(num_attentions, channels), persistent=False)
        self.register_buffer("intra_margin", torch.tensor(intra_margin), persistent=False)
        self.alpha, self.alpha_decay, self.decay_steps = alpha, alpha_decay, decay_steps
        self.inter_margin = inter_margin
        self.steps = 0

    def forward(
        self, features_d: torch.Tensor, attentions: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        m = attentions.shape[1]
        matrix = attention_pooling(features_d, attentions, norm=2)  # (B, M, C)
        centers = (self.centers + self.alpha * (matrix.detach() - self.centers).mean(0)).detach()
        self.centers.copy_(centers)
        margins = self.intra_margin[labels.long()].unsqueeze(1)
        intra = F.relu(torch.linalg.vector_norm(matrix - centers, dim=-1) - margins).mean()
        inter = matrix.new_zeros(())
        for i in range(m):
            for j in range(i + 1, m):
                inter = inter + F.relu(self.inter_margin - torch.dist(centers[i], centers[j]))
        loss = inter / m / self.alpha + intra
        self.steps += 1
        if self.steps % self.decay_steps == 0:
            self.alpha *= self.alpha_decay
        return loss


class MultiAttention(Detector):
    """EfficientNet-B4 with attention maps, textural enhancement and bilinear attention pooling.

    Args:
        pretrained_file: local ImageNet EfficientNet-B4 (``efficientnet-b4-6ed6700e.pth``).
        feature_layer, attention_layer: block outputs (``b1`` ... ``b7``) for the
            shallow and attention features (DeepfakeBench: ``b2``, ``b5``).
        num_attentions: M attention maps (4).
        mid_dim: width of the projections (256).
        dropout_rate: dropout on the textural feature matrix (0.25).
        head: ``"ensemble"`` (the paper) or ``"backbone"`` (DeepfakeBench's test.py).
        backbone_steps: training steps on the backbone head alone before the full
            model, AGDA and the region independence loss (DeepfakeBench 35,910).
        ril_weight: weight of the region independence loss (1).
        padding: the EfficientNet's strided-convolution padding (see
            :func:`~detectors.layers.efficientnet.efficientnet_b4_backbone`).
        preprocessing, optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        feature_layer: str = "b2",
        attention_layer: str = "b5",
        num_attentions: int = 4,
        mid_dim: int = 256,
        dropout_rate: float = 0.25,
        head: str = "ensemble",
        backbone_steps: int = BACKBONE_STEPS,
        ril_weight: float = 1.0,
        padding: str = "static",
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        for option, value in (
            ("feature_layer", feature_layer),
            ("attention_layer", attention_layer),
        ):
            if value not in BLOCK_LAYER:
                raise UserError(
                    f"detector.{option} must be one of {', '.join(BLOCK_LAYER)}, not {value!r}"
                )
        if head not in HEADS:
            raise UserError(f"detector.head must be one of {', '.join(HEADS)}, not {head!r}")
        if optimizer is None:  # multi_attention.yaml: Adam lr 2e-4, eps 1e-8, weight decay 1e-6
            optimizer = functools.partial(
                torch.optim.Adam, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-6
            )
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.feature_layer, self.attention_layer = feature_layer, attention_layer
        self.head, self.backbone_steps, self.ril_weight = head, backbone_steps, ril_weight
        self.steps = 0
        self.backbone = efficientnet_b4_backbone(
            pretrained_file, padding=padding, stem_padding="valid", drop_path_rate=0.0
        )
        self.backbone_head = nn.Linear(B4_FEATURES, 1)
        shallow, deep = BLOCK_CHANNELS[feature_layer], BLOCK_CHANNELS[attention_layer]
        self.attention_generation = AttentionMap(deep, num_attentions)
        self.texture_enhance = TextureEnhance(shallow)
        enhanced = self.texture_enhance.output_features
        self.projection_local = nn.Sequential(
            nn.Linear(num_attentions * enhanced, mid_dim),
            nn.Hardswish(),
            nn.Linear(mid_dim, mid_dim),
            nn.Hardswish(),
        )
        self.projection_final = nn.Sequential(nn.Linear(B4_FEATURES, mid_dim), nn.Hardswish())
        self.ensemble_classifier_fc = nn.Sequential(
            nn.Linear(2 * mid_dim, mid_dim), nn.Hardswish(), nn.Linear(mid_dim, 1)
        )
        self.dropout = nn.Dropout(dropout_rate)
        self.ril = RegionIndependenceLoss(num_attentions, shallow)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """DeepfakeBench's walk: stem BN without swish, blocks, head BN without swish."""
        wanted = {BLOCK_LAYER[self.feature_layer], BLOCK_LAYER[self.attention_layer]}
        out: dict[str, torch.Tensor] = {}
        x = bn_without_act(self.backbone.bn1, self.backbone.conv_stem(x))
        index = 0
        for stage in self.backbone.blocks:
            for block in stage:
                x = block(x)
                if index in wanted:
                    out[f"block{index}"] = x
                index += 1
        out["final"] = bn_without_act(self.backbone.bn2, self.backbone.conv_head(x))
        return out

    def ensemble(self, layers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        attentions = self.attention_generation(layers[f"block{BLOCK_LAYER[self.attention_layer]}"])
        shallow = layers[f"block{BLOCK_LAYER[self.feature_layer]}"]
        enhanced, features_d = self.texture_enhance(shallow, attentions.shape[2:])
        local = self.projection_local(
            self.dropout(attention_pooling(enhanced, attentions, norm=2)).flatten(1)
        )
        pooled = attention_pooling(layers["final"], attentions.sum(1, keepdim=True), norm=1)
        final = F.hardswish(self.projection_final(pooled.squeeze(1)))
        logits = self.ensemble_classifier_fc(torch.cat([local, final], dim=1)).squeeze(1)
        return {"logits": logits, "attentions": attentions, "features_d": features_d}

    def backbone_logits(self, layers: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone_head(layers["final"].mean(dim=(2, 3))).squeeze(1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        layers = self.features(batch["image"])
        if self.head == "backbone":
            return {"logits": self.backbone_logits(layers)}
        return self.ensemble(layers)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.steps += 1
        labels = batch["label"].float()
        if self.steps <= self.backbone_steps:
            logits = self.backbone_logits(self.features(batch["image"]))
            return {"loss": F.binary_cross_entropy_with_logits(logits.float(), labels)}
        with torch.no_grad():
            layers = self.features(batch["image"])
            attentions = self.attention_generation(
                layers[f"block{BLOCK_LAYER[self.attention_layer]}"]
            )
            image = agda(batch["image"], attentions)
        out = self.ensemble(self.features(image))
        bce = F.binary_cross_entropy_with_logits(out["logits"].float(), labels)
        ril = self.ril(out["features_d"].float(), out["attentions"].float(), batch["label"])
        return {"loss": bce + self.ril_weight * ril, "bce": bce.detach(), "ril": ril.detach()}

    def load_weights(self, path: str | Path) -> None:
        """Load ``multi_attention_best.pth`` (DeepfakeBench) or a deepsift file strictly."""
        source = f"weights file {path}"
        raw = strip_prefixes(read_state_dict(path), ("module.",))
        deepfakebench = "backbone.efficientnet._conv_stem.weight" in raw
        state = fill_num_batches_tracked(multi_attention_state(raw, source), self.state_dict())
        load_state_dict_strict(self, state, source)
        log.info("MultiAttention: loaded %s", path)
        if deepfakebench:
            self.use_protocol("DeepfakeBench", DEEPFAKEBENCH_PROTOCOL, DEFAULT_PREPROCESSING)


def multi_attention_state(state: Mapping[str, Any], source: str) -> dict[str, Any]:
    """DeepfakeBench's MultiAttentionDetector state dict in :class:`MultiAttention`'s layout.

    ``backbone.efficientnet.*`` -> ``backbone.*`` (timm names), the 2-class
    ``backbone.last_layer`` and ``ensemble_classifier_fc.2`` -> fake-logit rows.
    A deepsift state dict (``backbone_head.*``) passes unchanged; other keys are kept,
    so that strict loading names them.
    """
    state = strip_prefixes(state, ("module.",))
    if "backbone_head.weight" in state:
        return dict(state)
    prefix = "backbone.efficientnet."
    network = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    network = {k: v for k, v in network.items() if not k.startswith("_fc.")}
    heads = ("backbone.last_layer.", "ensemble_classifier_fc.2.")
    out = {k: v for k, v in state.items() if not k.startswith((prefix, *heads))}
    out.update({f"backbone.{k}": v for k, v in convert_efficientnet_pytorch_keys(network).items()})
    for head, target in zip(heads, ("backbone_head.", "ensemble_classifier_fc.2."), strict=True):
        if f"{head}weight" in state:
            out[f"{target}weight"], out[f"{target}bias"] = fake_logit_head(
                state[f"{head}weight"], state.get(f"{head}bias"), source
            )
    return out

"""UCF: content / fingerprint disentanglement on two Xceptions, for face forgeries.

After Z. Yan, Y. Zhang, Y. Fan and B. Wu, "UCF: Uncovering Common Features for
Generalizable Deepfake Detection", ICCV 2023. Reference code: DeepfakeBench (the
authors' own benchmark), github.com/SCLBD/DeepfakeBench at 8a4a7bf,
``training/detectors/ucf_detector.py``, ``training/config/detector/ucf.yaml``,
``training/networks/xception.py``, ``training/loss/contrastive_regularization.py``,
``training/loss/l1_loss.py``, ``training/dataset/pair_dataset.py``.

Architecture (``UCFDetector``): two DeepfakeBench Xceptions in ``adjust_channel``
mode (the ImageNet Xception up to ``bn4``, *no* ReLU, then ``adjust_channel``: 1x1
conv 2048 -> 512, BatchNorm, ReLU; (B, 512, H/32, W/32)): ``encoder_f`` (forgery)
and ``encoder_c`` (content). The forgery map is split by two 1x1-conv MLPs
(``block_spe``, ``block_sha``: 512 -> 256 -> 256 -> 256, LeakyReLU) into a
method-*specific* and a *common* (shared) fingerprint; each is globally pooled and
classified by a ``Head`` (Linear 256 -> 512, LeakyReLU, Linear, then dropout 0.2 on
the *logits*): ``head_sha`` two classes (real / fake), ``head_spe`` the methods + real
(5 on FF++). A conditional decoder (``con_gan``: AdaIN of the content by the
fingerprint's channel statistics, three bilinear x2 up-sampling + dropout 0.3 +
double-conv stages 512 -> 256 -> 128 -> 64, the fingerprint going through the same
stages, a 1x1 conv to RGB, bilinear x4, ``tanh``) rebuilds images from a fingerprint
``[specific, common]`` and a content map.

**Test time** (``forward(..., inference=True)``): only ``encoder_f``, ``block_sha``
and ``head_sha`` matter; the score is ``softmax(head_sha)[:, 1]``, so deepsift's
fake logit is ``head_sha[:, 1] - head_sha[:, 0]`` (the same probability) and
``encoder_c``, ``block_spe``, ``head_spe`` and the decoder are not run.

**Training** (:meth:`UCF.training_step`, DeepfakeBench's ``get_train_losses``) on a
batch of ``n`` reals then ``n`` fakes (DeepfakeBench's ``pairDataset``; deepsift
reorders the batch and keeps ``min(#real, #fake)`` of each):

* with probability 0.7 the common fingerprints are shuffled among the reals and
  among the fakes (``shuffle_prob``);
* ``L_sha`` = cross-entropy of ``head_sha`` on real / fake, ``L_spe`` = cross-entropy
  of ``head_spe`` on the method label (0 real, 1 + the index of the record's
  ``generator`` in ``methods``; FF++: Deepfakes 1, Face2Face 2, FaceSwap 3,
  NeuralTextures 4, as ``ucf.yaml``'s ``label_dict``);
* ``L_rec`` = the sum of four L1 (mean) reconstruction errors: each image from its own
  fingerprint and content, and fake from (real fingerprint, fake content), real from
  (fake fingerprint, real content), exactly as the reference pairs them;
* ``L_con`` = DeepfakeBench's ``ContrastiveLoss(margin=3)``: triplet margins on the
  pooled common features (anchor: a shuffled same-class sample, negative: a shuffled
  other-class one) and on the pooled specific features (positive: a shuffled sample of
  the same method);
* ``L = L_sha + 0.1 L_spe + 0.3 L_rec + 0.05 L_con``.

Reference defaults (``ucf.yaml``): 256 x 256 faces (``cv2.resize`` INTER_CUBIC on the
uint8 crop), mean = std = 0.5; augmentation: flip 0.5, rotation +-10 (p 0.5),
Blur 3-7 (p 0.5), brightness / contrast +-0.1 (p 0.5), JPEG quality 40-100; both
encoders start from the ImageNet Xception ``xception-b5690688.pth``; Adam lr 2e-4,
betas (0.9, 0.999), eps 1e-8, weight decay 5e-4, no scheduler, 5 epochs, batch 16
pairs (32 images), FF++ c23 with its four methods.

Where deepsift differs, and why:

* The brief of this zoo entry spoke of EfficientNet-B4 encoders; DeepfakeBench's
  ``ucf.yaml`` (whose ``ucf_best.pth`` this loads) builds ``backbone_name: xception``,
  ``encoder_feat_dim: 512``: the code wins.
* Augmentation: horizontal flip and JPEG (40-100, p 0.5) only; the rotation, box blur
  and brightness / contrast jitter of DeepfakeBench's albumentations pipeline are not
  in deepsift's preprocessing.
* Batches are not built in pairs: ``training_step`` sorts each batch into reals then
  fakes and uses ``min(#real, #fake)`` of each; a batch with no real or no fake gets
  only the two classification losses (the reconstruction and contrastive terms need
  both).
* The unused ``last_linear`` of both DeepfakeBench Xceptions (2048 -> 2, never called
  by UCF) is not built; a DeepfakeBench file's is checked for its shape and dropped.
* ImageNet initialisation only from a local file (``pretrained_file``).

:meth:`UCF.load_weights` loads DeepfakeBench's ``ucf_best.pth`` (the
``UCFDetector`` state dict, ``module.``-prefixed or not) with strict key matching and
switches to DeepfakeBench's test input (a preprocessing the user set still wins);
deepsift's own state dicts have the same names without ``last_linear``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.methods import FFPP_METHODS, method_label
from detectors.layers.xception import XCEPTION_FEATURES, xception_backbone
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: DeepfakeBench's test input; in training flip and JPEG 40-100 (see the module docstring)
DEFAULT_PREPROCESSING: dict[str, Any] = {
    **DEEPFAKEBENCH_FACE_PREPROCESSING,
    "hflip": 0.5,
    "jpeg_prob": 0.5,
    "jpeg_quality": (40, 100),
}
#: the encoders' unused 2-class classifier in a DeepfakeBench file
ENCODER_HEAD_KEYS = ("last_linear.weight", "last_linear.bias")


def dfb_xception_encoder(pretrained_file: str | None, feat_dim: int = 512) -> nn.Module:
    """timm ``legacy_xception`` with DeepfakeBench's ``adjust_channel`` (1x1 conv, BN, ReLU).

    The keys are DeepfakeBench's Xception's (``conv1`` ... ``bn4``, ``adjust_channel.*``)
    without its ``last_linear``; :func:`encoder_features` runs it as ``features`` does.
    """
    encoder = xception_backbone(pretrained_file=pretrained_file)
    encoder.adjust_channel = nn.Sequential(
        nn.Conv2d(XCEPTION_FEATURES, feat_dim, 1, 1),
        nn.BatchNorm2d(feat_dim),
        nn.ReLU(inplace=False),
    )
    return encoder


def encoder_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DeepfakeBench ``Xception.features`` in ``adjust_channel`` mode: no ReLU after ``bn4``."""
    x = encoder.act1(encoder.bn1(encoder.conv1(x)))
    x = encoder.act2(encoder.bn2(encoder.conv2(x)))
    for i in range(1, 13):
        x = getattr(encoder, f"block{i}")(x)
    x = encoder.act3(encoder.bn3(encoder.conv3(x)))
    x = encoder.bn4(encoder.conv4(x))
    return encoder.adjust_channel(x)


class Conv2d1x1(nn.Module):
    """``block_spe`` / ``block_sha``: three 1x1 convolutions with LeakyReLU between them."""

    def __init__(self, in_f: int, hidden_dim: int, out_f: int) -> None:
        super().__init__()
        self.conv2d = nn.Sequential(
            nn.Conv2d(in_f, hidden_dim, 1, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 1, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(hidden_dim, out_f, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(x)


class Head(nn.Module):
    """Global average pool, Linear, LeakyReLU, Linear, dropout on the logits; returns both."""

    def __init__(self, in_f: int, hidden_dim: int, out_f: int, drop_rate: float = 0.2) -> None:
        super().__init__()
        self.do = nn.Dropout(drop_rate)
        self.mlp = nn.Sequential(
            nn.Linear(in_f, hidden_dim), nn.LeakyReLU(inplace=True), nn.Linear(hidden_dim, out_f)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = x.mean(dim=(2, 3))
        return self.do(self.mlp(pooled)), pooled


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The content map with the style map's per-channel mean and (unbiased) std."""

    def stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = t.reshape(t.shape[0], t.shape[1], -1)
        return (flat.var(dim=-1) + eps).sqrt()[..., None, None], flat.mean(dim=-1)[..., None, None]

    if content.shape[-1] * content.shape[-2] < 2:
        raise ValueError(
            "UCF's decoder needs feature maps of at least 2 positions (inputs of 64 px or more)"
        )
    c_std, c_mean = stats(content)
    s_std, s_mean = stats(style)
    return (content - c_mean) / c_std * s_std + s_mean


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class ConditionalDecoder(nn.Module):
    """DeepfakeBench's ``Conditional_UNet``: content ``x`` rendered with fingerprint ``c``."""

    def __init__(self, drop_rate: float = 0.3) -> None:
        super().__init__()
        self.dropout = nn.Dropout(drop_rate)
        self.dconv_up3 = _double_conv(512, 256)
        self.dconv_up2 = _double_conv(256, 128)
        self.dconv_up1 = _double_conv(128, 64)
        self.conv_last = nn.Conv2d(64, 3, 1)

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.dropout(up)

    def forward(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.dconv_up3(self._up(adain(x, c)))
        c = self.dconv_up3(self._up(c))
        x = self.dconv_up2(self._up(adain(x, c)))
        c = self.dconv_up2(self._up(c))
        x = self.dconv_up1(self._up(adain(x, c)))
        x = self.conv_last(x)
        x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=True)
        return torch.tanh(x)


def _triplet(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
) -> torch.Tensor:
    dist_pos = F.pairwise_distance(anchor, positive)
    dist_neg = F.pairwise_distance(anchor, negative)
    return torch.clamp(dist_pos - dist_neg + margin, min=0.0).mean()


def _shuffle_within(labels: Sequence[int]) -> list[int]:
    """DeepfakeBench ``swap_spe_features``: for each position, another index of its label."""
    pools: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        pools.setdefault(int(label), []).append(index)
    for pool in pools.values():
        random.shuffle(pool)
    return [pools[int(label)].pop() for label in labels]


def contrastive_loss(
    common: torch.Tensor, specific: torch.Tensor, spe_label: torch.Tensor, margin: float = 3.0
) -> torch.Tensor:
    """DeepfakeBench's ``ContrastiveLoss`` on ``n`` reals then ``n`` fakes (Python ``random``)."""
    bs = common.shape[0]
    half = bs // 2
    real_common, fake_common = common.chunk(2)
    real_idx = list(range(0, half))
    random.shuffle(real_idx)
    real_anchor = common[real_idx]
    fake_idx = list(range(half, bs))
    random.shuffle(fake_idx)
    fake_anchor = common[fake_idx]
    specific_anchor = specific[_shuffle_within(spe_label.tolist())]
    real_spec_anchor, fake_spec_anchor = specific_anchor.chunk(2)
    real_spec, fake_spec = specific.chunk(2)
    return (
        _triplet(real_common, real_anchor, fake_anchor, margin)
        + _triplet(fake_common, fake_anchor, real_anchor, margin)
        + _triplet(fake_spec, fake_spec_anchor, real_spec_anchor, margin)
        + _triplet(real_spec, real_spec_anchor, fake_spec_anchor, margin)
    )


class UCF(Detector):
    """UCF: forgery and content Xception encoders, common / specific heads, a decoder.

    Args:
        pretrained_file: local ImageNet Xception weights (``xception-b5690688.pth``) for both
            encoders; ``None`` starts from random weights (the reference starts from ImageNet).
        methods: the training set's manipulation methods, in the order of their specific
            labels 1, 2, ... (reals 0), matched to each training record's ``generator``.
        encoder_feat_dim: the encoders' ``adjust_channel`` width (512).
        lambda_spe, lambda_rec, lambda_con: loss weights (0.1, 0.3, 0.05).
        margin: the contrastive loss margin (3.0).
        shuffle_prob: probability of shuffling the common fingerprints within each class (0.7).
        preprocessing: fields over DeepfakeBench's defaults.
        optimizer: default Adam(lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 5e-4).
        scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        methods: Sequence[str] = FFPP_METHODS,
        encoder_feat_dim: int = 512,
        lambda_spe: float = 0.1,
        lambda_rec: float = 0.3,
        lambda_con: float = 0.05,
        margin: float = 3.0,
        shuffle_prob: float = 0.7,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if encoder_feat_dim != 512:
            raise UserError(
                f"detector.encoder_feat_dim={encoder_feat_dim}: UCF's decoder is built for 512"
            )
        self.methods = tuple(str(m) for m in methods)
        if not self.methods:
            raise UserError("detector.methods is empty; list the training set's fake methods")
        self.lambda_spe = float(lambda_spe)
        self.lambda_rec = float(lambda_rec)
        self.lambda_con = float(lambda_con)
        self.margin = float(margin)
        self.shuffle_prob = float(shuffle_prob)
        half = encoder_feat_dim // 2
        self.encoder_f = dfb_xception_encoder(pretrained_file, encoder_feat_dim)
        self.encoder_c = dfb_xception_encoder(pretrained_file, encoder_feat_dim)
        self.con_gan = ConditionalDecoder()
        self.head_spe = Head(half, encoder_feat_dim, len(self.methods) + 1)
        self.head_sha = Head(half, encoder_feat_dim, 2)
        self.block_spe = Conv2d1x1(encoder_feat_dim, half, half)
        self.block_sha = Conv2d1x1(encoder_feat_dim, half, half)

    # -- data --------------------------------------------------------------------------
    def specific_label(self, record: Any) -> int:
        """0 for a real record, 1 + the index of its ``generator`` in ``methods`` for a fake."""
        return method_label(record, self.methods, "UCF")

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        out = super().transform(sample, train)
        record = sample.get("record")
        if train and record is not None:
            out["label_spe"] = torch.tensor(self.specific_label(record))
        return out

    # -- model -------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        forgery = encoder_features(self.encoder_f, batch["image"])
        out_sha, _ = self.head_sha(self.block_sha(forgery))
        return {"logits": out_sha[:, 1] - out_sha[:, 0]}

    def run_pairs(self, images: torch.Tensor) -> dict[str, Any]:
        """DeepfakeBench's training forward on ``n`` reals then ``n`` fakes."""
        forgery = encoder_features(self.encoder_f, images)
        content = encoder_features(self.encoder_c, images)
        f_spe, f_share = self.block_spe(forgery), self.block_sha(forgery)
        bs = f_share.shape[0]
        half = bs // 2
        if random.random() < self.shuffle_prob:
            real_idx = list(range(0, half))
            random.shuffle(real_idx)
            fake_idx = list(range(half, bs))
            random.shuffle(fake_idx)
            f_share = f_share[real_idx + fake_idx]
        f_all = torch.cat((f_spe, f_share), dim=1)
        f2, f1 = f_all.chunk(2, dim=0)
        c2, c1 = content.chunk(2, dim=0)
        reconstructions = (
            self.con_gan(f1, c2),  # fake fingerprint, real content
            self.con_gan(f2, c1),  # real fingerprint, fake content
            self.con_gan(f1, c1),
            self.con_gan(f2, c2),
        )
        out_spe, spe_feat = self.head_spe(f_spe)
        out_sha, sha_feat = self.head_sha(f_share)
        return {
            "cls": out_sha,
            "feat": sha_feat,
            "cls_spe": out_spe,
            "feat_spe": spe_feat,
            "reconstructions": reconstructions,
        }

    def losses(
        self,
        images: torch.Tensor,
        label: torch.Tensor,
        label_spe: torch.Tensor,
        out: Mapping[str, Any],
    ) -> dict[str, torch.Tensor]:
        """DeepfakeBench's ``get_train_losses`` for ``run_pairs`` outputs."""
        real_img, fake_img = images.chunk(2, dim=0)
        rec_1, rec_2, self_rec_1, self_rec_2 = out["reconstructions"]
        loss_sha = F.cross_entropy(out["cls"].float(), label)
        loss_spe = F.cross_entropy(out["cls_spe"].float(), label_spe)
        loss_rec = (
            F.l1_loss(fake_img, self_rec_1)
            + F.l1_loss(real_img, self_rec_2)
            + F.l1_loss(fake_img, rec_2)
            + F.l1_loss(real_img, rec_1)
        )
        loss_con = contrastive_loss(out["feat"], out["feat_spe"], label_spe, self.margin)
        loss = (
            loss_sha
            + self.lambda_spe * loss_spe
            + self.lambda_rec * loss_rec
            + self.lambda_con * loss_con
        )
        return {
            "loss": loss,
            "loss_common": loss_sha.detach(),
            "loss_specific": loss_spe.detach(),
            "loss_reconstruction": loss_rec.detach(),
            "loss_contrastive": loss_con.detach(),
        }

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        label = batch["label"].reshape(-1).round().long()
        if "label_spe" not in batch:
            raise UserError(
                "UCF.training_step needs batch['label_spe'] (the method labels): train through "
                "its transform(train=True), which reads each record's generator"
            )
        label_spe = batch["label_spe"].reshape(-1).long()
        real = torch.nonzero(label == 0).flatten()
        fake = torch.nonzero(label == 1).flatten()
        n = min(real.numel(), fake.numel())
        if n == 0:  # no pair: the classification terms only
            features = encoder_features(self.encoder_f, images)
            out_sha, _ = self.head_sha(self.block_sha(features))
            out_spe, _ = self.head_spe(self.block_spe(features))
            loss_sha = F.cross_entropy(out_sha.float(), label)
            loss_spe = F.cross_entropy(out_spe.float(), label_spe)
            return {
                "loss": loss_sha + self.lambda_spe * loss_spe,
                "loss_common": loss_sha.detach(),
                "loss_specific": loss_spe.detach(),
            }
        order = torch.cat([real[:n], fake[:n]])
        images, label, label_spe = images[order], label[order], label_spe[order]
        return self.losses(images, label, label_spe, self.run_pairs(images))

    # -- weights -----------------------------------------------------------------------
    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench ``ucf_best.pth`` (strict) or a deepsift state dict."""
        state = strip_prefixes(read_state_dict(path), ("module.",))
        source = f"weights file {path}"
        deepfakebench = any(
            f"{encoder}.{key}" in state
            for encoder in ("encoder_f", "encoder_c")
            for key in ENCODER_HEAD_KEYS
        )
        if deepfakebench:
            state = dict(state)
            for encoder in ("encoder_f", "encoder_c"):
                weight = state.get(f"{encoder}.last_linear.weight")
                bias = state.get(f"{encoder}.last_linear.bias")
                shapes = (getattr(weight, "shape", None), getattr(bias, "shape", None))
                if shapes == (torch.Size([2, XCEPTION_FEATURES]), torch.Size([2])):
                    del state[f"{encoder}.last_linear.weight"], state[f"{encoder}.last_linear.bias"]
        load_state_dict_strict(self, state, source)
        if deepfakebench:
            log.info("UCF: DeepfakeBench checkpoint %s (unused encoder last_linear dropped)", path)
            self.use_protocol(
                "DeepfakeBench", DEEPFAKEBENCH_FACE_PREPROCESSING, DEFAULT_PREPROCESSING
            )

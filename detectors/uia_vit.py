"""UIA-ViT: a ViT-B/16 whose attention learns to separate inconsistent (forged) patches.

After W. Zhuang, Q. Chu, Z. Tan, Q. Liu, H. Yuan, C. Miao, Z. Luo and N. Yu, "UIA-ViT:
Unsupervised Inconsistency-Aware Method based on Vision Transformer for Face Forgery
Detection", ECCV 2022 (arXiv 2210.12752). Reference code: the authors'
(github.com/wany0824/UIA-ViT, commit ``e11c41d4ce3644e7e4b1fb33b11679b9a8be2032``:
``network/vit_16_base_feat_middle_gal_v2.py``, ``train.py``, ``test.py``, ``utils/utils.py``)
and DeepfakeBench's port (github.com/SCLBD/DeepfakeBench, commit
``8a4a7bf5e966c5c5618bc27d1719c3683eae9a04``: ``training/detectors/uia_vit_detector.py``,
``training/loss/patch_consistency_loss.py``, ``training/config/detector/uia_vit.yaml``).

The network is timm's original ViT-B/16 (``patch_embed``, ``cls_token``, ``pos_embed``,
12 ``blocks`` of width 768 with 12 heads, LayerNorm eps 1e-6, ``norm``) plus
``norm_middle``, a LayerNorm on the tokens entering block ``feat_blk`` = 6 (patch features
for the unsupervised patch-consistency learning), and a head on 1536 features: the
``norm``-ed CLS token concatenated with an attention-weighted mean of the patch tokens.
The weights are ``(w + (1 - w) a) / P``, where ``a = sigmoid`` of the mean pre-softmax
CLS-to-patch attention logits (``q k^T / sqrt(d)``) of the last five blocks
(``attn_blk`` = 8 9 10 11 12: block ``j`` counts when ``j + 1`` is listed), ``P`` = 196
patches and ``w = sigmoid(-k (step - thr))`` (``k`` 12, ``thr`` 0.7) with ``step`` the
fraction of training done (progressive: uniform weights for the first eighth); at test
time ``step`` = 1.

Reference defaults:

* training (DeepfakeBench ``uia_vit.yaml``): ImageNet ``jx_vit_base_p16_224-80ecf9dd.pth``
  (its ``head`` dropped, loaded non-strictly: ``norm_middle`` and the new head start from
  the init); cross-entropy; after the first epoch, plus ``0.06`` x the patch-consistency
  loss, ``0.05 (1/|c_real| + 1/|c_fake|)`` and ``0.5 |c_cross|`` (``c_real``, ``c_fake``,
  ``c_cross`` learnt, from 0.6, 0.6, 0.2). The patch-consistency loss: a multivariate
  Gaussian (Ledoit-Wolf precision) is fitted every half epoch to the ``norm_middle``
  features of the patches of (at most 4 per batch) real faces and to the inner 8 x 8
  patches (rows and columns 3..10) of fake faces; a fake face's patch counts as forged
  when its Mahalanobis distance to the real Gaussian exceeds that to the fake one; the
  sigmoid of the mean patch-to-patch attention logits should then be ``c_real`` between
  two real patches (and off the diagonal of a real face, whose diagonal is 1), ``c_fake``
  between two forged ones and ``c_cross`` across (L1, divided by ``B (P^2 - P)``);
  Adam lr 3e-5, betas (0.9, 0.999), eps 1e-8, weight decay 1e-5, no schedule, 10 epochs,
  batch 64, no augmentation; ``batch_per_epoch`` (1796) must be set by hand. The
  authors' ``train.py``: the same losses and weights (``lambda_corr`` 0.06,
  ``lambda_c_param`` 0.5 0.05 0.05), Adam lr 3e-5 without weight decay, batch 96,
  ``ReduceLROnPlateau`` (factor 0.5, patience 10) on validation accuracy;
* test input: DeepfakeBench's 224 x 224 ``cv2.resize`` ``INTER_CUBIC``; the authors'
  ``transforms.Resize((224, 224))`` (PIL bilinear); both Normalize(0.5, 0.5); softmax
  ``[:, 1]`` is fake;
* weights: DeepfakeBench ``torch.save(UIAViTDetector.state_dict())``: ``model.*``, with
  ``model.c_real``, ``model.c_fake``, ``model.c_cross``; the authors' ``model_bestacc.pt``
  (``torch.save(model.state_dict())``: no prefix, and no ``c_*``: those live outside the
  model in their ``train.py``) or ``checkpoint.pth.tar`` (``{'state_dict', 'optimizer',
  'gauss_param_real', 'gauss_param_fake', ...}``). Both load strictly (``formats.py``);
  the released files are on Google Drive, so the layouts come from the code.

Where deepsift differs, and why: one fake logit ``z1 - z0`` of the 2-class head (the
same probability), trained with binary cross-entropy (= the 2-class cross-entropy on
it); ``step`` counts training steps only (DeepfakeBench's counter also advances on
validation forwards); the Gaussians and the step counter are not saved in checkpoints
(a resumed run restarts the schedule); an authors' file, which has no ``c_*``, sets them
to their initial values (they only enter the training loss); the ImageNet start comes
from a local file (``pretrained_file``), nothing is downloaded; the patch-consistency
targets are built in one vectorised step instead of DeepfakeBench's loops over patches
(the same matrix); ``norm_middle`` is frozen (in the reference it requires a gradient but
never gets one: its features only set the pseudo-labels, through a threshold).

Parity: DeepfakeBench's ``UIAViTDetector`` and test input, and the authors'
``vit_base_patch16_224`` and ``test.py`` transform, run on seeded weights in their
layouts (``tests/official/make_uia_vit.py``, ``uia_vit_dfb.json``, ``uia_vit_authors.json``:
12 blocks of width 64): max |dlogit| 1.5e-7 / 1.8e-7; once at full width (``--full``):
5.7e-7 (DeepfakeBench) and 1.5e-6 (the authors'), float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: DeepfakeBench's test input (``uia_vit.yaml``: 224, mean = std = 0.5), no augmentation
DEFAULT_PREPROCESSING: dict[str, Any] = {**DEEPFAKEBENCH_FACE_PREPROCESSING, "size": 224}
DEEPFAKEBENCH_PROTOCOL: dict[str, Any] = {
    **DEEPFAKEBENCH_FACE_PREPROCESSING,
    "size": 224,
    "resize_to": 224,
}
#: the authors' ``test.py``: ``transforms.Resize((224, 224))`` (PIL bilinear), Normalize(0.5)
AUTHORS_PROTOCOL: dict[str, Any] = {
    **DEEPFAKEBENCH_FACE_PREPROCESSING,
    "size": 224,
    "resize_to": 224,
    "interpolation": "bilinear",
    "resize_backend": "pil",
}

#: DeepfakeBench's ``adam`` (``uia_vit.yaml``)
UIA_ADAM = {"lr": 3e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-5}
C_INIT = {"c_real": 0.6, "c_fake": 0.6, "c_cross": 0.2}


class Attention(nn.Module):
    """Multi-head self-attention that also returns its pre-softmax logits ``q k^T / sqrt(d)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), logits


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, logits = self.attn(self.norm1(x))
        x = x + out
        return x + self.mlp(self.norm2(x)), logits


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class UIAViTNet(nn.Module):
    """The reference's ``VisionTransformer`` (``vit_base_patch16_224``), the same names."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.c_real = nn.Parameter(torch.tensor(C_INIT["c_real"]))
        self.c_fake = nn.Parameter(torch.tensor(C_INIT["c_fake"]))
        self.c_cross = nn.Parameter(torch.tensor(C_INIT["c_cross"]))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.norm_middle = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim * 2, 2)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(
        self,
        x: torch.Tensor,
        step: float = 1.0,
        attn_blk: Sequence[int] = (8, 9, 10, 11, 12),
        feat_blk: int = 6,
        k: float = 12.0,
        thr: float = 0.7,
        progressive: bool = True,
    ) -> dict[str, torch.Tensor]:
        """2-class scores, ``norm_middle`` patch features (B, H, W, C), attention logits."""
        h = self.patch_embed(x)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], 1) + self.pos_embed
        attention, middle = [], None
        for j, block in enumerate(self.blocks):
            if j == feat_blk:
                middle = self.norm_middle(h)
            h, logits = block(h)
            if j + 1 in attn_blk:  # the reference keeps block j's map when j + 1 is listed
                attention.append(logits)
        if middle is None or not attention:
            raise UserError(
                f"detector.feat_blk={feat_blk} and detector.attn_blk={list(attn_blk)} select no "
                f"block of a {len(self.blocks)}-block ViT"
            )
        h = self.norm(h)
        attn = torch.cat(attention, dim=1)  # (B, heads x blocks, N, N)
        cls, patches = h[:, 0], h[:, 1:]
        b, p, _c = patches.shape
        uniform = torch.ones(b, 1, p, device=x.device, dtype=patches.dtype)
        if progressive and step < 1 / 8:
            weights = uniform / p
        else:
            located = torch.sigmoid(attn[:, :, 0, 1:].mean(dim=1)).reshape(b, 1, p)
            if progressive:
                w = torch.sigmoid(torch.tensor(-k * (step - thr))).to(x.device)
                located = w * uniform + (1 - w) * located
            weights = located / p
        features = torch.cat([cls, torch.bmm(weights, patches).squeeze(1)], -1)
        side = round((middle.shape[1] - 1) ** 0.5)
        patch_features = middle[:, 1:].reshape(b, side, side, -1)
        return {
            "scores": self.head(features),
            "patch_features": patch_features,
            "attention": attn,
            "localization": weights.reshape(b, side, side) * p,
        }


def fit_inverse_covariance(samples: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf precision matrix of ``samples`` (N, C) (the reference's ``fit_inv_covariance``)."""
    from sklearn.covariance import LedoitWolf

    precision = LedoitWolf().fit(samples.double().cpu().numpy()).precision_
    return torch.as_tensor(precision, dtype=torch.float32)


def mahalanobis(values: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    delta = values - mean[None]
    return torch.einsum("im,mn,in->i", delta, precision, delta).sqrt()


def consistency_targets(
    forged: torch.Tensor, c_real: torch.Tensor, c_fake: torch.Tensor, c_cross: torch.Tensor
) -> torch.Tensor:
    """(B, P) forged-patch masks -> (B, P, P) targets: c_fake / c_real within, c_cross across."""
    f = forged.float()
    both_fake = f[:, :, None] * f[:, None, :]
    both_real = (1 - f)[:, :, None] * (1 - f)[:, None, :]
    return c_cross + (c_fake - c_cross) * both_fake + (c_real - c_cross) * both_real


def patch_consistency_loss(
    attention_real: torch.Tensor,
    attention_fake: torch.Tensor,
    forged: torch.Tensor,
    c_real: torch.Tensor,
    c_fake: torch.Tensor,
    c_cross: torch.Tensor,
) -> torch.Tensor:
    """DeepfakeBench's ``PatchConsistencyLoss`` (the authors' ``Attention_Correlation_...``).

    ``attention_*``: (B, P, P) sigmoids of the mean patch-to-patch attention logits of
    real / fake faces; ``forged``: (B_fake, P) masks of the fake faces' forged patches.
    """
    loss = attention_real.new_zeros(())
    if attention_real.shape[0]:
        b, p, _ = attention_real.shape
        eye = torch.eye(p, device=attention_real.device, dtype=attention_real.dtype)
        target = (1 - c_real) * eye + c_real * torch.ones_like(eye)
        loss = loss + (attention_real - target).abs().sum() / (b * (p * p - p))
    if attention_fake.shape[0]:
        b, p, _ = attention_fake.shape
        target = consistency_targets(forged, c_real, c_fake, c_cross)
        loss = loss + (attention_fake - target).abs().sum() / (b * (p * p - p))
    return loss


class UIAViT(Detector):
    """UIA-ViT (ViT-B/16 + attention-weighted patch pooling); one fake logit.

    State dict: ``model.*`` (DeepfakeBench's ``UIAViTDetector``); 85,803,269 parameters at
    full size (timm's ViT-B/16 85,798,656 less its 1000-class head, plus ``norm_middle``,
    the 1536 -> 2 head and ``c_real``, ``c_fake``, ``c_cross``).

    Args:
        pretrained_file: local ImageNet ViT-B/16 (``jx_vit_base_p16_224-80ecf9dd.pth``, timm's
            original ``vit_base_patch16_224``); ``None``: random init.
        img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio: the ViT (ViT-B/16).
        attn_blk, feat_blk, k, thr, progressive: the reference's ``forward`` arguments.
        batch_per_epoch, epochs: training steps per epoch and epochs, for the progressive
            ``step`` and the Gaussians' schedule (set by hand, as in the reference).
        loss_weights: patch-consistency, ``1/|c|`` and ``|c_cross|`` weights (0.06, 0.05, 0.5).
        inner: rows/columns of a fake face's patch grid whose features fit the fake Gaussian.
        preprocessing, optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        attn_blk: Sequence[int] = (8, 9, 10, 11, 12),
        feat_blk: int = 6,
        k: float = 12.0,
        thr: float = 0.7,
        progressive: bool = True,
        batch_per_epoch: int = 1796,
        epochs: int = 10,
        loss_weights: Sequence[float] = (0.06, 0.05, 0.5),
        inner: Sequence[int] = (3, 11),
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            import functools

            optimizer = functools.partial(torch.optim.Adam, **UIA_ADAM)
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if batch_per_epoch < 2 or epochs < 1:
            raise UserError(
                f"detector.batch_per_epoch={batch_per_epoch} and detector.epochs={epochs}: set "
                f"them to the training batches per epoch (at least 2) and the epochs"
            )
        self.model = UIAViTNet(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio)
        # its features only pick the consistency loss's pseudo-labels (a threshold, no
        # gradient): the reference never updates it either
        self.model.norm_middle.requires_grad_(False)
        self.forward_args = {
            "attn_blk": tuple(int(i) for i in attn_blk),
            "feat_blk": int(feat_blk),
            "k": float(k),
            "thr": float(thr),
            "progressive": bool(progressive),
        }
        self.batch_per_epoch, self.epochs = int(batch_per_epoch), int(epochs)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.inner = (int(inner[0]), int(inner[1]))
        self.batch_count = 0
        self.real_features: list[torch.Tensor] = []
        self.fake_features: list[torch.Tensor] = []
        self.gaussians: dict[str, torch.Tensor] | None = None
        if pretrained_file:
            self.load_imagenet(pretrained_file)

    def load_imagenet(self, path: str | Path) -> None:
        """timm's ImageNet ViT-B/16 file: every tensor but ``head`` (``norm_middle``, the
        head and ``c_*`` keep their init), as the reference's non-strict load."""
        source = f"detector.pretrained_file {path}"
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("head.")}
        own = self.model.state_dict()
        fresh = {k for k in own if k.startswith(("norm_middle.", "head.")) or k in C_INIT}
        missing = sorted(set(own) - fresh - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise UserError(
                f"{source} is not timm's vit_base_patch16_224 (jx_vit_base_p16_224-80ecf9dd.pth): "
                f"missing keys: {', '.join(missing[:8]) or 'none'}; "
                f"unexpected keys: {', '.join(unexpected[:8]) or 'none'}"
            )
        load_state_dict_strict(self.model, {**{k: own[k] for k in fresh}, **state}, source)
        log.info("UIA-ViT: ImageNet weights %s", path)

    @property
    def step(self) -> float:
        return self.batch_count / (self.batch_per_epoch * self.epochs) if self.training else 1.0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(batch["image"], step=self.step, **self.forward_args)
        scores = out["scores"]
        return {
            "logits": scores[:, 1] - scores[:, 0],
            "localization": out["localization"],
            "patch_features": out["patch_features"],
            "attention": out["attention"],
        }

    def _fit_gaussians(self) -> None:
        if not self.real_features or not self.fake_features:
            return
        real, fake = torch.cat(self.real_features), torch.cat(self.fake_features)
        self.gaussians = {
            "real_mean": real.mean(0),
            "real_precision": fit_inverse_covariance(real),
            "fake_mean": fake.mean(0),
            "fake_precision": fit_inverse_covariance(fake),
        }
        self.real_features, self.fake_features = [], []

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.batch_count and self.batch_count % (self.batch_per_epoch // 2) == 0:
            self._fit_gaussians()  # DeepfakeBench: every half epoch
        out = self(batch)
        labels = batch["label"].float()
        bce = F.binary_cross_entropy_with_logits(out["logits"].float(), labels)
        features, attention = out["patch_features"], out["attention"]
        real, fake = torch.where(labels == 0)[0], torch.where(labels == 1)[0]
        a, b = self.inner
        self.real_features.append(features[real[:4]].detach().flatten(0, 2).float().cpu())
        self.fake_features.append(features[fake[:4], a:b, a:b].detach().flatten(0, 2).float().cpu())
        active = self.batch_count > self.batch_per_epoch and self.gaussians is not None
        self.batch_count += 1
        if not active:
            return {"loss": bce}
        maps = torch.sigmoid(attention[:, :, 1:, 1:].mean(dim=1))
        with torch.no_grad():
            g = {k: v.to(features.device) for k, v in self.gaussians.items()}
            flat = features[fake].flatten(0, 2).float()
            gap = mahalanobis(flat, g["real_mean"], g["real_precision"]) - mahalanobis(
                flat, g["fake_mean"], g["fake_precision"]
            )
            forged = (torch.relu(gap) > 0).reshape(len(fake), -1)
        m = self.model
        pcl = patch_consistency_loss(maps[real], maps[fake], forged, m.c_real, m.c_fake, m.c_cross)
        w_pcl, w_c, w_cross = self.loss_weights
        loss = (
            bce
            + w_pcl * pcl
            + w_c * (1 / m.c_real.abs() + 1 / m.c_fake.abs())
            + w_cross * m.c_cross.abs()
        )
        return {"loss": loss, "bce": bce.detach(), "pcl": pcl.detach()}

    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench's ``UIAViTDetector`` file, the authors' ``model_bestacc.pt`` /
        ``checkpoint.pth.tar``, or this detector's state dict, strictly."""
        source = f"weights file {path}"
        state = strip_prefixes(read_state_dict(path), ("module.",))
        if "model.head.weight" in state:  # DeepfakeBench (and deepsift)
            load_state_dict_strict(self, state, source)
            log.info("UIA-ViT: loaded %s (DeepfakeBench layout)", path)
            self.use_protocol(
                "DeepfakeBench UIA-ViT", DEEPFAKEBENCH_PROTOCOL, DEFAULT_PREPROCESSING
            )
            return
        if "head.weight" not in state or "norm_middle.weight" not in state:
            shown = ", ".join(sorted(state)[:4]) + (" ..." if len(state) > 4 else "")
            raise UserError(
                f"{source} is not a UIA-ViT state dict (no 'model.head.weight' nor 'head.weight' "
                f"+ 'norm_middle.weight'; found {shown or 'no keys'}); pass DeepfakeBench's "
                f"uia_vit_best.pth or the authors' model_bestacc.pt"
            )
        # the authors' model holds no c_*: they start from their initial values
        state = {**state, **{k: torch.tensor(v) for k, v in C_INIT.items()}}
        load_state_dict_strict(self.model, state, source)
        log.info("UIA-ViT: loaded %s (the authors' layout)", path)
        self.use_protocol("UIA-ViT (authors')", AUTHORS_PROTOCOL, DEFAULT_PREPROCESSING)

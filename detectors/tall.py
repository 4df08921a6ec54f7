"""TALL: Thumbnail Layout for deepfake video detection.

After Y. Xu, J. Liang, G. Jia, Z. Yang, Y. Zhang and R. He, "TALL: Thumbnail Layout
for Deepfake Video Detection", ICCV 2023 (code: github.com/rainy-xu/TALL4Deepfake;
DeepfakeBench ``training/detectors/tall_detector.py``).

The T face crops of one track are resized to a common size and tiled row-major into
one ``rows x cols`` thumbnail image (T = 4 -> 2 x 2 grid of 112 px frames = 224 px),
which an image backbone (Swin-B, ``swin_base_patch4_window7_224``) classifies.

Reference defaults (DeepfakeBench ``training/config/detector/tall.yaml`` and
``tall_detector.py``, commit 8a4a7bf5e966c5c5618bc27d1719c3683eae9a04): ``clip_size: 4``,
``thumbnail_rows: 2``; each frame is a 224 px crop, the four are tiled into a 448 px
thumbnail which ``forward_features`` resizes back to 224 px (``F.interpolate``, bilinear);
ImageNet mean/std; its own Swin-B copy (Microsoft layout: ``embed_dim`` 128, depths
(2, 2, 18, 2), heads (4, 8, 16, 32), windows (14, 14, 14, 7), patch 4, drop-path 0.1)
plus a learnt per-frame position embedding ``frame_pos_embed`` (1, T, 128) added to every
patch of a frame's cell (``ape: true``); a 2-class head, softmax class 1 = fake,
cross-entropy; Adam lr 2e-5, betas (0.9, 0.999), eps 1e-8, weight decay 5e-4, no
schedule, 100 epochs, batch 32; augmentation flip 0.5, rotate +-10 deg 0.5, blur 0.5,
brightness/contrast +-0.1 0.5, JPEG 40-100. The paper additionally masks a random patch
of each frame in training ("thumbnail masking").

Where deepsift differs (not yet checked against the authors' code — no parity figure):
timm's Swin (default ``swin_base_patch4_window7_224``: window 7, not 14, no
``frame_pos_embed``); frames are resized to ``frame_size`` (112) and tiled to 224 px
directly instead of 224 -> 448 -> bilinear 224; one fake logit trained with binary
cross-entropy (the two-class cross-entropy on ``z_fake - z_real``); training
augmentation is one random resized crop and one flip shared by all T frames (no
rotation, blur, colour, JPEG or thumbnail masking); the ImageNet start needs a local
``pretrained_file`` (timm layout), nothing is downloaded.

DeepfakeBench's checkpoint layout (``model.*``/``module.model.*``, Microsoft Swin names:
``layers.i.downsample`` ends stage i, ``head`` (2, 1024), ``frame_pos_embed``) loads
strictly through :meth:`TALL.load_weights` into the DeepfakeBench-size model
(``frame_size=224 thumbnail_size=224 frame_pos_embed=true model_kwargs={embed_dim: 128,
depths: [2, 2, 18, 2], num_heads: [4, 8, 16, 32], window_size: 14}``: timm clamps the
last stage's window to its 7 x 7 map, as DeepfakeBench's code does). Its state-dict names
and parameter count (86,920,506) were checked against DeepfakeBench's module; its forward
output was not (no parity figure yet). The TALL4Deepfake release is not supported.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import swin_transformer
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from deepsift.core.checkpoint import load_state_dict_strict
from deepsift.core.errors import UserError
from detectors.base import Detector

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: DeepfakeBench tall.yaml: Adam lr 2e-5 (a tenth of its image detectors' 2e-4)
TALL_ADAM: Callable[..., torch.optim.Optimizer] = functools.partial(
    torch.optim.Adam, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-4
)


def thumbnail(clip: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, T, C, H, W) with T = rows * cols -> (B, C, rows * H, cols * W), frames row-major."""
    b, t, c, h, w = clip.shape
    if t != rows * cols:
        raise ValueError(f"TALL: a clip of {t} frames does not fill a {rows} x {cols} grid")
    x = clip.reshape(b, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, rows * h, cols * w)


class TALL(Detector):
    """Thumbnail layout of ``clip_len`` frames on a timm image backbone, one fake logit.

    Args:
        clip_len: frames per clip (T, 4 in the paper); must be ``rows * cols``.
        clip_stride: frame step between sampled frames.
        rows: grid rows (``None``: ``sqrt(clip_len)``).
        frame_size: side of each tiled frame (112: a 224 px thumbnail for T = 4).
        model_name: timm backbone (``swin_base_patch4_window7_224``).
        model_kwargs: extra timm arguments (tests use a tiny Swin).
        pretrained_file: local ImageNet weights of the backbone (timm layout); ``None``:
            random init; nothing is downloaded.
        hflip: probability of one horizontal flip of the whole clip (training).
        crop_scale: random-resized-crop scale range, one crop for all frames (training).
        frame_pos_embed: add a learnt (1, T, C) embedding to each frame's cell of patches
            (DeepfakeBench ``ape: true``).
        thumbnail_size: resize the tiled thumbnail to this side (bilinear) before the
            backbone (DeepfakeBench: 224 px frames, 448 -> 224); ``None``: no resize.
    """

    input_kind = "clip"

    def __init__(
        self,
        clip_len: int = 4,
        clip_stride: int = 1,
        rows: int | None = None,
        frame_size: int = 112,
        model_name: str = "swin_base_patch4_window7_224",
        model_kwargs: dict[str, Any] | None = None,
        pretrained_file: str | None = None,
        hflip: float = 0.5,
        crop_scale: Sequence[float] = (0.8, 1.0),
        frame_pos_embed: bool = False,
        thumbnail_size: int | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(None, optimizer or TALL_ADAM, scheduler)
        self.clip_len = int(clip_len)
        self.clip_stride = int(clip_stride)
        self.rows = int(rows) if rows else round(math.sqrt(self.clip_len))
        if self.clip_len % self.rows:
            raise UserError(f"TALL: clip_len={clip_len} is not a multiple of rows={self.rows}")
        self.cols = self.clip_len // self.rows
        self.frame_size = int(frame_size)
        kwargs = dict(model_kwargs or {})
        self.thumbnail_size = int(thumbnail_size) if thumbnail_size else None
        grid = (self.rows * self.frame_size, self.cols * self.frame_size)
        kwargs.setdefault("img_size", (self.thumbnail_size,) * 2 if self.thumbnail_size else grid)
        self.backbone = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        self.head = nn.Linear(self.backbone.num_features, 1)
        width = self.backbone.patch_embed.proj.out_channels
        self.frame_pos_embed = (
            nn.Parameter(torch.zeros(1, self.clip_len, width)) if frame_pos_embed else None
        )
        if pretrained_file:
            self._load_backbone(pretrained_file)
        self.hflip = float(hflip)
        self.crop_scale = tuple(float(s) for s in crop_scale)

    def load_weights(self, path: str | Path) -> None:
        """Load DeepfakeBench's ``tall_best.pth`` layout (``model.*``, Microsoft Swin names,
        2-class ``head``; ``module.``-prefixed from DDP) strictly."""
        source = f"weights file {path}"
        if not Path(path).is_file():
            raise UserError(f"TALL: {source} does not exist (detector.weights=)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
        if "head.weight" not in state:
            raise UserError(f"TALL: {source} has no head.weight: not a DeepfakeBench TALL file")
        w, b = state.pop("head.weight"), state.pop("head.bias")
        out: dict[str, torch.Tensor] = {
            "head.weight": (w[1] - w[0])[None],
            "head.bias": b[1:] - b[:1],
        }
        if "frame_pos_embed" in state:
            out["frame_pos_embed"] = state.pop("frame_pos_embed")
        own = self.backbone.state_dict()
        converted = swin_transformer.checkpoint_filter_fn(dict(state), self.backbone)
        bad = [k for k, v in converted.items() if k in own and v.shape != own[k].shape]
        if bad:
            raise UserError(f"TALL: {source} does not match the configured Swin at {bad[:5]}")
        out |= {f"backbone.{k}": v for k, v in converted.items()}
        load_state_dict_strict(self, out, source)

    def _load_backbone(self, path: str) -> None:
        if not Path(path).is_file():
            raise UserError(f"TALL: detector.pretrained_file={path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        load_state_dict_strict(self.backbone, state, f"detector.pretrained_file={path}")

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["frames"]`` (T PIL crops) -> ``{"clip": (T, 3, frame_size, frame_size)}``.

        Training applies one flip and one resized crop to all T frames.
        """
        frames = sample["frames"]
        if len(frames) != self.clip_len:
            raise UserError(
                f"TALL: got {len(frames)} frames, the config says clip_len={self.clip_len}"
            )
        size = [self.frame_size, self.frame_size]
        clip = torch.stack([TF.to_dtype(TF.to_image(f), torch.float32, scale=True) for f in frames])
        if train:
            aug = v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True),
                    v2.RandomHorizontalFlip(self.hflip),
                ]
            )
            clip = aug(clip)
        else:
            clip = TF.resize(clip, size, antialias=True)
        return {"clip": TF.normalize(clip, IMAGENET_MEAN, IMAGENET_STD)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = thumbnail(batch["clip"], self.rows, self.cols)
        if self.thumbnail_size:
            image = F.interpolate(image, size=(self.thumbnail_size,) * 2, mode="bilinear")
        if self.frame_pos_embed is None:
            return {"logits": self.head(self.backbone(image)).squeeze(-1)}
        x = self.backbone.patch_embed(image)  # (B, H', W', C): each frame a rows x cols cell
        b, h, w, c = x.shape
        pos = self.frame_pos_embed.reshape(self.rows, 1, self.cols, 1, c)
        x = x.reshape(b, self.rows, h // self.rows, self.cols, w // self.cols, c) + pos
        x = self.backbone.layers(x.reshape(b, h, w, c))
        x = self.backbone.norm(x)
        return {"logits": self.head(self.backbone.forward_head(x)).squeeze(-1)}

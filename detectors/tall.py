"""TALL: Thumbnail Layout for deepfake video detection.

After Y. Xu, J. Liang, G. Jia, Z. Yang, Y. Zhang and R. He, "TALL: Thumbnail Layout
for Deepfake Video Detection", ICCV 2023 (code: github.com/rainy-xu/TALL4Deepfake;
DeepfakeBench ``training/detectors/tall_detector.py``).

The T face crops of one track are resized to a common size and tiled row-major into
one ``rows x cols`` thumbnail image (T = 4 -> 2 x 2 grid of 112 px frames = 224 px),
which an image backbone (Swin-B, ``swin_base_patch4_window7_224``) classifies.

Reference defaults (DeepfakeBench ``training/config/detector/tall.yaml``,
``tall_detector.py`` and ``dataset/tall_dataset.py``, commit
8a4a7bf5e966c5c5618bc27d1719c3683eae9a04): ``clip_size: 4``, ``thumbnail_rows: 2``; each
frame is a 224 px crop (``load_rgb``: ``cv2.resize``, ``INTER_CUBIC``), ImageNet mean/std;
``TALLDataset`` then sets one 16 x 16 square (``mask_grid_size``, centred on a uniform
pixel, clipped at the borders) to -1 at the same place in all frames, in training AND at
test time; the model views the clip as (B, 3T, H, W), tiles it row-major into a 448 px
thumbnail which ``forward_features`` resizes back to 224 px (``F.interpolate``, bilinear);
its own Swin-B copy (Microsoft layout: ``embed_dim`` 128, depths (2, 2, 18, 2), heads
(4, 8, 16, 32), windows (14, 14, 14, 7), patch 4, drop-path 0.1) plus a learnt per-frame
position embedding ``frame_pos_embed`` (1, T, 128) added to every patch of a frame's cell
(``ape: true``); a 2-class head, softmax class 1 = fake, cross-entropy; Adam lr 2e-5,
betas (0.9, 0.999), eps 1e-8, weight decay 5e-4, no schedule, 100 epochs, batch 32;
augmentation flip 0.5, rotate +-10 deg 0.5, blur 0.5, brightness/contrast +-0.1 0.5,
JPEG 40-100 (one draw per video).

Checked against the authors' code: DeepfakeBench's ``TALLDetector`` run on seeded weights
(``tests/official/make_tall.py``, ``tests/official/video/tall_dfb.json``; frames of 56 px,
2 x 2 thumbnail resized 112 -> 56, depths (2, 2) with a shifted-window block, ape) gives
the logits of deepsift's TALL loading that ``tall_best.pth`` within 1.4e-7 (float32),
and within 6.6e-7 at full size (224 px frames, Swin-B with windows 14/14/14/7, loaded
with the overrides of the ``DeepfakeBench TALL`` format: a slow test);
its forward (thumbnail order, 448 -> 224 resize, ``frame_pos_embed`` cells, Swin blocks,
patch merging order, pooling) needed no change. What the check found and deepsift now
follows: frames are resized with ``cv2.resize`` ``INTER_CUBIC`` (deepsift used
torchvision's antialiased bilinear resize) and training masks one 16 px square in all
frames (``mask_size``). Quirks of the authors' code not followed: the mask is also drawn
at test time there (a random test-time input; deepsift masks in training only);
``create_image_pos_embed`` places frame i at cell (i // rows, i % rows), which is
row-major only for square grids (the only ones ``TALLDataset`` accepts); with
``pretrained: null`` its ``load_pretrained`` raises a NameError (``_logger``).

Where deepsift differs otherwise: its default is timm's Swin
(``swin_base_patch4_window7_224``: window 7, not 14, no ``frame_pos_embed``); frames are
resized to ``frame_size`` (112) and tiled to 224 px directly instead of 224 -> 448 ->
bilinear 224; one fake logit trained with binary cross-entropy (the two-class
cross-entropy on ``z_fake - z_real``); training augmentation is one random resized crop
and one flip shared by all T frames, then the mask (no rotation, blur, colour or JPEG);
the ImageNet start needs a local ``pretrained_file`` (timm layout), nothing is downloaded.

DeepfakeBench's checkpoint layout (``model.*``/``module.model.*``, Microsoft Swin names:
``layers.i.downsample`` ends stage i, ``head`` (2, 1024), ``frame_pos_embed``; its
``relative_position_index``/``attn_mask`` buffers are rebuilt, not read) loads strictly
through :meth:`TALL.load_weights` into the DeepfakeBench-size model (``frame_size=224
thumbnail_size=224 frame_pos_embed=true model_kwargs={embed_dim: 128, depths: [2, 2, 18,
2], num_heads: [4, 8, 16, 32], window_size: 14}``: timm clamps the last stage's window to
its 7 x 7 map, as DeepfakeBench's code does). Its parameter count (86,920,506) is the
authors' module's. The TALL4Deepfake release is not supported.
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

from deepsift.core.checkpoint import load_state_dict_strict
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.clips import cv2_normalised_clip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: DeepfakeBench tall.yaml: Adam lr 2e-5 (a tenth of its image detectors' 2e-4)
TALL_ADAM: Callable[..., torch.optim.Optimizer] = functools.partial(
    torch.optim.Adam, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-4
)


def thumbnail_mask(clip: torch.Tensor, size: int) -> torch.Tensor:
    """DeepfakeBench ``TALLDataset``'s masking: one ``size`` x ``size`` square centred on a
    uniformly drawn pixel (clipped at the borders), the same in all T frames, set to -1."""
    _, _, h, w = clip.shape
    x, y = int(torch.randint(w, ())), int(torch.randint(h, ()))
    x1, x2 = max(x - size // 2, 0), min(x + size // 2, w)
    y1, y2 = max(y - size // 2, 0), min(y + size // 2, h)
    clip = clip.clone()
    clip[:, :, y1:y2, x1:x2] = -1
    return clip


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
        mask_size: side of the square masked (-1) at one random place of all T frames in
            training (DeepfakeBench ``mask_grid_size`` 16); 0: no masking.
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
        mask_size: int = 16,
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
        self.mask_size = int(mask_size)

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

        Each crop is resized to ``frame_size`` with ``cv2.resize`` (``INTER_CUBIC``), as
        DeepfakeBench's ``load_rgb`` does, then ImageNet-normalised. Training applies one
        resized crop and one flip to all T frames, then masks one ``mask_size`` square at
        one random place in every frame (value -1, DeepfakeBench's ``TALLDataset``).
        """
        frames = sample.get("frames")
        if frames is not None and len(frames) != self.clip_len:
            raise UserError(
                f"TALL: got {len(frames)} frames, the config says clip_len={self.clip_len}"
            )
        size = [self.frame_size, self.frame_size]
        augment = None
        if train:
            augment = v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True),
                    v2.RandomHorizontalFlip(self.hflip),
                ]
            )
        clip = cv2_normalised_clip(
            frames, self.frame_size, "bicubic", IMAGENET_MEAN, IMAGENET_STD, augment, "TALL"
        )
        if train and self.mask_size > 0:
            clip = thumbnail_mask(clip, self.mask_size)
        return {"clip": clip}

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

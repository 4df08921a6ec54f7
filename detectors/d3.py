"""D3: frozen CLIP ViT-L/14 on an image and its patch-shuffled copy, fused by attention.

After Y. Yang, Z. Qian, Y. Zhu, O. Russakovsky and Y. Wu, "D3: Scaling Up Deepfake
Detection by Learning from Discrepancy", CVPR 2025. Official code and head weights:
github.com/BigAandSmallq/D3 (``ckpt/classifier.pth``: the ``attention_head`` state
dict, ``query``/``key``/``value`` Linear(1024, 1024) and ``fc`` Linear(2048, 1)).
A distorted copy of the picture (its 14 x 14 patches shuffled) is a discrepancy
signal: the head attends over the CLIP features of both and learns what the
shuffle changes, which generalises across generators better than either alone.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.layers.clip import CLIP_MEAN, CLIP_STD, ClipLinearProbe
from detectors.layers.cnndetection import cnndetection_sample
from detectors.preprocessing import Preprocessing, merge_preprocessing, train_variant

log = logging.getLogger(__name__)

#: test time (``validate_for_robustness.py`` ``RealFakeDataset``): ``Resize((224, 224))``
#: (PIL bilinear, aspect ratio not kept), ``ToTensor``, CLIP ``Normalize``
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "square",
    "interpolation": "bilinear",
    "resize_backend": "pil",
    "crop": "none",
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
    "hflip": 0.5,
    "blur_prob": 0.0,
    "blur_sigma": (0.0, 3.0),
    "jpeg_prob": 0.0,
    "jpeg_quality": (30, 100),
}

#: training (``data/datasets.py`` with the ``options/`` defaults): shorter side to
#: ``loadSize`` 256 (bilinear), blur (p 0.5, sigma U(0, 3)) and JPEG (p 0.5, quality
#: U{30..100}), ``RandomCrop(224)``, horizontal flip
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = {
    "resize": "shorter",
    "resize_to": 256,
    "crop": "center",  # training crops at a random position
    "blur_prob": 0.5,
    "jpeg_prob": 0.5,
}

#: what ``validate_for_robustness.py`` feeds ``classifier.pth``
OFFICIAL_TEST_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "square",
    "interpolation": "bilinear",
    "resize_backend": "pil",
    "crop": "none",
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
}

#: the official head file's keys (``attention_head.state_dict()``)
HEAD_KEYS = (
    "query.weight",
    "query.bias",
    "key.weight",
    "key.bias",
    "value.weight",
    "value.bias",
    "fc.weight",
    "fc.bias",
)


def shuffle_patches(images: torch.Tensor, patch: int, order: torch.Tensor) -> torch.Tensor:
    """Rearrange the non-overlapping ``patch`` x ``patch`` tiles of (B, C, H, W) by ``order``.

    Tile ``i`` of the output (row-major) is tile ``order[i]`` of the input; the same
    order for the whole batch, as in the reference's ``shuffle_patches``.
    """
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise UserError(
            f"D3 shuffles {patch} x {patch} patches: the input must be a multiple of {patch} "
            f"pixels on each side, got {h} x {w}; keep preprocessing.size at 224"
        )
    rows, cols = h // patch, w // patch
    tiles = images.reshape(b, c, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(b, rows * cols, c, patch, patch)[:, order]
    tiles = tiles.reshape(b, rows, cols, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return tiles.reshape(b, c, h, w)


class DiscrepancyAttention(nn.Module):
    """The reference's ``TransformerAttention``: single-head attention over the views, then fc.

    ``softmax`` runs over dim 1 of (B, views, views), the *query* axis, as in the
    reference (not the usual key axis); the attended views are concatenated.
    """

    def __init__(self, dim: int, views: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim * views, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, views, dim) -> (B,) logits."""
        q, k, v = self.query(tokens), self.key(tokens), self.value(tokens)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(k.shape[-1]), dim=1)
        return self.fc((weights @ v).flatten(1)).squeeze(1)


class D3(ClipLinearProbe):
    """Frozen CLIP ViT-L/14 ``ln_post`` CLS features of the shuffled and original image, attention head.

    Reference defaults (github.com/BigAandSmallq/D3, commit ``14f21ad``):

    * model (``models/clip_models.py``
      ``CLIPModelShuffleAttentionPenultimateLayer("ViT-L/14", shuffle_times=1,
      original_times=1, patch_size=[14])``): OpenAI ``clip.load("ViT-L/14")``,
      frozen; a forward hook on ``visual.ln_post`` keeps the normalised CLS token
      before the projection (1024-d); the image's 14 x 14 patches are shuffled
      (``F.unfold``, one ``torch.randperm`` per forward for the whole batch,
      ``F.fold``) and encoded, then the original; the features, stacked
      ``[shuffled, original]`` (B, 2, 1024), go through ``TransformerAttention``
      (``query``/``key``/``value`` Linear(1024, 1024), softmax over dim 1,
      ``fc`` Linear(2048, 1));
    * training (``train.py --fix_backbone --head_type=attention --shuffle
      --patch_size=14 --batch_size=256``, ``networks/trainer.py``, ``options/``):
      only the head trains, every head tensor initialised N(0, 0.02)
      (``init_gain``, biases too); ``BCEWithLogitsLoss``; ``AdamW`` lr 1e-4, betas
      (0.9, 0.999), weight decay 0; up to 100 epochs, lr / 10 when the validation
      accuracy stalls for 5 epochs; shorter side to 256 (bilinear), blur/JPEG
      (p 0.5 each, sigma U(0, 3), quality U{30..100}, cv2 or PIL JPEG),
      ``RandomCrop(224)``, flip, CLIP normalisation;
    * test (``validate_for_robustness.py``): ``Resize((224, 224))`` (aspect ratio
      not kept), CLIP normalisation, ``attention_head.load_state_dict(torch.load(
      "ckpt/classifier.pth"))``, ``sigmoid``.

    Where this differs: the encoder is open_clip's re-implementation of OpenAI's
    (same weights, ``quick_gelu=True``), from ``backbone_file``. In evaluation the
    shuffle order is fixed (``torch.randperm`` from a generator seeded with
    ``shuffle_seed``, the same for every call) so that a picture's score does not
    depend on the batch it came in or on the run; the reference draws a fresh order
    per batch from the global RNG, so its scores move slightly between runs.
    Training draws a fresh order every step, as the reference does. The JPEG of
    the training augmentation is PIL's only; the plateau schedule is the trainer's
    business (none by default).

    :meth:`load_weights` reads the official ``classifier.pth`` strictly (the eight
    head keys) or a deepsift checkpoint of this detector, and keeps the official
    test-time input. With OpenAI's ``ViT-L-14.pt`` as ``backbone_file`` the outputs
    match the authors' code within 1e-6 in logit (9.5e-7) on seeded weights
    (``tests/official/d3_classifier.json``).

    Args:
        patch_size: side of the shuffled tiles (the reference's ``--patch_size`` 14).
        shuffle_seed: seed of the evaluation-time shuffle order.
        init_gain: std of the head's N(0, init_gain) initialisation.
        train_preprocessing: fields of ``preprocessing`` that differ in training.
        optimizer: default AdamW(lr 1e-4, betas (0.9, 0.999), weight_decay 0).
        others: see :class:`~detectors.layers.clip.ClipLinearProbe`.
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        backbone_file: str | None = None,
        random_init: bool = False,
        quick_gelu: bool = True,
        vision_cfg: Mapping[str, Any] | None = None,
        embed_dim: int | None = None,
        patch_size: int = 14,
        shuffle_seed: int = 418,
        seed: int = 0,
        init_gain: float = 0.02,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(
                torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0
            )
        super().__init__(
            model_name=model_name,
            pretrained=pretrained,
            backbone_file=backbone_file,
            random_init=random_init,
            quick_gelu=quick_gelu,
            vision_cfg=vision_cfg,
            embed_dim=embed_dim,
            features="next_to_last",
            normalize_features=False,
            seed=seed,
            preprocessing=merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing),
            optimizer=optimizer,
            scheduler=scheduler,
        )
        if patch_size < 1:
            raise UserError(f"D3 patch_size must be a positive number of pixels, not {patch_size}")
        self.patch_size = int(patch_size)
        self.shuffle_seed = int(shuffle_seed)
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        self.attention_head = DiscrepancyAttention(self.feature_dim, views=2)
        for parameter in self.attention_head.parameters():
            nn.init.normal_(parameter, 0.0, init_gain)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return cnndetection_sample(sample, train, self.preprocessing, self.train_preprocessing)

    def shuffle_order(self, tiles: int, device: torch.device) -> torch.Tensor:
        """A fresh random order in training, the ``shuffle_seed`` order in evaluation."""
        if self.training:
            return torch.randperm(tiles).to(device)
        generator = torch.Generator().manual_seed(self.shuffle_seed)
        return torch.randperm(tiles, generator=generator).to(device)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        tiles = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
        shuffled = shuffle_patches(x, self.patch_size, self.shuffle_order(tiles, x.device))
        views = torch.stack([self.features(shuffled), self.features(x)], dim=1)
        with torch.autocast(device_type=views.device.type, enabled=False):
            return {"logits": self.attention_head(views)}

    def load_weights(self, path: str | Path) -> None:
        """The official ``classifier.pth`` (the attention head) or this detector's state dict."""
        state = strip_prefixes(read_state_dict(path), ("module.", "attention_head."))
        if set(state) != set(HEAD_KEYS):
            shown = ", ".join(sorted(state)[:6]) + (" ..." if len(state) > 6 else "")
            raise UserError(
                f"weights file {path} is not a D3 attention head: expected the keys "
                f"{', '.join(HEAD_KEYS)} as in ckpt/classifier.pth, found {shown or 'none'}; "
                f"the CLIP encoder's weights go in detector.backbone_file"
            )
        load_state_dict_strict(self.attention_head, state, f"weights file {path}")
        log.info("D3: loaded attention head %s", path)
        self.use_protocol("D3 classifier.pth", OFFICIAL_TEST_PREPROCESSING, DEFAULT_PREPROCESSING)

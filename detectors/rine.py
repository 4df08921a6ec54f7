"""RINE: intermediate CLIP encoder blocks, weighted by a Trainable Importance Estimator.

After C. Koutlis and S. Papadopoulos, "Leveraging Representations from Intermediate
Encoder-blocks for Synthetic Image Detection", ECCV 2024. Official code and
trainable-part checkpoints: github.com/mever-team/rine (``ckpt/model_*_trainable.pth``,
a plain state dict of ``alpha``, ``proj1.*``, ``proj2.*``, ``head.*``; the frozen
CLIP is not saved).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.layers.clip import CLIP_MEAN, CLIP_STD, ClipLinearProbe, vision_config
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: test time (``src/utils.py`` ``get_transforms``): ``CenterCrop(224)``, no resize,
#: CLIP ``Normalize``; training: ``RandomCrop(224)`` and a horizontal flip
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "none",
    "crop": "center",
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
    "hflip": 0.5,
}


def _projection(in_dim: int, dim: int, depth: int) -> nn.Sequential:
    """``Dropout`` then ``depth`` x (``Linear``, ``ReLU``, ``Dropout``): the reference's key layout."""
    layers: list[nn.Module] = [nn.Dropout()]
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else dim, dim), nn.ReLU(), nn.Dropout()]
    return nn.Sequential(*layers)


class RINE(ClipLinearProbe):
    """Frozen CLIP ViT-L/14; the CLS token after every block's ``ln_2``; TIE, projections, head.

    Reference defaults (github.com/mever-team/rine, ``src/models.py``, ``src/utils.py``):

    * model: OpenAI ``clip.load("ViT-L/14")`` frozen; a forward hook on every
      ``visual`` module named ``*ln_2`` keeps its output, whose CLS token
      (index 0) per block gives (B, 24, 1024); ``proj1`` (``nproj`` Linear/ReLU
      layers to ``proj_dim``, dropout 0.5) maps each; the Trainable Importance
      Estimator ``alpha`` (1, blocks, proj_dim), softmax over blocks, weights
      and sums them; ``proj2`` (``nproj`` layers) and a 3-layer ``head`` give one logit;
    * training (``get_transforms``): ``data_augment`` (the authors' blur/JPEG
      step), ``RandomCrop(224)``, flip p 0.5; loss BCE plus a supervised
      contrastive term on ``z`` and Adam lr 1e-3 as in the paper (not checked
      against the training script here); test ``CenterCrop(224)`` without resizing,
      CLIP normalisation. Checkpoint ``model_2class_trainable.pth``: ``nproj`` 4,
      ``proj_dim`` 128 (the defaults here); ``model_1class``/``model_ldm``: 4, 1024;
      ``model_4class``: 2, 1024 (``get_our_trained_model``). :meth:`load_weights` takes
      ``nproj`` and ``proj_dim`` from the file, so any of the four loads as it is.

    Verified against the authors' ``src/models.py`` + ``get_our_trained_model`` +
    ``get_transforms()[1]`` with OpenAI's ``clip`` on seeded weights
    (``tests/official/rine_official.json``, ``make_rine.py``): largest difference
    2.1e-6 in logit, float32.

    Where this differs: the encoder is open_clip's re-implementation of OpenAI's
    (same weights, ``quick_gelu=True``), from ``backbone_file``, in float32 (on a GPU
    the reference's ``clip.load`` keeps CLIP in float16); the contrastive
    term, ``data_augment`` and the reference's training schedule are not
    implemented (the trainer uses BCE, crop and flip only); dropout is the reference's (active in training only).
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
        nproj: int = 4,
        proj_dim: int = 128,
        seed: int = 0,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(torch.optim.Adam, lr=1e-3)
        super().__init__(
            model_name=model_name,
            pretrained=pretrained,
            backbone_file=backbone_file,
            random_init=random_init,
            quick_gelu=quick_gelu,
            vision_cfg=vision_cfg,
            embed_dim=embed_dim,
            features="projected",
            seed=seed,
            preprocessing=merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing),
            optimizer=optimizer,
            scheduler=scheduler,
        )
        _, cfg = vision_config(model_name, vision_cfg, embed_dim)
        self.width, self.blocks = int(cfg["width"]), int(cfg["layers"])
        self._build_trainable(int(nproj), int(proj_dim))

    def _build_trainable(self, nproj: int, proj_dim: int) -> None:
        """``alpha``, ``proj1``, ``proj2`` and ``head`` for ``nproj`` layers of ``proj_dim``."""
        self.nproj, self.proj_dim = nproj, proj_dim
        self.alpha = nn.Parameter(torch.randn(1, self.blocks, proj_dim))
        self.proj1 = _projection(self.width, proj_dim, nproj)
        self.proj2 = _projection(proj_dim, proj_dim, nproj)
        self.head = nn.Sequential(
            nn.Linear(proj_dim, proj_dim),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(proj_dim, proj_dim),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(proj_dim, 1),
        )

    def block_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images -> the CLS token after each block's ``ln_2``, (B, blocks, width)."""
        visual = self.backbone
        if next(visual.parameters()).device != images.device:
            visual.to(images.device)
        visual.eval()
        outputs: list[torch.Tensor] = []
        modules = [m for name, m in visual.named_modules() if name.endswith("ln_2")]
        handles = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o)) for m in modules]
        try:
            with torch.no_grad():
                visual(images)
        finally:
            for h in handles:
                h.remove()
        # open_clip's blocks are batch-first (B, tokens, width): CLS is token 0
        return torch.stack([o[:, 0] for o in outputs], dim=1).float()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g = self.block_tokens(batch["image"])
        with torch.autocast(device_type=g.device.type, enabled=False):
            g = self.proj1(g)
            z = self.proj2((torch.softmax(self.alpha, dim=1) * g).sum(dim=1))
            return {"logits": self.head(z).squeeze(1), "embedding": z}

    def load_weights(self, path: str | Path) -> None:
        """The official ``model_*_trainable.pth`` (alpha, proj1, proj2, head), strictly."""
        state = strip_prefixes(read_state_dict(path), ("module.",))
        if "alpha" not in state:
            raise UserError(
                f"weights file {path} is not a RINE trainable-part file (no 'alpha'); "
                f"the CLIP encoder's weights go in detector.backbone_file"
            )
        alpha = state["alpha"]
        if alpha.ndim != 3 or alpha.shape[1] != self.blocks:
            raise UserError(
                f"weights file {path}: alpha has shape {tuple(alpha.shape)}, but this model's CLIP "
                f"has {self.blocks} blocks (expected (1, {self.blocks}, proj_dim)): the file is "
                "for another CLIP (detector.model_name / detector.vision_cfg)"
            )
        # the released files differ: 1class/ldm nproj 4, proj_dim 1024; 2class 4, 128; 4class 2, 1024
        nproj = sum(1 for k in state if k.startswith("proj1.") and k.endswith(".weight"))
        proj_dim = int(alpha.shape[2])
        if (nproj, proj_dim) != (self.nproj, self.proj_dim):
            log.info(
                "RINE: %s has nproj=%d, proj_dim=%d (not %d, %d): the trainable part follows the file",
                path,
                nproj,
                proj_dim,
                self.nproj,
                self.proj_dim,
            )
            like = self.alpha
            self._build_trainable(nproj, proj_dim)
            for module in (self.proj1, self.proj2, self.head):
                module.to(device=like.device, dtype=like.dtype)
            self.alpha.data = self.alpha.data.to(device=like.device, dtype=like.dtype)
        load_state_dict_strict(self, state, f"weights file {path}")
        log.info("RINE: loaded %s", path)

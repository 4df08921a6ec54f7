"""B-Free: a DINOv2 ViT with registers, scored on five 504 px crops of the patch grid.

After F. Guillaro, G. Zingarini, B. Cavallaro, G. Poggi and L. Verdoliva, "A Bias-Free
Training Paradigm for More General AI-generated Image Detection", CVPR 2025. Official
inference code: github.com/grip-unina/B-Free (``code/networks/__init__.py``,
``code/networks/wrapper5crops.py``, ``code/main_bfree.py``); official weights
``BFREE_dino2reg4.zip`` (MD5 f3f53fa647848b16cf81c913f148a198) with ``config.yaml``
and ``model_epoch_best.pth``, ``{'model': state_dict}`` of the plain timm model
(``cls_token``, ``reg_token``, ``pos_embed`` (1, 1296, 768), ``patch_embed.proj.*``,
``blocks.*``, ``norm.*``, ``head.*``).
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
from detectors.base import Detector
from detectors.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: the reference's test input: the whole image, no resize and no crop (the network crops
#: its patch grid itself), ``ToTensor`` and ImageNet ``Normalize`` (``norm_type: resnet``)
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 504,
    "resize": "none",
    "crop": "none",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}

#: the order of the reference's crops: centre, top-left, bottom-left, bottom-right, top-right
CROPS = ("center", "top_left", "bottom_left", "bottom_right", "top_right")


def tile_to(grid: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Repeat a (B, C, h, w) grid until it covers ``rows`` x ``cols``, then keep the top-left
    ``rows`` x ``cols`` (the reference's ``replicate_wrap``: a longer side is cut too)."""
    reps_h = max(math.ceil(rows / grid.shape[-2]), 1)
    reps_w = max(math.ceil(cols / grid.shape[-1]), 1)
    return grid.repeat(1, 1, reps_h, reps_w)[..., :rows, :cols]


def five_crops(grid: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, C, h, w) patch grid -> (5B, C, rows, cols): the :data:`CROPS`, stacked crop-major."""
    if grid.shape[-2] < rows or grid.shape[-1] < cols:
        grid = tile_to(grid, rows, cols)
    top = max((grid.shape[-2] - rows) // 2, 0)
    left = max((grid.shape[-1] - cols) // 2, 0)
    return torch.cat(
        (
            grid[..., top : top + rows, left : left + cols],
            grid[..., :rows, :cols],
            grid[..., -rows:, :cols],
            grid[..., -rows:, -cols:],
            grid[..., :rows, -cols:],
        ),
        dim=0,
    )


def load_dinov2(model: nn.Module, arch: str, pretrained_file: str | None) -> None:
    """timm's DINOv2 weights of ``arch`` from a local file, every tensor but the head, strictly.

    Nothing is downloaded: without ``pretrained_file`` this fails in one line naming it.
    The file is timm's (``timm/<arch>`` on the Hugging Face hub, at the 518 px grid it was
    built with); its SHA-256 is logged (no checksum is published to check it against).
    """
    from deepsift.core.hub import sha256_file

    if not pretrained_file:
        raise UserError(
            f"detector.pretrained=true needs the DINOv2 weights of {arch} from a local file: "
            f"pass detector.pretrained_file=/path/to/{arch}.safetensors (timm's model.safetensors) "
            f"or set detector.pretrained=false"
        )
    path = Path(pretrained_file).expanduser()
    if not path.is_file():
        raise UserError(
            f"detector.pretrained_file {path} does not exist; pass the path of {arch}'s "
            f"timm weights (.safetensors or .pth) or set detector.pretrained=false"
        )
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("head.")}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    load_state_dict_strict(model, state, f"detector.pretrained_file {path}")
    log.info("B-Free: DINOv2 weights %s (sha256 %s)", path, sha256_file(path))


class BFree(Detector):
    """timm ``vit_base_patch14_reg4_dinov2`` with one logit, on five crops of its patch grid.

    Reference defaults (github.com/grip-unina/B-Free, ``code/``):

    * model: ``timm.create_model('vit_base_patch14_reg4_dinov2.lvd142m', num_classes=1)``
      with ``set_input_size(504)`` (a 36 x 36 patch grid, ``pos_embed`` resampled to it);
      ``Wrapper5crops`` runs the patch projection on the whole image, tiles the patch grid
      when it is smaller than 36 x 36 (keeping its top-left 36 x 36, so a side longer than
      504 px is then cut), takes five 36 x 36 crops of it (centre and the four corners),
      runs the rest of the ViT on each and averages the five logits;
    * test input: the whole image, no resize, ImageNet normalisation (``norm_type: resnet``
      and the ``timm_c5i504_`` arch name come from the released ``config.yaml``, which is
      in the weights zip, not in the repository); one image at a time (no batching);
    * training: the code is not released. The paper trains on 504 px crops of real images
      and of their Stable Diffusion 2.1 self-conditioned and inpainted reconstructions,
      without resizing; its loss and optimiser are not checked here.

    Where this differs: batches are scored at once (every image of a batch must have the
    same size, or pass through the any-resolution batching); the default optimiser (AdamW,
    lr 1e-5, weight decay 1e-4) is deepsift's, not the authors'; training uses BCE on the
    five-crop mean logit. For training on 504 px random crops set
    ``preprocessing.crop=center`` (``size`` 504).

    Args:
        arch: a timm ViT with a ``PatchEmbed`` (the reference's
            ``vit_base_patch14_reg4_dinov2.lvd142m``).
        crop_size: the side of each crop in pixels (the reference's 504).
        pretrained: start from timm's DINOv2 weights, read from ``pretrained_file`` only
            (nothing is downloaded; :func:`load_dinov2`). The official B-Free weights go in
            ``detector.weights`` and replace every tensor.
        pretrained_file: a local ``.safetensors``/``.pth`` of ``arch``'s timm weights.
        model_args: extra ``timm.create_model`` arguments (tests build tiny ViTs); only
            with ``pretrained=false``.
        preprocessing: a :class:`Preprocessing`, or fields overriding
            :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        arch: str = "vit_base_patch14_reg4_dinov2.lvd142m",
        crop_size: int = 504,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        model_args: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(torch.optim.AdamW, lr=1e-5, weight_decay=1e-4)
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        import timm

        if model_args and pretrained:
            raise UserError(
                "detector.model_args change the architecture, so the DINOv2 weights would not "
                "fit; set detector.pretrained=false or drop detector.model_args"
            )
        if not timm.is_model(arch):
            raise UserError(f"detector.arch {arch!r} is not a timm model name")
        self.model = timm.create_model(
            arch, pretrained=False, num_classes=1, **dict(model_args or {})
        )
        if pretrained:
            load_dinov2(self.model, arch, pretrained_file)
        elif pretrained_file:
            log.warning(
                "detector.pretrained_file=%s is ignored: detector.pretrained=false", pretrained_file
            )
        patch_embed = getattr(self.model, "patch_embed", None)
        if not isinstance(patch_embed, timm.layers.PatchEmbed) or not hasattr(
            self.model, "set_input_size"
        ):
            raise UserError(
                f"detector.arch {arch!r} is not a timm ViT with a PatchEmbed; B-Free needs one "
                f"(e.g. vit_base_patch14_reg4_dinov2.lvd142m)"
            )
        self.model.set_input_size(img_size=crop_size)
        self.arch = arch
        self.crop_size = crop_size

    def crop_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) -> patch tokens of the five crops, (5B, N, C)."""
        patch_embed = self.model.patch_embed
        rows, cols = patch_embed.grid_size
        grid = five_crops(patch_embed.proj(images), rows, cols)
        return patch_embed.norm(grid.flatten(2).transpose(1, 2))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        m = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(self.crop_tokens(images))))
        x = m.norm(m.blocks(x))
        features = m.forward_head(x, pre_logits=True)
        logits = m.head(features)  # forward_head's pre_logits already went through head_drop
        n = images.shape[0]
        return {
            "logits": logits.view(len(CROPS), n).mean(0),
            "embedding": features.view(len(CROPS), n, -1).mean(0),
        }

    def load_weights(self, path: str | Path) -> None:
        """The official ``model_epoch_best.pth`` (``{'model': timm state dict}``), strictly."""
        # a deepsift checkpoint of this detector holds the same tensors under ``model.``
        state = strip_prefixes(read_state_dict(path), ("model.",))
        if "patch_embed.proj.weight" not in state:
            raise UserError(
                f"weights file {path} is not a B-Free/timm ViT state dict (no "
                f"'patch_embed.proj.weight'); pass BFREE_dino2reg4/model_epoch_best.pth"
            )
        load_state_dict_strict(self.model, state, f"weights file {path}")
        log.info("B-Free: loaded %s", path)

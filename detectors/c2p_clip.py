"""C2P-CLIP: a CLIP ViT-L/14 image encoder tuned with category common prompts, and a linear head.

After C. Tan, R. Tao, H. Liu, G. Gu, B. Wu, Y. Zhao and Y. Wei, "C2P-CLIP: Injecting
Category Common Prompt in CLIP to Enhance Generalization in Deepfake Detection", AAAI 2025.
Official inference code: github.com/chuangchuangtan/C2P-CLIP-DeepfakeDetection
(``inference.py``, ``data.py``; commit ``27b52325df1d80cf2291ef83a5c59f5fe715052f``).
Official weights ``C2P_CLIP_release_20240901.zip``: the ``state_dict()`` of the authors'
``C2P_CLIP`` module (Hugging Face ``CLIPModel`` with the text tower deleted, LoRA merged
into the image encoder), loaded there with ``strict=True``; its keys are
``model.vision_model.*`` (HF CLIP vision names: ``embeddings.class_embedding``,
``embeddings.patch_embedding.weight``, ``pre_layrnorm.*``, ``encoder.layers.N.*``,
``post_layernorm.*``), ``model.visual_projection.weight`` (768 x 1024) and
``model.fc.weight`` / ``model.fc.bias`` (1 x 768, 1). That layout is read from the code
(the release is not reachable offline); the authors' ``C2P_CLIP`` and ``data.py`` transform,
run on a tiny tower with seeded weights in that layout, give deepsift's logits to 1e-6
(``tests/official/make_c2p_clip.py``, ``c2p_clip_tiny.json``).
"""

from __future__ import annotations

import functools
import io
import logging
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.clip import CLIP_MEAN, CLIP_STD
from detectors.layers.hf_files import read_hf_clip_vision
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: ``data.py`` at test time: ``Resize(224)`` (shorter side, PIL bilinear), ``CenterCrop(224)``,
#: ``ToTensor``, CLIP ``Normalize``
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "shorter",
    "resize_to": 224,
    "interpolation": "bilinear",
    "crop": "center",
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
}

#: ``openai/clip-vit-large-patch14``'s vision tower (the reference's ``CLIPModel``)
VIT_L14: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


#: what to pass when CLIP's weights are needed and absent (nothing is downloaded)
CLIP_HINT = (
    "pass detector.clip_file=/path/to/clip-vit-large-patch14/model.safetensors "
    "(Hugging Face openai/clip-vit-large-patch14) or set detector.pretrained=false"
)


class C2PCLIPNet(nn.Module):
    """The authors' ``C2P_CLIP.model``: HF CLIP vision tower, ``visual_projection``, ``fc``.

    Attribute names follow the reference, so its state dict (``model.`` stripped) loads
    into this module as it is.
    """

    def __init__(self, vision: Mapping[str, Any]) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(**dict(vision))
        self.vision_model = CLIPVisionModel(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.fc = nn.Linear(config.projection_dim, 1)
        nn.init.normal_(self.fc.weight, 0.0, 0.02)  # the reference's init
        nn.init.zeros_(self.fc.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the L2-normalised image embedding (B, projection_dim)."""
        pooled = self.vision_model(pixel_values=images).pooler_output  # post_layernorm(CLS)
        return F.normalize(self.visual_projection(pooled), dim=-1)


def read_release(path: str | Path) -> dict[str, Any]:
    """The tensors of an official file: a ``torch.save`` file, or the release zip holding one."""
    path = Path(path).expanduser()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) == 1 and not members[0].is_dir():  # torch.hub's legacy zip
                data = io.BytesIO(archive.read(members[0]))
                try:
                    state = torch.load(data, map_location="cpu", weights_only=True)
                except Exception as exc:
                    raise UserError(
                        f"weights file {path}: its member {members[0].filename} is not a torch "
                        f"state dict ({type(exc).__name__}); pass C2P_CLIP_release_20240901.zip"
                    ) from None
                return strip_prefixes(state)
    return read_state_dict(path)


def load_clip_vision(net: C2PCLIPNet, clip_file: str | None) -> None:
    """OpenAI CLIP ViT-L/14's image encoder (Hugging Face layout) from a local file, strictly.

    Nothing is downloaded: without ``clip_file`` this fails in one line naming it. The
    file is ``openai/clip-vit-large-patch14``'s ``model.safetensors`` (or
    ``pytorch_model.bin``; a folder holding one also works); only its ``vision_model.*``
    and ``visual_projection.weight`` tensors are kept. Its SHA-256 is logged (no checksum
    is published to check it against).
    """
    if not clip_file:
        raise UserError(
            f"detector.pretrained=true needs CLIP ViT-L/14 from a local file: {CLIP_HINT}"
        )
    path, keep = read_hf_clip_vision(
        clip_file,
        "detector.clip_file",
        CLIP_HINT,
        "C2P-CLIP",
        prefixes=("vision_model.", "visual_projection."),
    )
    keep.update({f"fc.{k}": v for k, v in net.fc.state_dict().items()})
    load_state_dict_strict(net, keep, f"detector.clip_file {path}")


class C2PCLIP(Detector):
    """CLIP ViT-L/14 image embedding, L2-normalised, and a linear head ``fc`` (one logit).

    Reference defaults (github.com/chuangchuangtan/C2P-CLIP-DeepfakeDetection):

    * model (``inference.py``, ``C2P_CLIP``): ``CLIPModel.from_pretrained('openai/clip-vit-
      large-patch14')`` without its text tower; the logit is ``fc(e / |e|)`` with ``e =
      visual_projection(pooler_output)`` (the ``post_layernorm``-ed CLS token), ``fc`` a
      ``Linear(768, 1)`` initialised ``N(0, 0.02)``; the released weights hold the whole
      image encoder (the paper's LoRA, merged) and ``fc``;
    * test input (``data.py``): PIL RGB, ``Resize(224)`` (shorter side, bilinear),
      ``CenterCrop(224)``, ``ToTensor``, CLIP ``Normalize``; sigmoid > 0.5 is fake;
    * training: the code is not released. The paper tunes LoRA adapters of the image
      encoder with a BCE loss plus a contrastive loss against text features of captions
      into which "Deepfake"/"Camera" category prompts are injected (ClipCap captions);
      its optimiser and LoRA rank are not checked here.

    Where this differs: no LoRA and no text branch: deepsift trains ``fc`` alone (the
    reference module freezes ``vision_model`` and ``visual_projection``) with BCE, or the
    whole encoder with ``train_encoder=true``; the default optimiser (AdamW, lr 1e-4,
    weight decay 0) is deepsift's.

    Args:
        vision: ``transformers.CLIPVisionConfig`` fields overriding :data:`VIT_L14`
            (tests build tiny towers); only with ``pretrained=false``.
        pretrained: start from OpenAI's CLIP ViT-L/14, read from ``clip_file`` only
            (:func:`load_clip_vision`). The official C2P-CLIP file goes in
            ``detector.weights`` and replaces every tensor.
        clip_file: ``openai/clip-vit-large-patch14``'s ``model.safetensors`` (or its folder).
        train_encoder: train the image encoder and projection too, not ``fc`` alone.
        preprocessing: a :class:`Preprocessing`, or fields overriding
            :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        vision: Mapping[str, Any] | None = None,
        pretrained: bool = False,
        clip_file: str | None = None,
        train_encoder: bool = False,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.0)
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if vision and pretrained:
            raise UserError(
                "detector.vision changes the architecture, so CLIP ViT-L/14's weights would not "
                "fit; set detector.pretrained=false or drop detector.vision"
            )
        if pretrained and not clip_file:  # before building the 300M-parameter tower
            raise UserError(
                f"detector.pretrained=true needs CLIP ViT-L/14 from a local file: {CLIP_HINT}"
            )
        try:
            self.model = C2PCLIPNet({**VIT_L14, **dict(vision or {})})
        except TypeError as exc:
            raise UserError(f"detector.vision: {exc}") from None
        if pretrained:
            load_clip_vision(self.model, clip_file)
        elif clip_file:
            log.warning("detector.clip_file=%s is ignored: detector.pretrained=false", clip_file)
        self.train_encoder = train_encoder
        self.model.vision_model.requires_grad_(train_encoder)
        self.model.visual_projection.requires_grad_(train_encoder)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embedding = self.model.embed(batch["image"])
        return {"logits": self.model.fc(embedding)[:, 0], "embedding": embedding}

    def load_weights(self, path: str | Path) -> None:
        """The official ``C2P_CLIP_release_20240901.zip`` (``model.*`` keys), strictly."""
        # a deepsift checkpoint of this detector holds the same tensors under the same names
        state = strip_prefixes(read_release(path), ("model.",))
        if "fc.weight" not in state or "visual_projection.weight" not in state:
            raise UserError(
                f"weights file {path} is not a C2P-CLIP state dict (no 'model.fc.weight' / "
                f"'model.visual_projection.weight'); pass C2P_CLIP_release_20240901.zip"
            )
        load_state_dict_strict(self.model, state, f"weights file {path}")
        log.info("C2P-CLIP: loaded %s", path)

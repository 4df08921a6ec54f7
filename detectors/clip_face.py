"""ClipFace: a linear probe on frozen CLIP ViT-B/16 features of face crops.

The CLIP baseline of face-forgery benchmarks, after DeepfakeBench's ``clip``
detector (``training/detectors/clip_detector.py``, ``training/config/detector/clip.yaml``;
Yan et al., "DeepfakeBench", NeurIPS 2023 Datasets and Benchmarks; CLIP:
Radford et al., ICML 2021), with the backbone frozen as in linear-probe
detectors (Ojha et al., CVPR 2023: :mod:`detectors.univfd`). A frozen image
encoder trained on 400M image-text pairs has no forgery-specific features to
overfit, so a single hyperplane on its representation is a strong, cheap
baseline that is hard to overfit to one manipulation method.

DeepfakeBench's reference:

* model: Hugging Face ``openai/clip-vit-base-patch16`` ``CLIPModel.vision_model``;
  the feature is ``pooler_output``: the class token after the final LayerNorm
  (768-d, *before* the 512-d image projection); head ``nn.Linear(768, 2)``
  (softmax, cross-entropy);
* training: the **whole** encoder is fine-tuned with the head (every parameter
  goes to the optimiser): Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay
  5e-4, batch 32, 10 epochs, no scheduler;
* data: faces resized to 224 x 224 (bicubic), normalised with mean = std = 0.5
  (not CLIP's statistics); augmentation (albumentations, ``use_data_augmentation:
  true``): flip (p 0.5), rotation +-10 degrees (p 0.5), Gaussian blur with kernels
  3-7 (p 0.5; sigma 0.8-1.4), isotropic resize, one of brightness/contrast +-0.1,
  FancyPCA, hue/saturation (p 0.5), JPEG quality 40-100 (p 0.5).

Where this differs, and why:

* the encoder is **frozen** (a linear probe): only ``fc`` trains. Fine-tuning 86M
  parameters on one dataset is what makes detectors forget CLIP's general
  features; a frozen encoder also keeps checkpoints at a few kilobytes. The
  feature is the same (``features="next_to_last"``: open_clip's
  ``VisionTransformer`` with ``proj = None`` returns ``ln_post`` of the class
  token, which is HF's ``pooler_output``); ``features="projected"`` takes the
  512-d image embedding instead;
* the head has one output, the fake logit (``w1 - w0`` of a two-class head;
  BCE on it equals the two-class cross-entropy);
* CLIP's own preprocessing, since the encoder does not adapt: bicubic resize of
  the shorter side to 224, centre crop 224 (the whole crop for square face
  crops), CLIP mean/std;
* training augmentation: flip, Gaussian blur (p 0.5, sigma U(0.8, 1.4)) and JPEG
  (p 0.5, quality 40-100) after the resize, as DeepfakeBench's order; rotation,
  colour jitter and isotropic resize are left out (no albumentations
  dependency);
* ViT-B/16 because DeepfakeBench's baseline uses it (ViT-L/14, as UnivFD, is
  ``model_name=ViT-L-14``); the encoder is built offline with open_clip and its
  weights come from a local ``backbone_file`` (OpenAI ``ViT-B-16.pt`` or an
  open_clip file), see :mod:`detectors.layers.clip`.

No trained head is published for this setting (DeepfakeBench released no CLIP
weights, and its head belongs to a fine-tuned encoder); :meth:`load_weights`
takes this detector's checkpoints or a ``{weight, bias}`` head of shape (1, D).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from detectors.base import DEEPFAKEBENCH_ADAM
from detectors.layers.clip import CLIP_MEAN, CLIP_STD, ClipLinearProbe
from detectors.layers.cnndetection import cnndetection_sample
from detectors.preprocessing import Preprocessing, merge_preprocessing, train_variant

#: CLIP's preprocessing: bicubic resize of the shorter side to 224, centre crop, CLIP mean/std
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "shorter",
    "resize_to": 224,
    "interpolation": "bicubic",
    "crop": "center",
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
    "hflip": 0.5,
    "blur_sigma": (0.8, 1.4),
    "jpeg_quality": (40, 100),
}
#: what training adds (DeepfakeBench's blur and JPEG probabilities)
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = {"blur_prob": 0.5, "jpeg_prob": 0.5}


class ClipFace(ClipLinearProbe):
    """Frozen CLIP ViT-B/16 pooled class token (768-d) and ``fc = nn.Linear(768, 1)``.

    Args:
        features: ``"next_to_last"`` (DeepfakeBench's ``pooler_output``) or ``"projected"``.
        normalize_features: L2-normalise the features before ``fc`` (off, as the reference).
        train_preprocessing: fields of ``preprocessing`` that differ in training.
        optimizer: default Adam(lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 5e-4).
        others: see :class:`~detectors.layers.clip.ClipLinearProbe`.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str | None = "openai",
        backbone_file: str | None = None,
        random_init: bool = False,
        quick_gelu: bool = True,
        vision_cfg: Mapping[str, Any] | None = None,
        embed_dim: int | None = None,
        features: str = "next_to_last",
        normalize_features: bool = False,
        seed: int = 0,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            model_name=model_name,
            pretrained=pretrained,
            backbone_file=backbone_file,
            random_init=random_init,
            quick_gelu=quick_gelu,
            vision_cfg=vision_cfg,
            embed_dim=embed_dim,
            features=features,
            normalize_features=normalize_features,
            seed=seed,
            preprocessing=merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing),
            optimizer=optimizer,
            scheduler=scheduler,
        )
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        self.fc = nn.Linear(self.feature_dim, 1)  # PyTorch's default init, as the reference head

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """Resize, then (training) blur/JPEG, crop and flip, then CLIP normalisation."""
        return cnndetection_sample(sample, train, self.preprocessing, self.train_preprocessing)

    def load_weights(self, path: str | Path) -> None:
        """This detector's state dict (``fc.weight``, ``fc.bias``) or a bare ``{weight, bias}`` head."""
        state = strip_prefixes(read_state_dict(path), ("module.", "model."))
        if set(state) == {"weight", "bias"}:
            state = {f"fc.{k}": v for k, v in state.items()}
        load_state_dict_strict(
            self,
            state,
            f"weights file {path} (the CLIP encoder's weights go in detector.backbone_file)",
        )

"""VideoMAE: a masked-autoencoder-pretrained video ViT on face clips, as DeepfakeBench trains it.

After Z. Tong, Y. Song, J. Wang and L. Wang, "VideoMAE: Masked Autoencoders are
Data-Efficient Learners for Self-Supervised Video Pre-Training", NeurIPS 2022 (code:
github.com/MCG-NJU/VideoMAE), in the form DeepfakeBench (github.com/SCLBD/DeepfakeBench,
``training/detectors/videomae_detector.py``) fine-tunes as a video deepfake detector:
transformers' ``VideoMAEModel`` (the self-supervised ViT-B/16 encoder of
``MCG-NJU/videomae-base``: 2 x 16 x 16 tubelets, fixed sinusoidal position table, joint
space-time attention over all tokens), the mean of its last hidden state, ``fc_norm``, a
linear head.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.clips import (
    checked_clip,
    clip_sampling,
    cv2_clip_preprocessing,
    deepfakebench_clip_augment,
)
from detectors.layers.hf_files import hf_weight_file
from detectors.layers.hf_video import (
    check_start,
    face_clip,
    start_backbone,
    two_class_head_as_fake_logit,
)
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: DeepfakeBench ``videomae.yaml``: ``resolution`` 224, ``mean`` = ``std`` = 0.5; frames
#: resized by ``cv2.resize`` (``INTER_CUBIC``)
DEFAULT_PREPROCESSING: dict[str, Any] = cv2_clip_preprocessing(
    "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
)

#: what to pass when the self-supervised start is asked for (nothing is downloaded)
BACKBONE_HINT = (
    "pass detector.backbone_file=/path/to/videomae-base/pytorch_model.bin (Hugging Face "
    "MCG-NJU/videomae-base, or its folder) or set detector.pretrained=false"
)

#: transformers < 5 named the query/value biases of VideoMAE's attention q_bias / v_bias
_LEGACY_BIAS = re.compile(r"(attention\.attention)\.(q|v)_bias$")


def _current_names(state: Mapping[str, Any]) -> dict[str, Any]:
    """``...attention.attention.q_bias`` / ``v_bias`` (transformers 4, the released files)
    -> ``query.bias`` / ``value.bias`` (transformers 5); other keys unchanged."""
    names = {"q": "query", "v": "value"}
    return {
        _LEGACY_BIAS.sub(lambda m: f"{m.group(1)}.{names[m.group(2)]}.bias", k): v
        for k, v in state.items()
    }


class VideoMAE(Detector):
    """transformers' ``VideoMAEModel`` (``backbone``), token mean, ``fc_norm``, ``head`` (one logit).

    Reference defaults (DeepfakeBench ``videomae_detector.py`` and
    ``training/config/detector/videomae.yaml``, commit
    8a4a7bf5e966c5c5618bc27d1719c3683eae9a04):

    * model: ``VideoMAEModel.from_pretrained("MCG-NJU/videomae-base")`` (hard-coded): ViT-B/16,
      12 layers, width 768, 12 heads, MLP 3072, LayerNorm eps 1e-12, tubelets of 2 frames x
      16 x 16 px, 16 frames of 224 x 224 (1568 tokens), fixed sin-cos positions, query/value
      biases only; as a pre-training checkpoint it is configured ``use_mean_pooling: false``
      (transformers' conversion script), so the encoder ends with its ``layernorm``; the
      feature is ``fc_norm(last_hidden_state.mean(1))`` with ``fc_norm = nn.LayerNorm(768)``
      (eps 1e-5), then ``head = nn.Linear(768, 2)``, softmax class 1 = fake;
    * input: clips of ``clip_size`` 16 consecutive frames (``frame_num`` 32 per video cut into
      clips), each face frame resized to 224 x 224 (``cv2.INTER_CUBIC``), ``Normalize(0.5,
      0.5)``, stacked (B, T, C, H, W);
    * augmentation (one draw per video, replayed on every frame): flip p 0.5, rotation +-10
      degrees p 0.5, Gaussian blur kernel 3-7 p 0.5, brightness/contrast +-0.1 p 0.5, JPEG
      quality 40-100 p 0.5;
    * loss: cross-entropy on the 2 logits; Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight
      decay 5e-4, no schedule, batch 8, 10 epochs.

    Where this differs: one fake logit ``z_fake - z_real`` trained with binary cross-entropy
    (DeepfakeBench's 2-row head loads as that difference, so scores are identical); the
    augmentation is torchvision's (:func:`~detectors.layers.clips.deepfakebench_clip_augment`:
    black rotation fill, ``ColorJitter``, no FancyPCA/HSV); the self-supervised start comes
    from a local file only (``backbone_file``) and a fresh config is randomly initialised
    (``pretrained: false``) so it builds offline. The backbone's ``num_frames`` and
    ``image_size`` follow ``clip_len`` and the preprocessing size (they only size the fixed
    position table; no weight depends on them).

    :meth:`load_weights` reads DeepfakeBench's ``videomae_best.pth`` (the detector's
    ``state_dict``: ``backbone.*`` = ``VideoMAEModel``'s keys, ``fc_norm``, ``head`` (2, 768);
    ``module.``-prefixed from DDP; the attention biases under transformers 4's names
    ``q_bias``/``v_bias`` or transformers 5's ``query.bias``/``value.bias``) or a deepsift
    state dict, strictly. The outputs match DeepfakeBench's ``VideoMAEDetector`` run on seeded
    weights (``tests/official/make_videomae.py``, ``tests/official/video/videomae_dfb.json``;
    5.5e-7 in logit at full size, 16 frames of 224 px, ``tests/official/full_size_video.py``).

    Args:
        clip_len: frames per clip (``clip_size`` 16); a multiple of ``tubelet_size``.
        clip_stride: frame step within a clip (1: consecutive frames).
        backbone: ``transformers.VideoMAEConfig`` fields overriding ``videomae-base``'s
            (``VideoMAEConfig(use_mean_pooling=False)``); tests build tiny ones.
        pretrained: start from ``MCG-NJU/videomae-base``, read from ``backbone_file``.
        backbone_file: ``MCG-NJU/videomae-base``'s ``pytorch_model.bin`` or
            ``model.safetensors`` (or the folder holding one): its ``videomae.*`` tensors
            load strictly; the pre-training decoder (``decoder.*``, ``encoder_to_decoder``,
            ``mask_token``) is dropped.
        train_augment: the training augmentation (off: the eval transform in training).
        preprocessing: a :class:`Preprocessing`, or fields overriding
            :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`.
    """

    input_kind = "clip"

    def __init__(
        self,
        clip_len: int = 16,
        clip_stride: int = 1,
        backbone: Mapping[str, Any] | None = None,
        pretrained: bool = False,
        backbone_file: str | None = None,
        train_augment: bool = True,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(
            preprocessing=merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing),
            optimizer=optimizer or DEEPFAKEBENCH_ADAM,
            scheduler=scheduler,
        )
        self.clip_len, self.clip_stride = clip_sampling(clip_len, clip_stride)
        # before building the 86M-parameter model
        check_start(backbone, pretrained, backbone_file, "MCG-NJU/videomae-base", BACKBONE_HINT)
        from transformers import VideoMAEConfig, VideoMAEModel

        self.train_augment = bool(train_augment)
        fields = {"use_mean_pooling": False, **dict(backbone or {})}
        for key, value in (("num_frames", self.clip_len), ("image_size", self.preprocessing.size)):
            if fields.get(key, value) != value:
                raise UserError(
                    f"VideoMAE: detector.backbone.{key}={fields[key]} but the clips have "
                    f"{value} (detector.clip_len / preprocessing.size): drop {key}"
                )
            fields[key] = value
        config = VideoMAEConfig(**fields)
        if self.clip_len % config.tubelet_size:
            raise UserError(
                f"VideoMAE: detector.clip_len={self.clip_len} is not a multiple of the "
                f"tubelet size {config.tubelet_size}"
            )
        self.backbone = VideoMAEModel(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, 1)
        self._augment = deepfakebench_clip_augment()
        start_backbone(self.load_backbone, pretrained, backbone_file)

    # -- data ------------------------------------------------------------------
    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["frames"]`` (T PIL RGB face crops) -> ``{"clip": (T, 3, size, size)}``."""
        augment = self._augment if train and self.train_augment else None
        p = self.preprocessing
        return {
            "clip": face_clip(sample, self.clip_len, p.size, p.mean, p.std, augment, "VideoMAE")
        }

    # -- model -----------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = checked_clip(batch["clip"], "VideoMAE")
        tokens = self.backbone(pixel_values=clip).last_hidden_state
        return {"logits": self.head(self.fc_norm(tokens.mean(1)))[:, 0]}

    # -- weights -----------------------------------------------------------------
    def load_backbone(self, path: str | Path) -> None:
        """``MCG-NJU/videomae-base``'s pre-training file into ``backbone``, strictly."""
        from deepsift.core.hub import sha256_file

        file = hf_weight_file(path, BACKBONE_HINT)
        state = read_state_dict(file)
        if not any(k.startswith("videomae.") for k in state):
            raise UserError(
                f"detector.backbone_file {file} has no videomae.* tensors: not a transformers "
                f"VideoMAE file; {BACKBONE_HINT}"
            )
        keep = {
            k.removeprefix("videomae."): v for k, v in state.items() if k.startswith("videomae.")
        }
        dropped = sorted({k.split(".")[0] for k in state if not k.startswith("videomae.")})
        load_state_dict_strict(
            self.backbone, _current_names(keep), f"detector.backbone_file {file}"
        )
        log.info(
            "VideoMAE: backbone %s (sha256 %s; dropped %s)",
            file,
            sha256_file(file),
            ", ".join(dropped) or "nothing",
        )

    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench's ``videomae_best.pth`` (2-row ``head``) or a deepsift state dict.

        Both strictly; DeepfakeBench's head becomes the fake logit ``z_1 - z_0``.
        """
        source = f"weights file {path}"
        state = _current_names(strip_prefixes(read_state_dict(path), ("module.",)))
        head = state.get("head.weight")
        if not torch.is_tensor(head) or "fc_norm.weight" not in state:
            raise UserError(
                f"{source} is not a VideoMAE file: no fc_norm.weight and head.weight as in "
                "DeepfakeBench's videomae_best.pth"
            )
        two_class_head_as_fake_logit(state, "VideoMAE", path)
        load_state_dict_strict(self, state, source)

"""X-CLIP: a CLIP image tower with cross-frame message tokens, as DeepfakeBench trains it.

After B. Ni, H. Peng, M. Chen, S. Zhang, G. Meng, J. Fu, S. Xiang and H. Ling, "Expanding
Language-Image Pretrained Models for General Video Recognition", ECCV 2022 (code:
github.com/microsoft/VideoX, X-CLIP), in the form DeepfakeBench (github.com/SCLBD/
DeepfakeBench, ``training/detectors/xclip_detector.py``) fine-tunes as a video deepfake
detector: transformers' ``XCLIPVisionModel`` (the "cross-frame communication transformer":
a CLIP ViT whose every block first lets one message token per frame attend across the
frames of a group, then runs CLIP's per-frame attention with it), each frame's pooled CLS
token, averaged over the clip, ``fc_norm``, a linear head. No text branch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.clips import checked_clip, clip_sampling, cv2_clip_preprocessing
from detectors.layers.hf_files import hf_weight_file
from detectors.layers.hf_video import (
    check_start,
    face_clip,
    start_backbone,
    two_class_head_as_fake_logit,
)
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: DeepfakeBench ``xclip.yaml``: ``resolution`` 224, ``mean`` = ``std`` = 0.5; frames resized
#: by ``cv2.resize`` (``INTER_CUBIC``)
DEFAULT_PREPROCESSING: dict[str, Any] = cv2_clip_preprocessing(
    "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
)

#: what to pass when the X-CLIP start is asked for (nothing is downloaded)
BACKBONE_HINT = (
    "pass detector.backbone_file=/path/to/xclip-base-patch32/pytorch_model.bin (Hugging Face "
    "microsoft/xclip-base-patch32, or its folder) or set detector.pretrained=false"
)


def _vision_tensors(state: Mapping[str, Any]) -> dict[str, Any]:
    """transformers 4's ``vision_model.*`` (an ``XCLIPModel`` file, or an ``XCLIPVisionModel``
    saved under transformers 4) -> transformers 5's ``XCLIPVisionModel`` names; the
    ``position_ids`` buffer some versions saved is dropped (it is ``arange``)."""
    if any(k.startswith("vision_model.") for k in state):
        state = {
            k.removeprefix("vision_model."): v
            for k, v in state.items()
            if k.startswith("vision_model.")
        }
    return {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}


class XCLIP(Detector):
    """transformers' ``XCLIPVisionModel`` (``backbone``), frame-mean of its pooled CLS,
    ``fc_norm``, ``head`` (one fake logit).

    Reference defaults (DeepfakeBench ``xclip_detector.py`` and
    ``training/config/detector/xclip.yaml``, commit 8a4a7bf5e966c5c5618bc27d1719c3683eae9a04):

    * model: ``XCLIPVisionModel.from_pretrained(config['pretrained'])``; the YAML's
      ``pretrained`` names an Xception file (``xception-b5690688.pth``), so which X-CLIP
      DeepfakeBench started from is not recorded; the head (``nn.Linear(768, 2)``) and
      ``fc_norm`` (``nn.LayerNorm(768)``, eps 1e-5) fix a width of 768, i.e. a ViT-B
      (``microsoft/xclip-base-patch32`` / ``-patch16``). The (B, T, C, H, W) clip is flattened
      to B*T frames; ``pooler_output`` (the ``post_layernorm``-ed CLS of each frame) is
      reshaped (B, T, 768), averaged over T, ``fc_norm``, ``head``; softmax class 1 = fake.
      The message tokens attend across groups of the model's ``num_frames`` consecutive
      frames (8 for the base models), so a 32-frame clip is four independent groups;
    * input: clips of ``clip_size`` 32 consecutive frames (``frame_num`` 150 train / 300 test
      per video), each face frame resized to 224 x 224 (``cv2.INTER_CUBIC``),
      ``Normalize(0.5, 0.5)`` (not CLIP's statistics);
    * augmentation: none (``use_data_augmentation: false``);
    * loss: cross-entropy on the 2 logits; Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight
      decay 5e-4, no schedule, batch 8, 10 epochs.

    Where this differs: one fake logit ``z_fake - z_real`` trained with binary cross-entropy
    (DeepfakeBench's 2-row head loads as that difference, so scores are identical); the
    default backbone is ``XCLIPVisionConfig()`` (``microsoft/xclip-base-patch32``'s tower,
    ``num_frames`` 8) and the default clip 8 frames, one message group (DeepfakeBench's 32
    frames are accepted: ``clip_len`` must be a multiple of ``num_frames``); the start comes
    from a local file only (``backbone_file``) and a fresh config is randomly initialised
    (``pretrained: false``) so it builds offline.

    :meth:`load_weights` reads DeepfakeBench's ``xclip_best.pth`` (the detector's
    ``state_dict``: ``backbone.*`` = ``XCLIPVisionModel``'s keys, under transformers 4's
    ``backbone.vision_model.*`` or 5's ``backbone.*``; ``fc_norm``; ``head`` (2, 768);
    ``module.``-prefixed from DDP) or a deepsift state dict, strictly. The outputs match
    DeepfakeBench's ``XCLIPDetector`` run on seeded weights (``tests/official/make_xclip.py``,
    ``tests/official/video/xclip_dfb.json``; 1.0e-6 in logit at full size on a 32-frame clip,
    four message groups, ``tests/official/full_size_video.py``).

    Args:
        clip_len: frames per clip (8; DeepfakeBench's ``clip_size`` 32); a multiple of the
            backbone's ``num_frames``.
        clip_stride: frame step within a clip (1: consecutive frames).
        backbone: ``transformers.XCLIPVisionConfig`` fields overriding its defaults
            (``microsoft/xclip-base-patch32``'s vision tower); tests build tiny ones.
        pretrained: start from an X-CLIP checkpoint, read from ``backbone_file``.
        backbone_file: an ``XCLIPModel`` file (``microsoft/xclip-base-patch32``'s
            ``pytorch_model.bin`` / ``model.safetensors``, or its folder): its
            ``vision_model.*`` tensors load strictly; the text tower, prompts, MIT and
            projections are dropped.
        preprocessing: a :class:`Preprocessing`, or fields overriding
            :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`.
    """

    input_kind = "clip"

    def __init__(
        self,
        clip_len: int = 8,
        clip_stride: int = 1,
        backbone: Mapping[str, Any] | None = None,
        pretrained: bool = False,
        backbone_file: str | None = None,
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
        # before building the 123M-parameter model
        check_start(backbone, pretrained, backbone_file, "an X-CLIP checkpoint", BACKBONE_HINT)
        from transformers import XCLIPVisionConfig, XCLIPVisionModel

        fields = dict(backbone or {})
        fields.setdefault("image_size", self.preprocessing.size)
        config = XCLIPVisionConfig(**fields)
        if self.clip_len % config.num_frames:
            raise UserError(
                f"X-CLIP: detector.clip_len={self.clip_len} is not a multiple of the backbone's "
                f"num_frames={config.num_frames} (its message tokens attend across groups of "
                "that many frames)"
            )
        self.backbone = XCLIPVisionModel(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, 1)
        start_backbone(self.load_backbone, pretrained, backbone_file)

    # -- data ------------------------------------------------------------------
    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["frames"]`` (T PIL RGB face crops) -> ``{"clip": (T, 3, size, size)}``.

        The same at training time: DeepfakeBench trains X-CLIP without augmentation.
        """
        p = self.preprocessing
        return {"clip": face_clip(sample, self.clip_len, p.size, p.mean, p.std, None, "X-CLIP")}

    # -- model -----------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = checked_clip(batch["clip"], "X-CLIP")
        b, t = clip.shape[:2]
        if t % self.backbone.config.num_frames:
            raise UserError(
                f"X-CLIP: clips of {t} frames, not a multiple of the backbone's num_frames="
                f"{self.backbone.config.num_frames}"
            )
        pooled = self.backbone(pixel_values=clip.flatten(0, 1)).pooler_output
        return {"logits": self.head(self.fc_norm(pooled.reshape(b, t, -1).mean(1)))[:, 0]}

    # -- weights -----------------------------------------------------------------
    def load_backbone(self, path: str | Path) -> None:
        """An ``XCLIPModel`` file's vision tower into ``backbone``, strictly."""
        from deepsift.core.hub import sha256_file

        file = hf_weight_file(path, BACKBONE_HINT)
        state = read_state_dict(file)
        if not any(k.startswith("vision_model.") for k in state):
            raise UserError(
                f"detector.backbone_file {file} has no vision_model.* tensors: not an X-CLIP "
                f"file; {BACKBONE_HINT}"
            )
        load_state_dict_strict(
            self.backbone, _vision_tensors(state), f"detector.backbone_file {file}"
        )
        log.info("X-CLIP: backbone %s (sha256 %s)", file, sha256_file(file))

    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench's ``xclip_best.pth`` (2-row ``head``) or a deepsift state dict.

        Both strictly; DeepfakeBench's head becomes the fake logit ``z_1 - z_0``.
        """
        source = f"weights file {path}"
        state = strip_prefixes(read_state_dict(path), ("module.",))
        head = state.get("head.weight")
        if not torch.is_tensor(head) or "fc_norm.weight" not in state:
            raise UserError(
                f"{source} is not an X-CLIP file: no fc_norm.weight and head.weight as in "
                "DeepfakeBench's xclip_best.pth"
            )
        tower = _vision_tensors(
            {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        )
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        state |= {f"backbone.{k}": v for k, v in tower.items()}
        two_class_head_as_fake_logit(state, "X-CLIP", path)
        load_state_dict_strict(self, state, source)

"""TimeSformer: divided space-time attention on face clips, as DeepfakeBench trains it.

After G. Bertasius, H. Wang and L. Torresani, "Is Space-Time Attention All You Need for
Video Understanding?", ICML 2021 (code: github.com/facebookresearch/TimeSformer), in the
form DeepfakeBench (github.com/SCLBD/DeepfakeBench, ``training/detectors/
timesformer_detector.py``) fine-tunes as a video deepfake detector: Hugging Face
transformers' ``TimesformerModel`` (the ViT-B/16 of ``facebook/timesformer-base-
finetuned-k400``), the CLS token of its last (layer-normed) hidden state, a linear head.

Every block attends first over time (each patch position across the T frames), then over
space (the patches of one frame, with the CLS token), so the clip's temporal incoherence
(flicker of a blended face) and each frame's spatial artefacts are both features.
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
from detectors.base import Detector
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

#: DeepfakeBench ``timesformer.yaml`` (commit 0356f95): ``resolution`` 224,
#: ``mean`` 0.45, ``std`` 0.225; frames resized by ``cv2.resize`` (``INTER_CUBIC``)
DEFAULT_PREPROCESSING: dict[str, Any] = cv2_clip_preprocessing(
    "bicubic", (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
)

#: what to pass when the Kinetics-400 start is asked for (nothing is downloaded)
BACKBONE_HINT = (
    "pass detector.backbone_file=/path/to/timesformer-base-finetuned-k400/pytorch_model.bin "
    "(Hugging Face facebook/timesformer-base-finetuned-k400, or its folder) or set "
    "detector.pretrained=false"
)


#: DeepfakeBench ``timesformer.yaml``: Adam lr 2e-5 (a tenth of its image detectors' 2e-4)
TIMESFORMER_ADAM: Callable[..., torch.optim.Optimizer] = functools.partial(
    torch.optim.Adam, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-4
)


class TimeSformer(Detector):
    """transformers' ``TimesformerModel`` (``backbone``), CLS token, ``head`` (one fake logit).

    Reference defaults (DeepfakeBench ``timesformer_detector.py`` at commit
    8a4a7bf5e966c5c5618bc27d1719c3683eae9a04; its ``training/config/detector/timesformer.yaml``
    as committed in 0356f95, removed from the tree in e393a4e):

    * model: ``TimesformerModel.from_pretrained('facebook/timesformer-base-finetuned-k400')``
      (ViT-B/16: 12 layers, width 768, 12 heads, MLP 3072, ``divided_space_time``,
      LayerNorm eps 1e-6, 8 frames of 224 x 224, no dropout or drop path), the Kinetics
      classifier dropped; feature ``last_hidden_state[:, 0]`` (the CLS token after the final
      LayerNorm); ``head = nn.Linear(768, 2)``, softmax class 1 = fake;
    * input: clips of ``clip_size`` 8 consecutive frames (``frame_num`` 32 per video cut
      into clips), each face frame resized to 224 x 224 (``cv2.INTER_CUBIC``),
      ``Normalize(0.45, 0.225)``, stacked (B, T, C, H, W);
    * augmentation: none (``use_data_augmentation: false``);
    * loss: cross-entropy on the 2 logits; Adam lr 2e-5, betas (0.9, 0.999), eps 1e-8,
      weight decay 5e-4, no schedule, batch 8, 100 epochs.

    Where this differs: one fake logit ``z_fake - z_real`` trained with binary
    cross-entropy (the same loss as the 2-class softmax cross-entropy on two logits whose
    difference it is); DeepfakeBench's 2-row head loads as that difference, so scores are
    identical. The Kinetics-400 start comes from a local file only (``backbone_file``),
    and a fresh config is randomly initialised (``pretrained: false``) so it builds offline.
    A clip length other than the backbone's ``num_frames`` works as in transformers
    (time embeddings resized by nearest interpolation at every forward).

    :meth:`load_weights` reads DeepfakeBench's ``timesformer_best.pth`` (the detector's
    ``state_dict``: ``backbone.*`` = ``TimesformerModel``'s keys, ``head`` (2, 768);
    ``module.``-prefixed from DDP) or a deepsift state dict, strictly. The keys are the
    authors' module's, and the outputs match DeepfakeBench's ``TimeSformerDetector`` run
    on seeded weights: within 3.7e-7 in logit on the test suite's tiny configuration
    (``tests/official/make_timesformer.py``, ``tests/official/video/timesformer_dfb.json``)
    and 7.7e-7 at full size, 8 frames of 224 px (``tests/official/full_size_video.py``).

    Args:
        clip_len: frames per clip (``clip_size`` 8).
        clip_stride: frame step within a clip (1: consecutive frames).
        backbone: ``transformers.TimesformerConfig`` fields overriding its defaults (which
            are ``facebook/timesformer-base-finetuned-k400``'s); tests build tiny ones.
        pretrained: start from the Kinetics-400 TimeSformer, read from ``backbone_file``.
        backbone_file: ``facebook/timesformer-base-finetuned-k400``'s ``pytorch_model.bin``
            or ``model.safetensors`` (or the folder holding one); its ``timesformer.*``
            tensors load strictly, its ``classifier.*`` is dropped.
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
            optimizer=optimizer or TIMESFORMER_ADAM,
            scheduler=scheduler,
        )
        self.clip_len, self.clip_stride = clip_sampling(clip_len, clip_stride)
        # before building the 121M-parameter model
        check_start(
            backbone, pretrained, backbone_file, "the Kinetics-400 TimeSformer", BACKBONE_HINT
        )
        from transformers import TimesformerConfig, TimesformerModel

        config = TimesformerConfig(**dict(backbone or {}))
        if config.image_size != self.preprocessing.size:
            log.warning(
                "TimeSformer: frames of %d px, the backbone's image_size is %d (position "
                "embeddings resized by nearest interpolation)",
                self.preprocessing.size,
                config.image_size,
            )
        self.backbone = TimesformerModel(config)
        self.head = nn.Linear(config.hidden_size, 1)
        start_backbone(self.load_backbone, pretrained, backbone_file)

    # -- data ------------------------------------------------------------------
    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["frames"]`` (T PIL RGB face crops) -> ``{"clip": (T, 3, size, size)}``.

        The same at training time: DeepfakeBench trains TimeSformer without augmentation.
        """
        p = self.preprocessing
        return {
            "clip": face_clip(sample, self.clip_len, p.size, p.mean, p.std, None, "TimeSformer")
        }

    # -- model -----------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = checked_clip(batch["clip"], "TimeSformer")
        cls = self.backbone(pixel_values=clip).last_hidden_state[:, 0]
        return {"logits": self.head(cls)[:, 0]}

    # -- weights -----------------------------------------------------------------
    def load_backbone(self, path: str | Path) -> None:
        """The Kinetics-400 ``TimesformerForVideoClassification`` file into ``backbone``, strictly."""
        from deepsift.core.hub import sha256_file

        file = hf_weight_file(path, BACKBONE_HINT)
        state = read_state_dict(file)
        keep = {
            k.removeprefix("timesformer."): v
            for k, v in state.items()
            if not k.startswith("classifier.")
        }
        load_state_dict_strict(self.backbone, keep, f"detector.backbone_file {file}")
        log.info("TimeSformer: Kinetics-400 backbone %s (sha256 %s)", file, sha256_file(file))

    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench's ``timesformer_best.pth`` (2-row ``head``) or a deepsift state dict.

        Both strictly; DeepfakeBench's head becomes the fake logit ``z_1 - z_0``.
        """
        source = f"weights file {path}"
        state = strip_prefixes(read_state_dict(path), ("module.",))
        head = state.get("head.weight")
        if not torch.is_tensor(head) or not any(
            k.startswith("backbone.embeddings.") for k in state
        ):
            raise UserError(
                f"{source} is not a TimeSformer file: no backbone.embeddings.* and head.weight "
                "as in DeepfakeBench's timesformer_best.pth"
            )
        two_class_head_as_fake_logit(state, "TimeSformer", path)
        load_state_dict_strict(self, state, source)

"""I3D: a 3D ResNet-50 ("inflated" 2D ResNet) on face clips, as DeepfakeBench trains it.

After J. Carreira and A. Zisserman, "Quo Vadis, Action Recognition? A New Model and
the Kinetics Dataset", CVPR 2017, in the ResNet-50 form of PySlowFast
(github.com/facebookresearch/SlowFast, ``MODEL.ARCH: i3d``) that DeepfakeBench
(github.com/SCLBD/DeepfakeBench, ``training/detectors/i3d_detector.py``, its copy of
SlowFast under ``training/detectors/utils/slowfast/``) fine-tunes as a video deepfake
detector. Spatio-temporal convolutions see the whole clip, so temporal artefacts
(flicker, incoherent motion of the blended face) are features like spatial ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.clips import (
    channels_first_clip,
    clip_sampling,
    cv2_clip_preprocessing,
    cv2_normalised_clip,
    deepfakebench_clip_augment,
)
from detectors.layers.slowfast import STAGE_DEPTH, I3DResNet
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: ``i3d.yaml``: clips of ``clip_size`` 16 consecutive frames, 224 x 224, Normalize(0.5, 0.5)
DEFAULT_PREPROCESSING: dict[str, Any] = cv2_clip_preprocessing(
    "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
)


class I3D(Detector):
    """DeepfakeBench's I3D detector: ``resnet`` (an :class:`I3DResNet`), one fake logit per clip.

    Reference defaults (DeepfakeBench ``training/config/detector/i3d.yaml``,
    ``i3d_detector.py``'s embedded SlowFast ``config_text``, ``dataset/abstract_dataset.py``):

    * model: SlowFast ``ResNet``, ``ARCH: i3d``, ``DEPTH: 50`` (3, 4, 6, 3 bottlenecks),
      ``WIDTH_PER_GROUP`` 64, ``NUM_GROUPS`` 1, no non-local blocks, temporal kernels
      stem 5, res2 [3], res3 [3, 1], res4 [3, 1], res5 [1, 3] (cycled over each stage's
      blocks), a temporal max-pool 2 after res2, ``DROPOUT_RATE`` 0.5, ``NUM_CLASSES`` 1
      with ``HEAD_ACT: sigmoid`` (the model returns a probability), zero-initialised final
      BN of each block; pretrained ``I3D_8x8_R50.pth`` (Kinetics-400), ``resnet.``
      prefixes removed, the 400-way ``head.projection`` cut to its first row, loaded
      strictly into ``resnet``;
    * input: clips of ``clip_size`` 16 consecutive frames (``frame_num`` 32 per video,
      cut into clips), each face frame resized to 224 x 224 (``cv2.INTER_CUBIC``),
      ``Normalize(0.5, 0.5)``; (B, T, C, H, W) permuted to (B, C, T, H, W);
    * augmentation (one draw per video, replayed on every frame): horizontal flip p 0.5,
      rotation +-10 degrees p 0.5, Gaussian blur kernel 3-7 p 0.5, one of brightness/
      contrast +-0.1, FancyPCA, HSV p 0.5, JPEG quality 40-100 p 0.5;
    * loss ``BCELoss`` on the probability; Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8,
      weight decay 5e-4, no schedule, batch 8, 30 epochs.

    Where this differs: ``forward`` returns the logit before the head's sigmoid and the
    loss is :func:`~torch.nn.functional.binary_cross_entropy_with_logits` (the same loss,
    numerically stabler); the head averages the ``s5`` map over all positions (SlowFast's
    ``AvgPool3d([T/2, 7, 7], stride=1)`` equals it at the configured clip length and
    224 px, and gives several outputs otherwise); the training augmentation is torchvision's (the same parameters for
    all T frames): rotation fills with black (albumentations reflects), brightness/
    contrast is ``ColorJitter`` (multiplicative brightness), without the FancyPCA/HSV
    alternatives. The per-clip transform may be replaced by the shared clip helper.

    :meth:`load_weights` reads DeepfakeBench's ``i3d_best.pth`` (the detector's
    ``state_dict``: ``resnet.s1.pathway0_stem.conv.weight`` ...) or a deepsift state dict,
    strictly. ``pretrained_file`` takes SlowFast's Kinetics ``I3D_8x8_R50.pth`` as
    DeepfakeBench does (the fine-tuning start, not a detector). The keys are the authors'
    module's, in order, and the outputs match DeepfakeBench's SlowFast ``ResNet`` (commit
    8a4a7bf) within 7.2e-7 in logit at full size, float32, seeded weights
    (``tests/official/make_deepfakebench_i3d.py``, ``tests/official/video/deepfakebench_i3d.json``).

    Args:
        clip_len: frames per clip (``clip_size``).
        clip_stride: frame step within a clip (1: consecutive frames).
        blocks: bottlenecks per stage (``DEPTH`` 50: 3, 4, 6, 3); smaller for tests.
        width_per_group: channels of the stem (64); smaller for tests.
        dropout: before ``head.projection``.
        pretrained_file: a local ``I3D_8x8_R50.pth`` (Kinetics-400), or ``None`` for
            SlowFast's random initialisation.
        train_augment: the training augmentation (off: the eval transform in training).
    """

    input_kind = "clip"

    def __init__(
        self,
        clip_len: int = 16,
        clip_stride: int = 1,
        blocks: Sequence[int] = STAGE_DEPTH[50],
        width_per_group: int = 64,
        dropout: float = 0.5,
        pretrained_file: str | None = None,
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
        self.train_augment = bool(train_augment)
        self.resnet = I3DResNet(blocks, width_per_group, num_classes=1, dropout=dropout)
        if pretrained_file:
            self.load_pretrained(pretrained_file)
        self._augment = deepfakebench_clip_augment()

    # -- data ------------------------------------------------------------------
    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["frames"]`` (T PIL RGB face crops) -> ``{"clip": (T, 3, size, size)}``."""
        augment = self._augment if train and self.train_augment else None
        clip = cv2_normalised_clip(
            sample.get("frames"),
            self.preprocessing.size,
            "bicubic",
            self.preprocessing.mean,
            self.preprocessing.std,
            augment,
            "I3D",
        )
        return {"clip": clip}

    # -- model -----------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = channels_first_clip(batch["clip"], "I3D")
        return {"logits": self.resnet(clip)[:, 0]}

    # -- weights -----------------------------------------------------------------
    def load_pretrained(self, path: str | Path) -> None:
        """SlowFast's Kinetics-400 ``I3D_8x8_R50.pth`` into ``resnet``, as DeepfakeBench does."""
        source = f"detector.pretrained_file {path}"
        if not Path(path).expanduser().is_file():
            raise UserError(
                f"{source} does not exist; pass SlowFast's Kinetics I3D_8x8_R50.pth "
                "or set detector.pretrained_file=null (random initialisation)"
            )
        self._load_kinetics(read_state_dict(Path(path).expanduser()), source)

    def _load_kinetics(self, state: dict[str, Any], source: str) -> None:
        """``resnet.`` prefixes removed, ``head.projection`` cut to row 0, strict into ``resnet``."""
        state = strip_prefixes(state, ("resnet.",))
        for key in ("head.projection.weight", "head.projection.bias"):
            if torch.is_tensor(state.get(key)):
                state[key] = state[key][:1]  # 400 Kinetics classes -> 1 (row 0 kept)
        load_state_dict_strict(self.resnet, state, source)
        log.info("I3D: loaded the Kinetics I3D %s", source)

    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench's ``i3d_best.pth``, a deepsift I3D state dict, or ``I3D_8x8_R50.pth``.

        All strictly. A file whose ``head.projection`` has more than one row is SlowFast's
        Kinetics model: it loads as ``pretrained_file`` does (row 0 kept), a start for
        fine-tuning, not a detector.
        """
        source = f"weights file {path}"
        state = read_state_dict(path)
        head = strip_prefixes(state, ("resnet.",)).get("head.projection.weight")
        if torch.is_tensor(head) and head.ndim == 2 and head.shape[0] > 1:
            log.warning(
                "I3D: %s is a %d-class Kinetics model, not a deepfake detector; loading its "
                "backbone as detector.pretrained_file does",
                path,
                head.shape[0],
            )
            self._load_kinetics(state, source)
            return
        if not any(k.startswith("resnet.") for k in state):
            raise UserError(
                f"{source} is not an I3D file: no resnet.* keys as in DeepfakeBench's "
                "i3d_best.pth, and no multi-class head.projection as in SlowFast's I3D_8x8_R50.pth"
            )
        load_state_dict_strict(self, state, source)
        log.info("I3D: loaded %s", path)

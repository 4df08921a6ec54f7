"""The interface every deepsift detector honours.

A detector is a :class:`torch.nn.Module` that also owns

* its **preprocessing** (:meth:`Detector.transform`: a sample dict holding a PIL
  image and its record becomes a dict of tensors; auxiliary inputs such as a
  mask, landmarks or a second augmented view are just more keys),
* its **loss** (:meth:`Detector.training_step` returns ``{"loss": ..., ...}``;
  auxiliary losses are more keys, logged as they are),
* its **optimiser** (a Hydra partial in its config, after the paper's defaults),
* and, for detectors fitted in closed form (scikit-learn classifiers on
  hand-crafted features), an epoch-end hook (:meth:`Detector.on_train_epoch_end`)
  with no gradient step at all.

``forward(batch)`` returns at least ``{"logits": (B,)}``, the logit of *fake*.
:meth:`Detector.predict` scores files, PIL images or arrays with the detector's
own test-time preprocessing, so the training engine, ``evaluate.py``,
``score.py`` and notebooks all use one code path.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deepsift.core.images import load_rgb, to_rgb
from deepsift.core.inference import batches_by_shape, fake_probabilities
from deepsift.core.runtime import autocast_dtype
from detectors.preprocessing import Preprocessing, as_preprocessing

log = logging.getLogger(__name__)

ImageLike = str | Path | Image.Image | np.ndarray

#: DeepfakeBench's optimiser (``optimizer: adam`` in its detector configs: lr 2e-4,
#: betas (0.9, 0.999), eps 1e-8, weight decay 5e-4). The default of every detector that
#: trains as DeepfakeBench does: the same values for the same reason.
DEEPFAKEBENCH_ADAM: Callable[..., torch.optim.Optimizer] = functools.partial(
    torch.optim.Adam, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-4
)


def to_pil(image: ImageLike) -> Image.Image:
    """A path, PIL image or uint8 array (H, W) / (H, W, 3|4) as an RGB PIL image.

    The conversion of training, evaluation and ``score.py`` (:mod:`deepsift.core.images`:
    alpha on white, EXIF orientation for files).
    """
    if isinstance(image, (str, Path)):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"arrays must be uint8 (H, W[, C]), got dtype {image.dtype}")
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
            return to_rgb(Image.fromarray(image.squeeze()))
        raise ValueError(
            f"arrays must have shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}"
        )
    raise TypeError(f"cannot read an image from {type(image).__name__}")


class Detector(nn.Module):
    """Base class: subclasses implement :meth:`forward` and, if needed, the hooks.

    Args:
        preprocessing: a :class:`Preprocessing` or its fields as a dict.
        optimizer: a partial that takes ``params`` and returns an optimiser
            (Hydra ``_partial_: true``); ``None`` for closed-form detectors.
        scheduler: a partial that takes the optimiser and returns an LR scheduler
            stepped once per epoch, or ``None``.
    """

    #: name of the config in ``configs/detector`` (set by ``load_detector`` and checkpoints)
    config_name: str | None = None
    #: closed-form detectors need one pass over the training data; ``None`` = no limit
    epochs_needed: int | None = None
    #: ``"image"``: ``transform`` gets ``sample["image"]`` (one PIL image) and batches carry
    #: ``batch["image"]`` (B, C, H, W). ``"clip"``: ``transform`` gets ``sample["frames"]``
    #: (``clip_len`` PIL face crops of one face track, ``clip_stride`` frames apart, plus
    #: ``sample["mouth_frames"]`` when ``needs_mouth``) and returns ``{"clip": (T, C, H, W)}``;
    #: batches carry ``batch["clip"]`` (B, T, C, H, W). Either way ``forward`` returns
    #: ``{"logits": (B,)}``, so the pipelines need no per-detector case.
    input_kind: str = "image"
    clip_len: int = 1
    clip_stride: int = 1
    needs_mouth: bool = False

    def __init__(
        self,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.preprocessing = as_preprocessing(preprocessing)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.config: dict[str, Any] = {}

    # -- data ------------------------------------------------------------------
    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """Sample dict (``image``: PIL RGB, ``record``) -> dict of tensors for the batch."""
        return {"image": self.preprocessing(sample["image"], train=train)}

    def train_transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        return self.transform(sample, train=True)

    def eval_transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        return self.transform(sample, train=False)

    # -- model -----------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Default: binary cross-entropy on the fake logit."""
        outputs = self(batch)
        loss = F.binary_cross_entropy_with_logits(outputs["logits"].float(), batch["label"].float())
        return {"loss": loss}

    def on_train_epoch_end(self) -> None:
        """Hook after each training epoch (closed-form detectors fit here)."""

    @property
    def fits_by_gradient(self) -> bool:
        """True when training steps back-propagate (any parameter requires grad)."""
        return any(p.requires_grad for p in self.parameters())

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer | None, Any]:
        if not self.fits_by_gradient or self.optimizer_factory is None:
            return None, None
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory else None
        return optimizer, scheduler

    def use_protocol(
        self, fmt: str, protocol: Mapping[str, Any], defaults: Mapping[str, Any]
    ) -> None:
        """Switch the test-time preprocessing to the official protocol of a weight format.

        Called by ``load_weights`` when it recognises a file (DeepfakeBench,
        icpr2020dfdc, SBI, ...): ``protocol`` holds the fields the authors' test code
        uses (size, resize, backend, interpolation, crop, normalisation). Fields the
        user set (those that differ from the detector's ``defaults``) win, with one
        warning that they depart from the file's protocol; a value set equal to the
        default cannot be told from the default, and follows the protocol. The detector's config is
        updated too, so a checkpoint trained from these weights keeps the protocol.
        """
        base = Preprocessing(**dict(defaults)).to_dict()
        current = self.preprocessing.to_dict()
        protocol = dict(protocol)
        if "size" in protocol and "resize_to" not in protocol:
            protocol["resize_to"] = None  # follows the protocol's size, not the default's
        wanted = Preprocessing(**{**base, **protocol}).to_dict()
        chosen = {k: v for k, v in current.items() if v != base[k]}
        departures = {k: v for k, v in chosen.items() if v != wanted[k]}
        merged = {**wanted, **chosen}
        self.preprocessing = Preprocessing(**merged)
        if self.config:
            self.config["preprocessing"] = {k: v for k, v in merged.items() if k != "extra" or v}
        changed = sorted(k for k in merged if merged[k] != current[k])
        log.info(
            "%s: %s weights, so its official test-time preprocessing (%s)",
            type(self).__name__,
            fmt,
            ", ".join(f"{k}={merged[k]}" for k in changed) or "unchanged",
        )
        if departures:
            log.warning(
                "%s: preprocessing %s departs from the protocol of %s weights (%s); "
                "outputs will differ from the authors' code",
                type(self).__name__,
                ", ".join(f"{k}={v}" for k, v in sorted(departures.items())),
                fmt,
                ", ".join(f"{k}={wanted[k]}" for k in sorted(departures)),
            )

    def load_weights(self, path: str | Path) -> None:
        """Load weights from ``path``: a state dict, with ``module.`` prefixes handled.

        Detectors with official weight files in another layout override this.
        """
        from deepsift.core.checkpoint import load_state_dict_file

        load_state_dict_file(self, path)

    # -- inference -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def predict_batch(
        self, batch: dict[str, torch.Tensor], precision: str = "auto"
    ) -> torch.Tensor:
        """Fake probabilities (float32, CPU) for a batch of already-transformed tensors.

        The forward pass of :func:`deepsift.core.inference.fake_probabilities`, on this
        detector's device, with the trainer's default autocast (``precision``).
        """
        device = self.device
        amp = autocast_dtype(device, precision)
        return fake_probabilities(self, batch, device, amp, channels_last=device.type == "cuda")

    def predict(
        self,
        images: ImageLike | Iterable[ImageLike],
        batch_size: int = 32,
        device: str | torch.device | None = None,
        precision: str = "auto",
    ) -> np.ndarray:
        """Probability that each image is synthetic, with this detector's preprocessing.

        ``images``: file paths, PIL images or uint8 arrays (one or a sequence).
        Uses the GPU when there is one unless ``device`` says otherwise. Images are
        batched by the shape of their transformed tensors (detectors that keep the
        native size take mixed sizes), and each batch goes through the same forward
        pass as evaluation and ``score.py`` (:mod:`deepsift.core.inference`).
        """
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        target = (
            torch.device(device)
            if device
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        if self.device != target:
            self.to(target)
        samples = (
            (i, self.eval_transform({"image": to_pil(image), "record": None}))
            for i, image in enumerate(images)
        )
        scores: dict[int, float] = {}
        for positions, batch in batches_by_shape(samples, batch_size):
            probs = self.predict_batch(batch, precision).numpy()
            scores.update(zip(positions, probs.tolist(), strict=True))
        return np.array([scores[i] for i in range(len(scores))], dtype=np.float32)


class BackboneClassifier(Detector):
    """A feature backbone, dropout and one linear fake logit: ``head(dropout(backbone(x)))``.

    The layout of the single-backbone face classifiers (Xception, EfficientNet-B4):
    ``backbone`` maps (B, 3, H, W) images to pooled (B, ``num_features``) features,
    ``dropout`` has no parameters, and ``head`` is ``Linear(num_features, 1)``, so the
    state dict is ``backbone.*``, ``head.weight`` and ``head.bias``. Subclasses build
    the backbone, pass it here and add their own weight loading.

    Args:
        backbone: the feature extractor (its ``forward`` returns pooled features).
        num_features: the width of those features.
        drop_rate: dropout before ``head`` (0: none).
        preprocessing, optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        drop_rate: float,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(preprocessing, optimizer, scheduler)
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.backbone(batch["image"])
        return {"logits": self.head(self.dropout(features)).squeeze(1)}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

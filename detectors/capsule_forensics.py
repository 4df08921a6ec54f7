"""Capsule-Forensics (v2): VGG-19 features, ten statistical primary capsules, dynamic routing.

After H. H. Nguyen, J. Yamagishi and I. Echizen, "Capsule-Forensics: Using
Capsule Networks to Detect Forged Images and Videos", ICASSP 2019, and its
updated version "Use of a Capsule Network to Detect Fake Images and Videos",
arXiv:1910.12467 (Capsule-Forensics-v2). Official code and weights:
github.com/nii-yamagishilab/Capsule-Forensics-v2 (``model_big.py``,
``train_binary_ffpp.py``, ``test_binary_ffpp.py``; checkpoints
``checkpoints/<task>/capsule_<epoch>.pt``, e.g. ``capsule_21.pt``); also
DeepfakeBench's port (github.com/SCLBD/DeepfakeBench,
``training/detectors/capsule_net_detector.py``, ``config/detector/capsule_net.yaml``).

The first three blocks of an ImageNet VGG-19 (``features[0:19]``, 256 channels
at 1/8 of the input) feed ten primary capsules; each is conv 3x3 -> 64, BN,
ReLU, conv 3x3 -> 16, BN, ReLU, then the per-channel mean and standard
deviation over positions (a (2, 16) "statistics" map), conv1d 2 -> 8 (k 5,
stride 2), BN, conv1d 8 -> 1 (k 3), BN: an 8-d vector. The ten vectors are
squashed and routed (two iterations of dynamic routing) to two 4-d output
capsules, real and fake.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: the official preprocessing (train and test): ``Resize((300, 300))``, ``ToTensor``,
#: ImageNet ``Normalize``; no augmentation
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 300,
    "resize": "square",
    "interpolation": "bilinear",
    "crop": "none",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}
#: VGG-19 ``features`` layers kept (0-18: conv1_1 ... conv3_4, ReLU, the third max-pool)
VGG_LAYERS = 19
VGG_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M")
CAPSULE_DIM = 8
OUTPUT_DIM = 4
NUM_CLASSES = 2


def vgg19_stem() -> nn.Sequential:
    """torchvision's ``vgg19().features[:19]``: same layers, indices and initialisation."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(channels, int(item), kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        channels = int(item)
    return nn.Sequential(*layers)


class VggExtractor(nn.Module):
    """Holds the VGG stem as ``vgg_1`` (the official and DeepfakeBench key names)."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg_1 = vgg19_stem()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vgg_1(x)


class StatsPool(nn.Module):
    """(B, C, H, W) -> (B, 2, C): mean and (unbiased) standard deviation over positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        return torch.stack([flat.mean(dim=2), flat.std(dim=2)], dim=1)


def primary_capsule() -> nn.Sequential:
    """One primary capsule; indices as the official ``nn.Sequential`` (so its keys match)."""
    return nn.Sequential(
        nn.Conv2d(256, 64, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 16, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        StatsPool(),
        nn.Conv1d(2, 8, kernel_size=5, stride=2, padding=2),
        nn.BatchNorm1d(8),
        nn.Conv1d(8, 1, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm1d(1),
        nn.Flatten(1),  # (B, 1, 8) -> (B, 8): the official View(-1, 8)
    )


def squash(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``|x|^2 / (1 + |x|^2) * x / |x|`` along ``dim``, written as the reference (no epsilon)."""
    squared = (x**2).sum(dim=dim, keepdim=True)
    return squared / (1 + squared) * x / torch.sqrt(squared)


class FeatureExtractor(nn.Module):
    """The primary capsules, stacked to (B, 8, num_capsules) and squashed along the last axis.

    As in the reference, the squash runs over the capsule axis (each of the 8
    components across the capsules), not over a capsule's own 8-d vector.
    Initialisation as the official ``weights_init``: conv weights N(0, 0.02)
    (biases keep PyTorch's default), BatchNorm weights N(1, 0.02), biases 0.
    """

    def __init__(self, num_capsules: int = 10) -> None:
        super().__init__()
        self.capsules = nn.ModuleList([primary_capsule() for _ in range(num_capsules)])
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                module.weight.data.normal_(0.0, 0.02)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.weight.data.normal_(1.0, 0.02)
                module.bias.data.fill_(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squash(torch.stack([capsule(x) for capsule in self.capsules], dim=-1), dim=-1)


class RoutingLayer(nn.Module):
    """Dynamic routing from the primary capsules to the class capsules (official ``RoutingLayer``).

    ``priors[b, j, i] = W[j, i] u[b, i]`` (W: (classes, capsules, 4, 8),
    standard-normal init). Starting from zero logits, each iteration takes
    ``c = softmax over i``, ``v_j = squash(sum_i c * priors, over the 4
    components)``, and, except after the last, adds ``priors * v_j`` to the
    logits: element-wise, one routing logit per component, as the reference
    does (no sum over the components). Training only, as the official
    trainer: Gaussian noise of std ``noise`` on W, and a Bernoulli mask that
    zeroes each prior with probability ``dropout`` (not rescaled).
    """

    def __init__(
        self,
        num_input_capsules: int,
        num_output_capsules: int,
        data_in: int,
        data_out: int,
        num_iterations: int,
    ) -> None:
        super().__init__()
        self.num_iterations = num_iterations
        self.route_weights = nn.Parameter(
            torch.randn(num_output_capsules, num_input_capsules, data_out, data_in)
        )

    def forward(self, u: torch.Tensor, noise: float = 0.0, dropout: float = 0.0) -> torch.Tensor:
        """(B, data_in, capsules) -> (B, data_out, classes)."""
        weights = self.route_weights
        if noise > 0:
            weights = weights + noise * torch.randn_like(weights)
        # (1, J, I, out, in) @ (B, 1, I, in, 1) -> (B, J, I, out, 1)
        priors = weights[None] @ u.transpose(1, 2)[:, None, :, :, None]
        if dropout > 0:
            priors = priors * torch.bernoulli(torch.full_like(priors, 1.0 - dropout))
        logits = torch.zeros_like(priors)
        for iteration in range(self.num_iterations):
            probs = torch.softmax(logits, dim=2)
            outputs = squash((probs * priors).sum(dim=2, keepdim=True), dim=3)
            if iteration != self.num_iterations - 1:
                logits = logits + priors * outputs
        return outputs[:, :, 0, :, 0].transpose(1, 2)


def capsule_loss(classes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The official ``CapsuleLoss``: the sum over the 4 output components of cross-entropy.

    ``classes`` are softmax probabilities (B, 4, 2); ``nn.CrossEntropyLoss``
    applies its own log-softmax to them, as in the reference. Each term is
    ``log(1 + exp(-tanh(d / 2)))`` for the class capsules' difference ``d``
    in that component, and squashed capsules have norms below 1, so ``d <= 1``
    in all four components at best: the loss cannot go below ``4 log(1 +
    exp(-tanh(1/2)))`` = 1.954.
    """
    labels = labels.long()
    return sum(F.cross_entropy(classes[:, i, :], labels) for i in range(classes.shape[1]))


def load_vgg19_stem(stem: nn.Sequential, pretrained_file: str) -> None:
    """torchvision's ImageNet VGG-19 (``vgg19-dcbb9e9d.pth``): its ``features.0``-``features.16``."""
    path = Path(pretrained_file).expanduser()
    if not path.is_file():
        raise UserError(
            f"detector.pretrained_file {path} does not exist; pass torchvision's ImageNet VGG-19 "
            f"state dict (vgg19-dcbb9e9d.pth) or set detector.pretrained_file=null"
        )
    state = read_state_dict(path)
    # the other keys (features.18 onwards, classifier) are VGG-19's deeper layers: unused here
    missing = [f"features.{k}" for k in stem.state_dict() if f"features.{k}" not in state]
    if missing:
        raise UserError(
            f"ImageNet VGG-19 file {path} lacks {', '.join(missing[:4])}"
            f"{f' (+{len(missing) - 4} more)' if len(missing) > 4 else ''}; pass torchvision's "
            f"vgg19-dcbb9e9d.pth (VGG-16 and others have other layers at these indices)"
        )
    stem_state = {k: state[f"features.{k}"] for k in stem.state_dict()}
    load_state_dict_strict(stem, stem_state, f"ImageNet VGG-19 file {path}")


class CapsuleForensics(Detector):
    """Capsule-Forensics-v2 binary detector; one fake logit from the two class capsules.

    State dict: ``vgg_ext.vgg_1.*`` (VGG-19 layers 0-18), ``fea_ext.capsules.*``
    and ``routing_stats.route_weights``: DeepfakeBench's ``CapsuleNetDetector``
    layout, whose checkpoints :meth:`load_weights` reads strictly; the
    official ``capsule_<epoch>.pt`` files hold the last two groups only (the
    official VGG is torchvision's ImageNet one, never trained), so they load
    strictly into those, after the VGG came from ``pretrained_file``.

    The logit: the reference's output is ``class_ = mean over the 4 components
    of softmax over the 2 classes`` (B, 2); its test script scores
    ``softmax(class_)[:, 1]`` (DeepfakeBench's ``prob`` is the same) and
    predicts fake when ``class_[1] >= class_[0]``. ``softmax(class_)[1] =
    sigmoid(class_[1] - class_[0])``, so ``logits = class_[1] - class_[0]``
    gives exactly the reference's probability and decision (at 0.5). It is
    the mean over the components of ``tanh(d / 2)`` with ``d`` the class
    capsules' difference, and the capsules are squashed (norm below 1), so the
    logit stays within +-tanh(1/2) = 0.462 and the probability, as in the
    reference, within [0.386, 0.614]: rankings (ROC-AUC) are unaffected, but
    the probabilities are not calibrated.

    Official defaults (``train_binary_ffpp.py``, ``test_binary_ffpp.py``):
    faces cropped at 1.3 x the mask's box, ``Resize((300, 300))`` (bilinear),
    ImageNet normalisation, no augmentation; real = class 0 (``0_original``),
    all manipulations = 1; 10 capsules, routing 2 iterations, 8 -> 4
    dimensions; in training the routing gets weight noise (std 0.01) and
    dropout 0.05 (``--disable_random`` off, ``--dropout 0.05``), at test time
    neither; VGG frozen (not in the optimiser, capsule input detached); loss
    :func:`capsule_loss`; Adam lr 5e-4, betas (0.9, 0.999), batch 32, 25
    epochs (the released FaceForensics++ model is epoch 21).

    DeepfakeBench's port differs: 256 x 256 inputs with mean = std = 0.5, the
    VGG fine-tuned with the capsules (no ``detach``), no routing noise or
    dropout, Adam lr 8e-5 with weight decay 5e-4, 10 epochs. Its checkpoints
    load strictly here; score them with ``preprocessing.size=256``,
    ``preprocessing.mean=[0.5,0.5,0.5]``, ``preprocessing.std=[0.5,0.5,0.5]``
    and train like it with ``freeze_vgg=false routing_noise=0
    routing_dropout=0`` (see ``configs/detector/capsule_forensics.yaml``).

    Verified against the authors' code (``tests/official/make_capsule_forensics.py``:
    ``model_big.py`` and ``test_binary_ffpp.py``'s transform, Pillow's bilinear
    ``Resize((300, 300))``): float32 logits equal to 3e-5 (measured: 0).

    Where this differs from the official code: the VGG stem is built here
    (torchvision's layers and initialisation) and ImageNet weights load only
    from a local ``pretrained_file``; images are read by
    :func:`deepsift.core.images.load_rgb`.

    Args:
        pretrained_file: torchvision's ImageNet VGG-19 state dict
            (``vgg19-dcbb9e9d.pth``); ``None`` = random VGG (only for tests).
        freeze_vgg: keep the VGG fixed (official) or fine-tune it (DeepfakeBench).
        num_capsules, routing_iterations: 10 and 2 in the reference.
        routing_noise, routing_dropout: training-time routing regularisation.
        preprocessing: over :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        freeze_vgg: bool = True,
        num_capsules: int = 10,
        routing_iterations: int = 2,
        routing_noise: float = 0.01,
        routing_dropout: float = 0.05,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(torch.optim.Adam, lr=5e-4, betas=(0.9, 0.999))
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.freeze_vgg = freeze_vgg
        self.routing_noise = routing_noise
        self.routing_dropout = routing_dropout
        self.vgg_ext = VggExtractor()
        self.vgg_pretrained = bool(pretrained_file)
        if pretrained_file:
            load_vgg19_stem(self.vgg_ext.vgg_1, pretrained_file)
        self.vgg_ext.requires_grad_(not freeze_vgg)
        self.fea_ext = FeatureExtractor(num_capsules)
        self.routing_stats = RoutingLayer(
            num_capsules, NUM_CLASSES, CAPSULE_DIM, OUTPUT_DIM, routing_iterations
        )

    def class_capsules(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax over the 2 classes of each output component: (B, 4, 2)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vgg):
            features = self.vgg_ext(image)
        training = self.training
        z = self.routing_stats(
            self.fea_ext(features),
            noise=self.routing_noise if training else 0.0,
            dropout=self.routing_dropout if training else 0.0,
        )
        return torch.softmax(z, dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        classes = self.class_capsules(batch["image"])
        mean = classes.mean(dim=1)
        return {"logits": mean[:, 1] - mean[:, 0], "classes": classes}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self(batch)
        return {"loss": capsule_loss(outputs["classes"].float(), batch["label"])}

    def load_weights(self, path: str | Path) -> None:
        """An official ``capsule_<epoch>.pt``, a DeepfakeBench checkpoint or our state dict."""
        state = read_state_dict(path)
        if not any(k.startswith("vgg_ext.") for k in state) and "routing_stats.route_weights" in (
            state
        ):
            if not self.vgg_pretrained:
                raise UserError(
                    f"{path} holds Capsule-Forensics' capsule layers only (an official "
                    f"capsule_<epoch>.pt); their VGG-19 is torchvision's ImageNet one: pass "
                    f"detector.pretrained_file=/path/to/vgg19-dcbb9e9d.pth"
                )
            vgg = {f"vgg_ext.{k}": v for k, v in self.vgg_ext.state_dict().items()}
            state = {**vgg, **state}
            log.info("Capsule-Forensics: read %s as an official capsule checkpoint", path)
            load_state_dict_strict(self, state, f"weights file {path}")
            # the default is the official protocol: this warns about departures from it
            self.use_protocol("Capsule-Forensics-v2", DEFAULT_PREPROCESSING, DEFAULT_PREPROCESSING)
            return
        load_state_dict_strict(self, state, f"weights file {path}")
        self._note_unrecorded_protocol(path)

    def _note_unrecorded_protocol(self, path: str | Path) -> None:
        """DeepfakeBench's and deepsift's full layouts are one: say which input is in use.

        The file cannot bring its protocol (``detectors.formats.CAPSULE_SHARED_LAYOUT``),
        so nothing is switched: at DeepfakeBench's input one info line, at any other one
        warning naming the input in use and how to get DeepfakeBench's.
        """
        current = self.preprocessing.to_dict()
        dfb = Preprocessing(
            **{**DEFAULT_PREPROCESSING, **DEEPFAKEBENCH_FACE_PREPROCESSING, "resize_to": None}
        ).to_dict()
        fields = (
            "size",
            "resize",
            "resize_to",
            "interpolation",
            "resize_backend",
            "crop",
            "mean",
            "std",
        )
        if all(current[k] == dfb[k] for k in fields):
            log.info(
                "Capsule-Forensics: %s has the DeepfakeBench/deepsift layout; the input in use is "
                "DeepfakeBench's (256 px, cv2 INTER_CUBIC, mean = std = 0.5)",
                path,
            )
            return
        log.warning(
            "Capsule-Forensics: %s has the layout DeepfakeBench's capsule_net and deepsift's own "
            "files share, which does not record its protocol; using %s. For a DeepfakeBench "
            "checkpoint pass experiment=reproduce/deepfakebench_capsule_forensics (its input: "
            "256 px, cv2 INTER_CUBIC, mean = std = 0.5)",
            path,
            ", ".join(f"{k}={current[k]}" for k in fields),
        )

"""MesoNet: Meso4 and MesoInception4, with the official Keras weights.

After D. Afchar, V. Nozick, J. Yamagishi and I. Echizen, "MesoNet: a Compact
Facial Video Forgery Detection Network", WIFS 2018 (arXiv:1809.00888); official
Keras code and weights: github.com/DariusAf/MesoNet (``classifiers.py``,
Apache-2.0). Two small CNNs look at the "mesoscopic" level of aligned face
crops: four conv/BatchNorm/max-pool stages (Meso4; MesoInception4 replaces the
first two convolutions with Inception modules with dilated 3x3 branches), then
Dropout(0.5), Dense(16), LeakyReLU(0.1), Dropout(0.5) and one sigmoid unit.

Both are layer-for-layer ports that reproduce the official Keras outputs on
the official weights (``Meso4_DF.h5``, ``Meso4_F2F.h5``, ``MesoInception_DF.h5``,
``MesoInception_F2F.h5``) to within 1e-6 in probability (see
``tests/test_mesonet.py`` and ``benchmarks/mesonet_reference.py``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.keras_h5 import KerasLayer, is_hdf5, layers_by_kind, read_keras_h5
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: the official preprocessing: Keras ``load_img`` (PIL nearest-neighbour resize to
#: 256 x 256) and ``ImageDataGenerator(rescale=1/255)``: pixels in [0, 1], no mean/std;
#: in training, the paper's horizontal flips (of half the images, as Keras's
#: ``horizontal_flip=True``)
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 256,
    "resize": "square",
    "interpolation": "nearest",
    "crop": "none",
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "hflip": 0.5,
}
INPUT_SIZE = 256
#: Keras BatchNormalization defaults: epsilon 1e-3, moving average momentum 0.99
#: (PyTorch's momentum is the weight of the new value: 1 - 0.99)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
LOSSES = ("mse", "bce")


class ConvReLU(nn.Conv2d):
    """Keras ``Conv2D(..., padding="same", activation="relu")`` for odd kernels, stride 1.

    Glorot-uniform kernel and zero bias, Keras's initialisers.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, dilation: int = 1):
        if kernel % 2 != 1:
            raise ValueError("ConvReLU pads symmetrically, as Keras does only for odd kernels")
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            padding=dilation * (kernel - 1) // 2,
            dilation=dilation,
        )
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class MaxPoolSame(nn.Module):
    """Keras ``MaxPooling2D(pool_size=k, padding="same")`` (stride k).

    TensorFlow's "SAME" pads ``(-n) % k`` cells, the smaller half before and the
    rest after, with values that never win the max; at MesoNet's native 256 px
    every size is divisible and nothing is padded.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        pad_h, pad_w = (-x.shape[-2]) % k, (-x.shape[-1]) % k
        if pad_h or pad_w:
            top, left = pad_h // 2, pad_w // 2
            x = F.pad(x, (left, pad_w - left, top, pad_h - top), value=float("-inf"))
        return F.max_pool2d(x, k, k)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class InceptionLayer(nn.Module):
    """The official ``InceptionLayer(a, b, c, d)``: four "same" branches, concatenated.

    1x1 (a) | 1x1 -> 3x3 (b) | 1x1 -> 3x3 dilation 2 (c) | 1x1 -> 3x3 dilation 3 (d),
    every convolution followed by a ReLU; output channels ``a + b + c + d`` in that order.
    Submodules are registered in the order Keras created the layers, which is
    the order the ``.h5`` import maps them in.
    """

    def __init__(self, in_channels: int, a: int, b: int, c: int, d: int) -> None:
        super().__init__()
        self.branch1 = ConvReLU(in_channels, a, 1)
        self.branch2 = nn.Sequential(ConvReLU(in_channels, b, 1), ConvReLU(b, b, 3))
        self.branch3 = nn.Sequential(ConvReLU(in_channels, c, 1), ConvReLU(c, c, 3, dilation=2))
        self.branch4 = nn.Sequential(ConvReLU(in_channels, d, 1), ConvReLU(d, d, 3, dilation=3))
        self.out_channels = a + b + c + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], dim=1)


class MesoBlock(nn.Module):
    """conv (or Inception) -> BatchNormalization -> MaxPooling2D("same")."""

    def __init__(self, conv: nn.Module, channels: int, pool: int) -> None:
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.pool = MaxPoolSame(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.conv(x)))


class MesoNet(Detector):
    """Shared head, loss, optimiser and Keras weight import of Meso4 and MesoInception4.

    Subclasses build ``self.blocks`` (four :class:`MesoBlock`, 16 channels out
    at 1/32 of the input size) before calling :meth:`_build_head`.
    """

    def __init__(
        self,
        dropout: float = 0.5,
        loss: str = "mse",
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:  # Keras 2 Adam(lr=0.001): betas 0.9/0.999, epsilon 1e-7
            optimizer = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if loss not in LOSSES:
            raise UserError(
                f"{type(self).__name__} loss must be one of {', '.join(LOSSES)}, not {loss!r}"
            )
        self.loss = loss
        self.dropout = float(dropout)
        self.blocks = self._build_blocks()
        self.dropout1 = nn.Dropout(self.dropout)
        self.fc1 = nn.Linear(16 * 8 * 8, 16)
        self.act = nn.LeakyReLU(0.1)
        self.dropout2 = nn.Dropout(self.dropout)
        self.fc2 = nn.Linear(16, 1)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def _build_blocks(self) -> nn.Sequential:
        raise NotImplementedError

    # -- model -------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images (B, 3, H, W) in [0, 1] -> ``{"logits": (B,)}``, the logit of fake.

        H and W must be 225 to 256 so that the features are 8 x 8 (the official
        Dense layer takes 8 * 8 * 16 inputs); the official input is 256 x 256.
        """
        images = batch["image"]
        x = self.blocks(images)
        if x.shape[-2:] != (8, 8):
            raise UserError(
                f"{type(self).__name__} takes 256 x 256 inputs (its Dense layer needs 8 x 8 "
                f"features), got {tuple(images.shape[-2:])}; keep preprocessing.size=256 with "
                f"resize=square"
            )
        # Keras flattens channels-last (H, W, C): its Dense kernel rows are in that order
        x = x.permute(0, 2, 3, 1).flatten(1)
        x = self.act(self.fc1(self.dropout1(x)))
        return {"logits": self.fc2(self.dropout2(x)).squeeze(1)}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss="mse"``: the official mean squared error on the sigmoid output; or BCE."""
        logits = self(batch)["logits"].float()
        target = batch["label"].float()
        if self.loss == "mse":
            return {"loss": F.mse_loss(torch.sigmoid(logits), target)}
        return {"loss": F.binary_cross_entropy_with_logits(logits, target)}

    # -- weights -----------------------------------------------------------------
    def keras_layers(self) -> dict[str, list[tuple[str, nn.Module]]]:
        """This model's modules with weights by Keras layer kind, in Keras creation order."""
        kinds: dict[str, list[tuple[str, nn.Module]]] = {
            "conv2d": [],
            "batch_normalization": [],
            "dense": [],
        }
        for name, module in self.named_modules():  # registration order = Keras creation order
            if isinstance(module, nn.Conv2d):
                kinds["conv2d"].append((name, module))
            elif isinstance(module, nn.BatchNorm2d):
                kinds["batch_normalization"].append((name, module))
            elif isinstance(module, nn.Linear):
                kinds["dense"].append((name, module))
        return kinds

    def state_dict_from_keras(self, layers: list[KerasLayer]) -> dict[str, torch.Tensor]:
        """A state dict of this model from a Keras file's layers (see :func:`read_keras_h5`).

        Layers are matched by kind and creation order; file layers or arrays with
        no counterpart become ``<layer>/<array>`` keys, which the strict load then
        reports as unexpected (and modules with no file layer as missing).

        The official output is the probability of *real*; deepsift's logit is the
        logit of *fake*, so the last Dense layer is imported with its sign flipped.
        """
        targets = self.keras_layers()
        last_dense = targets["dense"][-1][0] if targets["dense"] else None
        renames = {
            "conv2d": {"kernel": "weight", "bias": "bias"},
            "dense": {"kernel": "weight", "bias": "bias"},
            "batch_normalization": {
                "gamma": "weight",
                "beta": "bias",
                "moving_mean": "running_mean",
                "moving_variance": "running_var",
            },
        }
        state: dict[str, torch.Tensor] = {}
        for kind, group in layers_by_kind(layers).items():
            modules = targets.get(kind, [])
            for index, layer in enumerate(group):
                if index >= len(modules):
                    for short, array in layer.weights.items():
                        state[f"{layer.name}/{short}"] = torch.from_numpy(np.array(array))
                    continue
                prefix, _ = modules[index]
                for short, array in layer.weights.items():
                    target = renames[kind].get(short)
                    value = torch.from_numpy(np.array(array, dtype=np.float32))
                    if target is None:
                        state[f"{layer.name}/{short}"] = value
                        continue
                    if kind == "conv2d" and target == "weight" and value.ndim == 4:
                        value = value.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
                    elif kind == "dense" and target == "weight" and value.ndim == 2:
                        value = value.T  # (in, out) -> (out, in)
                    if prefix == last_dense:
                        value = -value
                    state[f"{prefix}.{target}"] = value.contiguous()
                if kind == "batch_normalization":
                    state[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        return state

    def load_weights(self, path: str | Path) -> None:
        """Official Keras ``.h5`` weights, or a deepsift state dict / checkpoint.

        HDF5 files (by suffix or signature: the official example names them
        without a suffix) are read with :mod:`detectors.layers.keras_h5`; anything else
        goes to :meth:`Detector.load_weights`.
        """
        if not is_hdf5(path):
            super().load_weights(path)
            return
        layers = read_keras_h5(path)
        counts = {kind: len(group) for kind, group in layers_by_kind(layers).items()}
        expected = {kind: len(group) for kind, group in self.keras_layers().items()}

        def show(c: dict[str, int]) -> str:
            return ", ".join(f"{n} {kind}" for kind, n in c.items())

        source = (
            f"Keras weights file {path} (layers with weights: {show(counts)}; "
            f"{type(self).__name__} has {show(expected)})"
        )
        load_state_dict_strict(self, self.state_dict_from_keras(layers), source)
        if not self._official_preprocessing():
            log.warning(
                "%s: official weights loaded with preprocessing %s; the weights expect "
                "%s (nearest-neighbour resize to 256 x 256, pixels / 255)",
                type(self).__name__,
                self.preprocessing.to_dict(),
                DEFAULT_PREPROCESSING,
            )

    def _official_preprocessing(self) -> bool:
        p = self.preprocessing
        return (
            p.resize == "square"
            and p.resize_to == INPUT_SIZE
            and p.interpolation == "nearest"
            and (p.crop == "none" or p.size == INPUT_SIZE)
            and tuple(p.mean) == (0.0, 0.0, 0.0)
            and tuple(p.std) == (1.0, 1.0, 1.0)
        )


_DOC_COMMON = """
    Reference defaults (official code and paper) and what deepsift does with them:

    * input: 256 x 256 RGB face crops read with Keras ``load_img`` (PIL
      nearest-neighbour resize) and scaled by 1/255, no mean/std: the default
      preprocessing here (``resize=square``, ``interpolation=nearest``; PIL
      images are resized by PIL itself, pixel for pixel as Keras does);
    * output: the official sigmoid unit gives the probability of REAL (class
      order df=0, real=1). deepsift's logit is the logit of FAKE, so official
      weights are imported with the last Dense layer negated:
      ``fake_prob = 1 - official_output`` exactly;
    * loss: mean squared error on the sigmoid output (``model.compile(loss=
      'mean_squared_error')``): ``loss="mse"``, the default; ``loss="bce"``
      gives binary cross-entropy on the logit;
    * optimiser: Adam, lr 1e-3, betas (0.9, 0.999), epsilon 1e-7 (Keras's);
      the paper trains on batches of 75 images and divides the learning rate by
      10 every 1000 iterations down to 1e-6, with zoom, rotation, flip,
      brightness and hue augmentation;
    * Keras layer semantics: BatchNormalization epsilon 1e-3 and momentum
      0.99 (``eps=1e-3, momentum=0.01`` in PyTorch terms), "same" padding
      (TensorFlow's asymmetric rule when a size is not a multiple of the pool), channels-last
      flatten before the Dense layers, Glorot-uniform initial kernels.

    Where it differs: the learning-rate schedule is not built in (deepsift
    schedulers step per epoch: pass one as ``scheduler``), the batch size is the
    trainer's, and only flips are available as augmentation (``preprocessing.hflip``:
    0.5 by default, training only; the official test-time input is unchanged).
    Moving variances are updated with PyTorch's unbiased batch variance.

    Note on the official Meso4 files: unlike the MesoInception files, they list
    no LeakyReLU layer between the two Dense layers, so the hidden activation
    they were trained with is not recorded; like the official code that loads
    them, this port applies LeakyReLU(0.1), and its outputs are the official ones.

    Official weights: ``load_detector("{name}", weights=".../{file}")`` or
    ``detector.weights=...`` reads the Keras ``.h5`` file directly (h5py, no
    TensorFlow); other files load as deepsift state dicts / checkpoints.

    Args:
        dropout: rate of the two Dropout layers of the head (official 0.5).
        loss: ``"mse"`` (official) or ``"bce"``.
        preprocessing: a :class:`Preprocessing`, or fields overriding
            :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`; default Adam as above.
"""


class Meso4(MesoNet):
    __doc__ = """Meso-4: four conv/BN/max-pool stages and a 16-unit dense head (27,977 parameters).

    Convolutions (ReLU, "same"): 3x3 -> 8, 5x5 -> 8, 5x5 -> 16, 5x5 -> 16, each
    followed by BatchNormalization and max-pooling 2, 2, 2, 4.
    """ + _DOC_COMMON.format(name="meso4", file="Meso4_DF.h5")

    def _build_blocks(self) -> nn.Sequential:
        return nn.Sequential(
            MesoBlock(ConvReLU(3, 8, 3), 8, 2),
            MesoBlock(ConvReLU(8, 8, 5), 8, 2),
            MesoBlock(ConvReLU(8, 16, 5), 16, 2),
            MesoBlock(ConvReLU(16, 16, 5), 16, 4),
        )


class MesoInception4(MesoNet):
    __doc__ = """MesoInception-4: two Inception stages, two conv stages, 16-unit head (28,615 parameters).

    ``InceptionLayer(1, 4, 4, 2)`` (11 channels) and ``InceptionLayer(2, 4, 4, 2)``
    (12 channels), then 5x5 -> 16 and 5x5 -> 16 convolutions; each stage is
    followed by BatchNormalization and max-pooling 2, 2, 2, 4.
    """ + _DOC_COMMON.format(name="mesoinception4", file="MesoInception_DF.h5")

    def _build_blocks(self) -> nn.Sequential:
        first = InceptionLayer(3, 1, 4, 4, 2)
        second = InceptionLayer(first.out_channels, 2, 4, 4, 2)
        return nn.Sequential(
            MesoBlock(first, first.out_channels, 2),
            MesoBlock(second, second.out_channels, 2),
            MesoBlock(ConvReLU(second.out_channels, 16, 5), 16, 2),
            MesoBlock(ConvReLU(16, 16, 5), 16, 4),
        )

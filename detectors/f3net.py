"""F3-Net: frequency-aware decomposition and local frequency statistics on two Xceptions.

After Y. Qian, G. Yin, L. Sheng, Z. Chen and J. Shao, "Thinking in Frequency:
Face Forgery Detection by Mining Frequency-aware Clues", ECCV 2020. There is
no official code; the reference implementations are github.com/yyk-wew/F3Net
(``models.py``: modes ``FAD``, ``LFS``, ``Both``, ``Mix``; its README says it
does not reproduce the paper's results) and DeepfakeBench
(``training/detectors/f3net_detector.py``: the FAD branch only, on one
Xception, "following the reference GitHub implementation").

What is implemented (``mode="mix"``, the paper's F3-Net):

* **FAD** (frequency-aware decomposition, :class:`FrequencyAwareDecomposition`):
  the 2-D DCT of each colour channel of the whole (S x S) image, ``D x D^T``,
  masked by four filters ``base_i + (2 sigmoid(w_i) - 1)`` (binary bands on
  the anti-diagonal index ``u + v``: the paper's low ``[0, S/2.82]``, middle
  ``[S/2.82, S/2]`` and high ``[S/2, 2S]`` bands (1/16, 1/16-1/8 and the rest
  of the spectrum's area) and, as in both reference implementations, the full
  spectrum; bounds included, as there; ``w_i`` learnable, N(0, 0.1)), each
  brought back by the inverse DCT: 12 channels.
* **LFS** (local frequency statistics, :class:`LocalFrequencyStatistics`): the
  grey image (ITU-R 601 luma of the de-normalised 0-255 pixels, as yyk-wew/F3Net)
  cut into 10 x 10 windows with stride 2 and zero padding 4 (149 x 149 windows
  at 299 px), each window's DCT masked by six learnable bands (``u + v`` split
  evenly in six) and reduced by the paper's formula, the log of the masked
  spectrum's L1 norm, ``q_i = log10(||D(p) * h_i||_1 + 1)``: 6 channels.
* Two ImageNet Xceptions (timm ``legacy_xception``): FAD's with a 12-channel
  stem, LFS's with a 6-channel stem of stride 1 (the stems start from the RGB
  kernel tiled and divided by 4 and 2, as in yyk-wew/F3Net), and a **MixBlock**
  (:class:`MixBlock`, the cross attention of yyk-wew/F3Net) after block 7 (728
  channels) and after block 12 (1024); then ReLU, average pooling, the two
  2048-d vectors concatenated, dropout 0.2 and a 4096 -> 1 logit.

``mode="both"`` concatenates the two streams without MixBlocks, ``"fad"`` and
``"lfs"`` keep one stream (``"fad"`` is DeepfakeBench's F3-Net).

Reference defaults: yyk-wew/F3Net: 299 px inputs in [-1, 1] (mean = std =
0.5), BCE-with-logits on one logit, Adam lr 2e-4, betas (0.9, 0.999), batch 12
(the paper: 128), dropout 0.2 before ``fc``. DeepfakeBench (``config/detector/
f3net.yaml``): FAD + Xception, 256 px, mean = std = 0.5, no augmentation,
``last_linear`` ``Sequential(Dropout(0.5), Linear(2048, 2))``, cross-entropy,
Adam lr 2e-4, eps 1e-8, weight decay 5e-4, 10 epochs, batch 32. Its released
``f3net_best.pth`` holds ``backbone.*`` (Xception with ``conv1`` 12 -> 32 and
the unused ``adjust_channel``), ``FAD_head._DCT_all``, ``FAD_head._DCT_all_T``
and ``FAD_head.filters.{0..3}.{base,learnable}``; it loads strictly into
``mode="fad"``, and the file switches the detector to DeepfakeBench's test-time input
by itself (FAD rebuilt for its 256 px; ``cv2.resize`` ``INTER_CUBIC``, as
``abstract_dataset.py`` ``load_rgb``; a preprocessing the user set still wins, with
a warning). Checked against DeepfakeBench's own ``F3netDetector`` and test input
(``tests/official/deepfakebench_f3net.json``).

Where this differs: the paper's LFS formula (log of the band's L1 norm) rather
than yyk-wew/F3Net's (mean of ``log10|DCT|`` over the band), with ``+ 1``
inside the log so that flat windows (the zero border, saturated regions) give
0 instead of -inf; LFS reads pixel values from the de-normalised image
(yyk-wew rescales ``(x + 1) * 122.5``, 0-245); one fake logit (2-class heads
load as ``w[1] - w[0]``, ``b[1] - b[0]``) and BCE; the DCT matrices and base
bands are fixed buffers rebuilt from the image size, not parameters; the
MixBlock follows yyk-wew/F3Net's reading of the paper (the paper gives no
code); the image size is ``preprocessing.size`` (FAD's learnable filters are
S x S), so images are resized to it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.heads import fake_logit_head, fill_num_batches_tracked
from detectors.layers.xception import XCEPTION_FEATURES, xception_backbone
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

MODES = ("mix", "both", "fad", "lfs")
#: yyk-wew/F3Net and DeepfakeBench feed [-1, 1] images (mean = std = 0.5); no augmentation
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 299,
    "resize": "square",
    "interpolation": "bilinear",
    "crop": "none",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}
LFS_WINDOW, LFS_STRIDE, LFS_PADDING, LFS_BANDS = 10, 2, 4, 6
#: inside LFS's log10, on the 0-255 scale: flat windows give 0 rather than -inf
LFS_EPS = 1.0
#: ITU-R BT.601 luma weights (yyk-wew/F3Net's grey conversion)
LUMA = (0.299, 0.587, 0.114)


def dct_matrix(size: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ x`` transforms the columns of ``x``)."""
    n = torch.arange(size, dtype=torch.float64)
    matrix = torch.cos((n[None, :] + 0.5) * n[:, None] * math.pi / size) * math.sqrt(2.0 / size)
    matrix[0] /= math.sqrt(2.0)
    return matrix.float()


def band_mask(size: int, start: float, end: float) -> torch.Tensor:
    """1 where ``start <= u + v <= end`` on a (size, size) spectrum, else 0."""
    index = torch.arange(size)
    diagonal = index[:, None] + index[None, :]
    return ((diagonal >= start) & (diagonal <= end)).float()


def soft_sign(x: torch.Tensor) -> torch.Tensor:
    """The paper's ``sigma(x) = (1 - exp(-x)) / (1 + exp(-x)) = 2 sigmoid(x) - 1``."""
    return 2.0 * torch.sigmoid(x) - 1.0


class FrequencyAwareDecomposition(nn.Module):
    """FAD: the image split into four DCT bands (low, middle, high, all), 3 -> 12 channels."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        bands = [(0, size // 2.82), (size // 2.82, size // 2), (size // 2, size * 2), (0, size * 2)]
        self.register_buffer("dct", dct_matrix(size), persistent=False)
        base = torch.stack([band_mask(size, start, end) for start, end in bands])
        self.register_buffer("base", base, persistent=False)
        self.learnable = nn.Parameter(torch.empty(len(bands), size, size).normal_(0.0, 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(
                f"F3-Net's FAD is built for {self.size} x {self.size} images, got "
                f"{tuple(x.shape[-2:])}; resize to preprocessing.size"
            )
        with torch.autocast(x.device.type, enabled=False):  # DCTs in float32, even under AMP
            spectrum = self.dct @ x.float() @ self.dct.T  # (B, 3, S, S)
            filters = self.base + soft_sign(self.learnable.float())  # (4, S, S)
            bands = spectrum[:, None] * filters[None, :, None]  # (B, 4, 3, S, S)
            images = self.dct.T @ bands @ self.dct
        return images.flatten(1, 2)  # (B, 12, S, S): band-major, as the references concatenate


class LocalFrequencyStatistics(nn.Module):
    """LFS: per 10 x 10 window (stride 2), the log L1 norm of six DCT bands: 1 -> 6 channels."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        window, bands = LFS_WINDOW, LFS_BANDS
        self.register_buffer("dct", dct_matrix(window), persistent=False)
        width = 2.0 * window / bands
        base = torch.stack([band_mask(window, width * i, width * (i + 1)) for i in range(bands)])
        self.register_buffer("base", base, persistent=False)
        self.learnable = nn.Parameter(torch.empty(bands, window, window).normal_(0.0, 0.1))
        # normalised RGB -> 0-255 grey in one affine map: 255 * sum_c luma_c (x_c std_c + mean_c)
        luma = torch.tensor(LUMA)
        self.register_buffer("grey_weight", 255.0 * luma * torch.tensor(std), persistent=False)
        self.grey_bias = 255.0 * float((luma * torch.tensor(mean)).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        rows = (height + 2 * LFS_PADDING - LFS_WINDOW) // LFS_STRIDE + 1
        cols = (width + 2 * LFS_PADDING - LFS_WINDOW) // LFS_STRIDE + 1
        with torch.autocast(x.device.type, enabled=False):  # float32, even under AMP
            statistics = torch.log10(self._band_norms(x.float()) + LFS_EPS)
        return statistics.transpose(1, 2).reshape(batch, -1, rows, cols)

    def _band_norms(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, 6): the L1 norm of each band of each window's DCT."""
        grey = torch.einsum("bchw,c->bhw", x, self.grey_weight)[:, None] + self.grey_bias
        window = LFS_WINDOW
        patches = F.unfold(grey, window, padding=LFS_PADDING, stride=LFS_STRIDE)  # (B, 100, L)
        patches = patches.transpose(1, 2).reshape(x.shape[0], -1, window, window)
        spectrum = (self.dct @ patches @ self.dct.T).abs().flatten(2)  # (B, L, 100)
        filters = (self.base + soft_sign(self.learnable.float())).abs().flatten(1)  # (6, 100)
        return spectrum @ filters.T  # ||D(p) * h_i||_1 = |D(p)| . |h_i|


class MixBlock(nn.Module):
    """Cross attention between the FAD and LFS feature maps (yyk-wew/F3Net's ``MixBlock``).

    Per channel, queries ``[q_fad | q_lfs]`` (W x 2H) times keys
    ``[k_fad^T ; k_lfs^T]`` (2H x W) give a W x W attention (softmax over the
    last axis); each stream adds BN(depthwise 1x1 conv(other stream * attention
    * (2 sigmoid(gamma) - 1))), gamma starting at 0 so the block starts as the
    identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fad_query = nn.Conv2d(channels, channels, 1)
        self.lfs_query = nn.Conv2d(channels, channels, 1)
        self.fad_key = nn.Conv2d(channels, channels, 1)
        self.lfs_key = nn.Conv2d(channels, channels, 1)
        self.fad_gamma = nn.Parameter(torch.zeros(1))
        self.lfs_gamma = nn.Parameter(torch.zeros(1))
        self.fad_conv = nn.Conv2d(channels, channels, 1, groups=channels)
        self.fad_bn = nn.BatchNorm2d(channels)
        self.lfs_conv = nn.Conv2d(channels, channels, 1, groups=channels)
        self.lfs_bn = nn.BatchNorm2d(channels)

    def forward(self, fad: torch.Tensor, lfs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if fad.shape != lfs.shape or fad.shape[-1] != fad.shape[-2]:
            raise ValueError(
                f"MixBlock needs square maps of one shape, got {tuple(fad.shape)} and {tuple(lfs.shape)}"
            )
        b, c, w, h = fad.shape
        query = torch.cat(
            [self.fad_query(fad).reshape(-1, w, h), self.lfs_query(lfs).reshape(-1, w, h)], dim=2
        )
        key = torch.cat(
            [
                self.fad_key(fad).reshape(-1, w, h).transpose(1, 2),
                self.lfs_key(lfs).reshape(-1, w, h).transpose(1, 2),
            ],
            dim=1,
        )
        attention = torch.softmax(torch.bmm(query, key), dim=-1).reshape(b, c, w, w)
        new_fad = fad + self.fad_bn(self.fad_conv(lfs * attention * soft_sign(self.lfs_gamma)))
        new_lfs = lfs + self.lfs_bn(self.lfs_conv(fad * attention * soft_sign(self.fad_gamma)))
        return new_fad, new_lfs


def _stem_to_block7(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.act1(net.bn1(net.conv1(x)))
    x = net.act2(net.bn2(net.conv2(x)))
    for i in range(1, 8):
        x = getattr(net, f"block{i}")(x)
    return x


def _block8_to_12(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for i in range(8, 13):
        x = getattr(net, f"block{i}")(x)
    return x


def _exit_flow(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv3 .. bn4, the final ReLU and average pooling: (B, 2048)."""
    x = net.act3(net.bn3(net.conv3(x)))
    x = net.act4(net.bn4(net.conv4(x)))
    return x.mean(dim=(2, 3))


class F3Net(Detector):
    """F3-Net (see the module docstring); ``mode`` picks the streams.

    State dict: ``fad.learnable`` (4, S, S), ``fad_xception.*``,
    ``lfs.learnable`` (6, 10, 10), ``lfs_xception.*`` (timm ``legacy_xception``
    names), ``mix7.*``, ``mix12.*``, ``head.*``: 48,314,929 parameters at 299
    px in ``mix`` mode, as yyk-wew/F3Net's ``F3Net(mode='Mix')`` without its
    frozen DCT/band tensors and its two Xceptions' unused ImageNet heads.

    Args:
        mode: ``"mix"`` (the paper), ``"both"``, ``"fad"`` (DeepfakeBench) or ``"lfs"``.
        pretrained_file: a local ImageNet Xception (``xception-b5690688.pth``) for
            both streams; ``None``: random init.
        drop_rate: dropout before the head (yyk-wew/F3Net 0.2, DeepfakeBench 0.5).
        preprocessing: its ``size`` is the image side FAD is built for.
        optimizer, scheduler: see :class:`Detector`; default DeepfakeBench's Adam
            (lr 2e-4, weight decay 5e-4).
    """

    def __init__(
        self,
        mode: str = "mix",
        pretrained_file: str | None = None,
        drop_rate: float = 0.2,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise UserError(f"detector.mode must be one of {', '.join(MODES)}, not {mode!r}")
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.mode = mode
        streams = 0
        if mode in ("mix", "both", "fad"):
            self.fad = FrequencyAwareDecomposition(self.preprocessing.size)
            self.fad_xception = xception_backbone(12, pretrained_file)
            streams += 1
        if mode in ("mix", "both", "lfs"):
            self.lfs = LocalFrequencyStatistics(self.preprocessing.mean, self.preprocessing.std)
            self.lfs_xception = xception_backbone(LFS_BANDS, pretrained_file)
            self.lfs_xception.conv1.stride = (1, 1)  # LFS maps are half the image size
            streams += 1
        if mode == "mix":
            self.mix7 = MixBlock(728)
            self.mix12 = MixBlock(1024)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(streams * XCEPTION_FEATURES, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features of the stream(s), concatenated FAD first: (B, 2048 or 4096)."""
        if self.mode == "fad":
            return self.fad_xception(self.fad(x))
        if self.mode == "lfs":
            return self.lfs_xception(self.lfs(x))
        fad = _stem_to_block7(self.fad_xception, self.fad(x))
        lfs = _stem_to_block7(self.lfs_xception, self.lfs(x))
        if self.mode == "mix":
            fad, lfs = self.mix7(fad, lfs)
        fad = _block8_to_12(self.fad_xception, fad)
        lfs = _block8_to_12(self.lfs_xception, lfs)
        if self.mode == "mix":
            fad, lfs = self.mix12(fad, lfs)
        return torch.cat(
            [_exit_flow(self.fad_xception, fad), _exit_flow(self.lfs_xception, lfs)], 1
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.features(batch["image"])
        return {"logits": self.head(self.dropout(features)).squeeze(1)}

    def load_weights(self, path: str | Path) -> None:
        """Load DeepfakeBench's ``f3net_best.pth`` (``mode="fad"``) or a deepsift file, strictly."""
        source = f"weights file {path}"
        state = strip_prefixes(read_state_dict(path), ("module.",))
        if "FAD_head._DCT_all" in state:
            state = self._from_deepfakebench(state, source)
        state = fill_num_batches_tracked(state, self.state_dict())
        load_state_dict_strict(self, state, source)
        log.info("F3-Net: loaded %s", path)

    def _from_deepfakebench(self, state: Mapping[str, Any], source: str) -> dict[str, Any]:
        """DeepfakeBench's F3netDetector state dict in this detector's layout (FAD only)."""
        size = state["FAD_head._DCT_all"].shape[-1]
        if self.mode != "fad":
            raise UserError(
                f"{source} is DeepfakeBench's F3-Net: its FAD stream only, for {size} px "
                f"images; load it with detector.mode=fad"
            )
        # DeepfakeBench's test input: cv2 INTER_CUBIC to its resolution (256), mean = std = 0.5
        self.use_protocol(
            "DeepfakeBench",
            {**DEEPFAKEBENCH_FACE_PREPROCESSING, "size": size, "resize_to": size},
            DEFAULT_PREPROCESSING,
        )
        if size != self.preprocessing.size:
            raise UserError(
                f"{source} is DeepfakeBench's F3-Net for {size} px images (its FAD filters are "
                f"{size} x {size}), but detector.preprocessing.size is {self.preprocessing.size}"
            )
        if self.fad.size != size:  # FAD was built for the default size: rebuild it for the file's
            device = self.fad.learnable.device
            self.fad = FrequencyAwareDecomposition(size).to(device)
        fixed = {
            "FAD_head._DCT_all": self.fad.dct,
            "FAD_head._DCT_all_T": self.fad.dct.T,
            **{f"FAD_head.filters.{i}.base": self.fad.base[i] for i in range(4)},
        }
        for key, ours in fixed.items():
            theirs = state.get(key)
            if (
                theirs is None
                or theirs.shape != ours.shape
                or not torch.allclose(theirs.float(), ours, atol=1e-5)
            ):
                raise UserError(f"{source}: {key} is not the DCT/band layout F3-Net builds")
        out: dict[str, Any] = {}
        head: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key in fixed or key.startswith("backbone.adjust_channel."):
                continue
            if key.startswith("backbone.last_linear."):
                head[key.rsplit(".", 1)[1]] = value
            elif key.startswith("backbone."):
                out[f"fad_xception.{key[len('backbone.') :]}"] = value
            elif not key.startswith("FAD_head.filters."):
                out[key] = value
        learnable = [state.get(f"FAD_head.filters.{i}.learnable") for i in range(4)]
        if all(t is not None for t in learnable):
            out["fad.learnable"] = torch.stack(learnable)
        if "weight" in head:
            out["head.weight"], out["head.bias"] = fake_logit_head(
                head["weight"], head.get("bias"), source
            )
        return out

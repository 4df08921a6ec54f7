"""LipForensics: a lipreading network fine-tuned to tell fake mouth movements apart.

After A. Haliassos, K. Vougioukas, S. Petridis and M. Pantic, "Lips Don't Lie: A
Generalisable and Robust Approach to Face Forgery Detection", CVPR 2021 (arXiv
2012.07657; code github.com/ahaliassos/LipForensics, MIT licence, commit
d0bf5553bfb9676f1771d590472b26a3a76de894: ``models/spatiotemporal_net.py``
``Lipreading``, ``models/resnet.py``, ``models/tcn.py``,
``models/configs/lrw_resnet18_mstcn.json``).

The network is the authors' ``Lipreading(num_classes=1)``: a 3-D convolutional front-end
(``frontend3D``: Conv3d 1 -> 64, kernel (5, 7, 7), stride (1, 2, 2), BatchNorm3d, PReLU,
MaxPool3d (1, 3, 3) / (1, 2, 2)), a ResNet-18 trunk without stem (``trunk``: BasicBlocks
with PReLU, [2, 2, 2, 2], global average pool) applied to each of the T frames, and a
multi-scale multi-branch TCN (``tcn``: 4 levels, dilation 2^i, branches of kernel 3 / 5 / 7
with 256 channels each, "same" padding, PReLU, dropout 0.2, a 1x1 residual conv on every
level) whose per-frame outputs are averaged over T and mapped by ``tcn_output`` to one
logit (fake = 1 in the authors' datasets).

Reference defaults (``evaluate.py``, ``data/dataset_clips.py``,
``preprocessing/crop_mouths.py``): clips of 25 consecutive frames (``frames_per_clip``;
non-overlapping clips at evaluation, the video score is the mean clip logit); the input is
the mouth region: faces aligned to a mean face (256 x 256), a 96 x 96 crop around the
mouth landmarks, converted to grayscale with PIL ``convert("L")``, scaled to [0, 1],
``CenterCrop(88)``, normalised with mean 0.421, std 0.165, laid out (B, 1, T, 88, 88).
The released training code is evaluation-only; the paper trains on FF++ with the
front-end + trunk initialised from lipreading on LRW, 88 x 88 random crops and horizontal
flips of the whole clip, binary cross-entropy, Adam lr 2e-4, batch 32 (from the paper,
not from code: unconfirmed here).

Where deepsift differs: ``transform`` reads ``sample["mouth_frames"]`` (the pipeline's
mouth crops: ``python -m datasets.preprocess ... clip_len=25 stride=1 mouths=true`` writes
them with the authors' recipe, pixel for pixel (:mod:`datasets.mouths`), and ``score.py``
cuts them alike from the tracked face's landmarks; any size: resized to ``resize`` (96) first), one random crop box and one flip
per clip in training (:meth:`ClipPreprocessing.draw`), centre crop at evaluation; the LRW
lipreading start is a local ``pretrained_file`` (github.com/mpc001/
Lipreading_using_Temporal_Convolutional_Networks ``lrw_resnet18_mstcn*.pth.tar``,
``{"model_state_dict": ...}``, non-commercial licence; every key but the 500-way
``tcn.tcn_output`` must load), nothing is downloaded. ``freeze_features``
freezes ``frontend3D`` + ``trunk`` (the paper's fine-tuning regime; off by default).
``width`` / ``trunk_layers`` / ``hidden_dim`` / ``tcn_layers`` shrink the network for
tests (defaults: the authors' sizes).

The official ``lipforensics_ff.pth`` (``{"model": Lipreading.state_dict()}``) loads
strictly through :meth:`LipForensics.load_weights`; the forward was checked against the
authors' ``Lipreading`` on seeded weights: full ResNet-18 trunk, 2-level MS-TCN of 3 x 32
channels, T = 6, 88 px (tests/official/video/lipforensics_ff.json, made by
tests/official/make_lipforensics.py), max |dlogit| 0.0; once, outside the tests, at full
size (35,990,785 parameters, T = 25, 88 px), 0.0. No released ``lipforensics_ff.pth`` was
available offline: its layout is inferred from ``get_model`` (``checkpoint["model"]``
loaded with ``strict=True`` into ``Lipreading``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.clips import ClipPreprocessing

# the authors' normalisation of grayscale mouth crops (evaluate.py)
MEAN, STD = 0.421, 0.165


#: the paper's optimiser (Adam, lr 2e-4; the training code is not released)
LIPFORENSICS_ADAM: Callable[..., torch.optim.Optimizer] = functools.partial(
    torch.optim.Adam, lr=2e-4
)


class BasicBlock(nn.Module):
    """ResNet basic block with one PReLU per conv (``relu1`` / ``relu2``)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.PReLU(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Trunk(nn.Module):
    """ResNet-18 stages 1-4 + global average pool (the stem is the 3-D front-end)."""

    def __init__(self, width: int = 64, layers: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        inplanes = width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = [BasicBlock(inplanes, planes, 1 if i == 0 else 2)]
            stage += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes
        self.out_features = inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


class ConvBranch(nn.Module):
    """Conv1d (bias) -> BatchNorm1d -> symmetric chomp of the padding -> PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(cin, cout, kernel, padding=self.pad, dilation=dilation)
        self.batchnorm = nn.BatchNorm1d(cout)
        self.non_lin = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.batchnorm(self.conv(x))
        half = self.pad // 2
        if half:
            y = y[:, :, half:-half]
        return self.non_lin(y)


class TemporalBlock(nn.Module):
    """Two multi-branch conv sets (``cbcr0_k``, ``cbcr1_k``), dropout, 1x1 residual, PReLU."""

    def __init__(
        self, cin: int, cout: int, kernels: Sequence[int], dilation: int, dropout: float
    ) -> None:
        super().__init__()
        self.kernels = tuple(kernels)
        branch = cout // len(self.kernels)
        for k, size in enumerate(self.kernels):
            setattr(self, f"cbcr0_{k}", ConvBranch(cin, branch, size, dilation))
        for k, size in enumerate(self.kernels):
            setattr(self, f"cbcr1_{k}", ConvBranch(cout, branch, size, dilation))
        self.dropout0 = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        # the authors' test is (cin // branches) != cout: true for every level of their
        # configuration, so every level has the 1x1 residual conv
        self.downsample = nn.Conv1d(cin, cout, 1) if cin // len(self.kernels) != cout else None
        self.relu_final = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.kernels)
        y = torch.cat([getattr(self, f"cbcr0_{k}")(x) for k in range(n)], 1)
        y = self.dropout0(y)
        y = torch.cat([getattr(self, f"cbcr1_{k}")(y) for k in range(n)], 1)
        y = self.dropout1(y)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu_final(y + identity)


class MultiscaleTCN(nn.Module):
    """``mb_ms_tcn.network`` of temporal blocks, mean over T, ``tcn_output`` linear."""

    def __init__(
        self,
        cin: int,
        hidden_dim: int,
        layers: int,
        kernels: Sequence[int],
        dropout: float,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        width = hidden_dim * len(kernels)
        blocks = [
            TemporalBlock(cin if i == 0 else width, width, kernels, 2**i, dropout)
            for i in range(layers)
        ]
        self.mb_ms_tcn = nn.Module()
        self.mb_ms_tcn.network = nn.Sequential(*blocks)
        self.tcn_output = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, C) -> (B, num_classes)."""
        y = self.mb_ms_tcn.network(x.transpose(1, 2))
        return self.tcn_output(y.mean(dim=2))


class LipForensics(Detector):
    """The authors' ``Lipreading`` (3-D front-end + ResNet-18 + MS-TCN) on grayscale mouth
    crops of T frames -> one fake logit.

    Args:
        clip_len: frames per clip (T, 25).
        clip_stride: frame step between sampled frames (1: consecutive).
        size / resize: network input side (88) and the side mouth crops are resized to
            before cropping (96, the authors' crop size).
        width / trunk_layers: front-end channels and stage-1 width (64) and blocks per
            ResNet stage (2, 2, 2, 2).
        hidden_dim / tcn_layers / kernel_sizes / dropout: MS-TCN channels per branch
            (256), levels (4), branch kernels (3, 5, 7) and dropout (0.2).
        pretrained_file: local LRW lipreading weights (mpc001's ``Lipreading`` layout,
            ``model_state_dict``); ``None``: random init.
        freeze_features: train only the MS-TCN (``frontend3D`` and ``trunk`` frozen).
        hflip: probability of one horizontal flip per clip in training.
    """

    input_kind = "clip"
    needs_mouth = True

    def __init__(
        self,
        clip_len: int = 25,
        clip_stride: int = 1,
        size: int = 88,
        resize: int = 96,
        width: int = 64,
        trunk_layers: Sequence[int] = (2, 2, 2, 2),
        hidden_dim: int = 256,
        tcn_layers: int = 4,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        dropout: float = 0.2,
        pretrained_file: str | None = None,
        freeze_features: bool = False,
        hflip: float = 0.5,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(None, optimizer or LIPFORENSICS_ADAM, scheduler)
        self.clip_len = int(clip_len)
        self.clip_stride = int(clip_stride)
        if any(int(k) % 2 == 0 for k in kernel_sizes):
            raise UserError(f"LipForensics: kernel_sizes={list(kernel_sizes)} must all be odd")
        w = int(width)
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, w, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False),
            nn.BatchNorm3d(w),
            nn.PReLU(w),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        )
        self.trunk = Trunk(w, tuple(int(n) for n in trunk_layers))
        self.tcn = MultiscaleTCN(
            self.trunk.out_features,
            int(hidden_dim),
            int(tcn_layers),
            tuple(int(k) for k in kernel_sizes),
            float(dropout),
        )
        self.clip_preprocessing = ClipPreprocessing(
            int(size), resize=int(resize), crop="random", hflip=hflip
        )
        if pretrained_file:
            self._load_lipreading(pretrained_file)
        if freeze_features:
            for p in [*self.frontend3D.parameters(), *self.trunk.parameters()]:
                p.requires_grad_(False)

    def load_weights(self, path: str | Path) -> None:
        """Load the official ``lipforensics_ff.pth`` (``{"model": state_dict}``) strictly."""
        source = f"weights file {path}"
        if not Path(path).is_file():
            raise UserError(f"LipForensics: {source} does not exist (detector.weights=)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if "tcn.tcn_output.weight" not in state:
            raise UserError(
                f"LipForensics: {source} has no tcn.tcn_output.weight: not a LipForensics "
                "(Lipreading) state dict"
            )
        if state["tcn.tcn_output.weight"].shape[0] != 1:
            raise UserError(
                f"LipForensics: {source} has a {state['tcn.tcn_output.weight'].shape[0]}-way "
                "tcn_output (a lipreading classifier?); expected the 1-logit forgery head"
            )
        load_state_dict_strict(self, state, source)

    def _load_lipreading(self, path: str) -> None:
        """LRW lipreading weights: every key but ``tcn.tcn_output.*`` must match by name and
        shape; the forgery head stays random."""
        source = f"detector.pretrained_file={path}"
        if not Path(path).is_file():
            raise UserError(f"LipForensics: {source} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for container in ("model_state_dict", "model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(container), dict):
                state = state[container]
                break
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("tcn.tcn_output.")}
        state = {k: v for k, v in state.items() if not k.startswith("tcn.tcn_output.")}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
        if missing or unexpected or wrong:
            raise UserError(
                f"LipForensics: {source} is not Lipreading (ResNet-18 + MS-TCN) weights for "
                f"this network: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"other shapes {wrong[:5]}"
            )
        self.load_state_dict(state, strict=False)

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["mouth_frames"]`` (T PIL mouth crops) -> ``{"clip": (T, 1, 88, 88)}``."""
        frames = sample.get("mouth_frames")
        if frames is None:
            raise UserError(
                "LipForensics: the sample has no mouth_frames; it needs mouth crops "
                "(needs_mouth=True)"
            )
        if len(frames) != self.clip_len:
            raise UserError(
                f"LipForensics: got {len(frames)} mouth frames, the config says "
                f"clip_len={self.clip_len}"
            )
        pre = self.clip_preprocessing
        params = pre.draw(train)
        out = []
        for frame in frames:
            x = TF.pil_to_tensor(frame.convert("L"))
            if tuple(x.shape[1:]) != (pre.resize, pre.resize):
                x = TF.resize(x, [pre.resize, pre.resize], antialias=True)
            x = TF.crop(x, params["top"], params["left"], pre.size, pre.size)
            if params["flip"]:
                x = TF.horizontal_flip(x)
            out.append((x.float() / 255.0 - MEAN) / STD)
        return {"clip": torch.stack(out)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = batch["clip"]
        if clip.dim() != 5 or clip.shape[2] != 1:
            raise UserError(
                f"LipForensics: clip of shape {tuple(clip.shape)}; expected (B, T, 1, H, W) "
                "grayscale mouth crops"
            )
        b, t = clip.shape[:2]
        x = self.frontend3D(clip.transpose(1, 2))  # (B, C, T, H', W')
        x = self.trunk(x.transpose(1, 2).flatten(0, 1)).view(b, t, -1)
        return {"logits": self.tcn(x)[:, 0]}

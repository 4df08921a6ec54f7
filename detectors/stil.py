"""STIL: spatiotemporal inconsistency learning for deepfake video detection.

After Z. Gu, Y. Chen, T. Yao, S. Ding, J. Li, F. Huang and L. Ma, "Spatiotemporal
Inconsistency Learning for DeepFake Video Detection", ACM MM 2021 (arXiv 2109.01860;
code as ported by DeepfakeBench, ``training/detectors/stil_detector.py``).

An SCNet-50-v1d (a ResNet-50-D with self-calibrated convolutions) whose bottlenecks are
split in two branches: a spatial one (SIM: self-calibrated conv ``scconv``) and a
temporal one: TIM (``tim``: horizontal/vertical temporal differences of a channel-reduced
feature, (H, T) and (T, W) planes, sigmoid attention), ISM (``ism``: an ECA-style
channel gate on the spatial branch's calibration map, added to the temporal branch) and
a learnable temporal shift (``shift``: depth-wise 1-D conv over T, initialised as the
TSM shift). The T frames run through the 2-D network as a (B * T) batch, the per-frame
logits are averaged over T.

Reference defaults (DeepfakeBench ``training/config/detector/stil.yaml`` and
``stil_detector.py``, commit 8a4a7bf5e966c5c5618bc27d1719c3683eae9a04): ``clip_size: 8``
consecutive frames, 224 px face crops, mean = std = 0.5, 2-class ``fc``, softmax class 1 =
fake, cross-entropy; Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay 5e-4, no
schedule, 10 epochs, batch 8; augmentation flip 0.5, rotate +-10 deg 0.5, blur 0.5,
brightness/contrast +-0.1 0.5, JPEG 40-100; the ImageNet start is SCNet's
``scnet50_v1d-4109d1e1.pth``, loaded non-strictly (the STIL modules stay random).

Where deepsift differs: one fake logit (``fc`` has one row, ``z_fake - z_real`` of a
2-class file; the mean over T commutes with the difference), trained with binary
cross-entropy; training augmentation is one flip and one JPEG quality (40-100, p 0.5)
per clip (:class:`detectors.layers.clips.ClipPreprocessing`), no rotation, blur or
colour jitter; the ImageNet start is a local ``pretrained_file`` (SCNet layout, see
:meth:`STIL._load_backbone`), nothing is downloaded. ``width`` / ``layers`` /
``stem_width`` shrink the network for tests (defaults: the paper's ResNet-50 sizes).

DeepfakeBench's checkpoint (``stil_best.pth``: ``model.base_model.*``, ``module.``-
prefixed from DDP) loads strictly through :meth:`STIL.load_weights`; its forward was
checked against DeepfakeBench's ``STIL_Model`` on seeded weights: one block per stage,
T = 4, 64 px (tests/official/video/deepfakebench_stil.json), max |dlogit| 1.3e-7; once, outside
the tests, at full size (``scnet50_v1d``, T = 8, 224 px), 1.2e-7.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.clips import ClipPreprocessing


def _conv_bn(cin: int, cout: int, kernel: Any, padding: Any = 0, **kw: Any) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, bias=False, **kw), nn.BatchNorm2d(cout)
    )


class ISM(nn.Module):
    """Information supplement: a 1-D conv over the pooled channels, a sigmoid channel gate."""

    def __init__(self, k_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k_size, padding=(k_size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3))[:, None]  # (NT, 1, C)
        return x * torch.sigmoid(self.conv(y))[:, 0, :, None, None]


class TIM(nn.Module):
    """Temporal inconsistency: frame differences along (H, T) and (T, W) planes -> attention."""

    def __init__(self, channels: int, segments: int, reduction: int = 16) -> None:
        super().__init__()
        self.segments = segments
        c = channels // reduction
        self.conv1 = nn.Conv2d(channels, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv_ht = nn.Conv2d(c, c, (3, 1), padding=(1, 0), groups=c, bias=False)
        self.conv_tw = nn.Conv2d(c, c, (1, 3), padding=(0, 1), groups=c, bias=False)
        self.htie_conv1 = _conv_bn(c, c, (3, 1), (1, 0))
        self.vtie_conv1 = _conv_bn(c, c, (1, 3), (0, 1))
        self.htie_conv2 = _conv_bn(c, c, (3, 1), (1, 0))
        self.vtie_conv2 = _conv_bn(c, c, (1, 3), (0, 1))
        self.ht_up_conv = _conv_bn(c, channels, 1)
        self.tw_up_conv = _conv_bn(c, channels, 1)

    @staticmethod
    def _branch(
        plane: torch.Tensor, conv: nn.Module, down: nn.Module, direct: nn.Module, up: nn.Module
    ) -> torch.Tensor:
        """``plane`` (M, c, A, T): the next frame's conv minus this frame, the last frame 0."""
        diff = F.pad(conv(plane)[..., 1:] - plane[..., :-1], (0, 1))
        pooled = F.avg_pool2d(diff, (2, 1))
        mixed = (diff + F.interpolate(down(pooled), diff.shape[2:]) + direct(diff)) / 3
        return torch.sigmoid(up(mixed)) - 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bn1(self.conv1(x))
        nt, c, h, w = z.shape
        n, t, big = nt // self.segments, self.segments, x.shape[1]
        z = z.view(n, t, c, h, w)
        # (H, T) planes, one per column; (T, W) planes (transposed to (W, T)), one per row
        ht = self._branch(
            z.permute(0, 4, 2, 3, 1).reshape(n * w, c, h, t),
            self.conv_ht,
            self.htie_conv1,
            self.htie_conv2,
            self.ht_up_conv,
        )
        ht = ht.view(n, w, big, h, t).permute(0, 4, 2, 3, 1)
        tw = self._branch_tw(z.permute(0, 3, 2, 1, 4).reshape(n * h, c, t, w))
        tw = tw.view(n, h, big, t, w).permute(0, 3, 2, 1, 4)
        att = 0.5 * (ht + tw).reshape(nt, big, h, w)
        return x + x * att

    def _branch_tw(self, plane: torch.Tensor) -> torch.Tensor:
        """``plane`` (M, c, T, W); the (T, W) counterpart of :meth:`_branch`."""
        diff = F.pad(self.conv_tw(plane)[:, :, 1:] - plane[:, :, :-1], (0, 0, 0, 1))
        pooled = F.avg_pool2d(diff, (1, 2))
        down = F.interpolate(self.vtie_conv1(pooled), diff.shape[2:])
        mixed = (diff + down + self.vtie_conv2(diff)) / 3
        return torch.sigmoid(self.tw_up_conv(mixed)) - 0.5


class TemporalShift(nn.Module):
    """Depth-wise conv over T per channel, initialised as TSM: 1/8 of the channels shifted
    one frame back, 1/8 one frame forward, the rest kept."""

    def __init__(self, channels: int, segments: int, n_div: int = 8) -> None:
        super().__init__()
        self.segments = segments
        fold = channels // n_div
        width = n_div * fold
        self.conv = nn.Conv1d(width, width, 3, padding=1, groups=width, bias=False)
        with torch.no_grad():
            if self.conv.weight.device.type != "meta":
                self.conv.weight.zero_()
                self.conv.weight[:fold, 0, 2] = 1
                self.conv.weight[fold : 2 * fold, 0, 0] = 1
                self.conv.weight[2 * fold :, 0, 1] = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        n = nt // self.segments
        y = x.view(n, self.segments, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, self.segments)
        y = self.conv(y).view(n, h, w, c, self.segments)
        return y.permute(0, 4, 3, 1, 2).reshape(nt, c, h, w)


class SCConv(nn.Module):
    """Self-calibrated conv: ``k4(k3(x) * sigmoid(x + up(f_h(f_w(x)))))``; also returns the
    calibrated map before ``k4`` (ISM's input)."""

    def __init__(self, channels: int, stride: int, pooling_r: int = 4) -> None:
        super().__init__()
        c = channels
        self.f_w = nn.Sequential(
            nn.AvgPool2d(pooling_r, pooling_r),
            nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        )
        self.f_h = _conv_bn(c, c, (3, 1), (1, 0))
        self.k3 = _conv_bn(c, c, 3, 1)
        self.k4 = _conv_bn(c, c, 3, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = torch.sigmoid(x + F.interpolate(self.f_h(self.f_w(x)), x.shape[2:]))
        calibrated = self.k3(x) * gate
        return self.k4(calibrated), calibrated


class STILBottleneck(nn.Module):
    """SCNet bottleneck (expansion 4, half-width branches) with the STIL temporal branch."""

    def __init__(
        self,
        segments: int,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        avd: bool = False,
    ) -> None:
        super().__init__()
        gw = planes // 2  # bottleneck_width 32 / 64, cardinality 1
        self.conv1_a = nn.Conv2d(inplanes, gw, 1, bias=False)
        self.bn1_a = nn.BatchNorm2d(gw)
        self.conv1_b = nn.Conv2d(inplanes, gw, 1, bias=False)
        self.bn1_b = nn.BatchNorm2d(gw)
        self.tim = TIM(gw, segments)
        self.shift = TemporalShift(gw, segments)
        self.ism = ISM()
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if avd else None
        stride = 1 if avd else stride
        self.k1 = _conv_bn(gw, gw, 3, 1, stride=stride)
        self.scconv = SCConv(gw, stride)
        self.conv3 = nn.Conv2d(2 * gw, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1_a(self.conv1_a(x)))
        b = F.relu(self.bn1_b(self.conv1_b(x)))
        b, calibrated = self.scconv(b)
        b = F.relu(b)
        a = self.shift(self.tim(a) + self.ism(calibrated))
        a = F.relu(self.k1(a))
        if self.avd_layer is not None:
            a, b = self.avd_layer(a), self.avd_layer(b)
        out = self.bn3(self.conv3(torch.cat([a, b], dim=1)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class SCNet(nn.Module):
    """SCNet-v1d (deep stem, average-pool downsampling, avd) of STIL bottlenecks."""

    def __init__(
        self,
        segments: int,
        layers: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        stem_width: int = 32,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        s = stem_width
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, s, 3, 2, 1, bias=False),
            nn.BatchNorm2d(s),
            nn.ReLU(inplace=True),
            nn.Conv2d(s, s, 3, 1, 1, bias=False),
            nn.BatchNorm2d(s),
            nn.ReLU(inplace=True),
            nn.Conv2d(s, 2 * s, 3, 1, 1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(2 * s)
        inplanes = 2 * s
        stages = []
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * 4:
                pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                downsample = nn.Sequential(
                    pool, nn.Conv2d(inplanes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
                )
            stage = [STILBottleneck(segments, inplanes, planes, stride, downsample, avd=i > 0)]
            inplanes = planes * 4
            stage += [STILBottleneck(segments, inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


# SCNet ImageNet file keys STIL has no use for / STIL modules it lacks (DeepfakeBench
# loads it with strict=False); any other difference is an error.
_IMAGENET_ONLY = re.compile(r"(layer\d\.\d+\.scconv\.k2\..*|fc\..*)")
_STIL_ONLY = re.compile(r"(layer\d\.\d+\.(tim|shift|ism|scconv\.f_w|scconv\.f_h)\..*|fc\..*)")


class STIL(Detector):
    """STIL on an SCNet-50-v1d, T frames of one face track -> one fake logit.

    Args:
        clip_len: frames per clip (T, 8); the network is built for exactly T frames.
        clip_stride: frame step between sampled frames (1: consecutive).
        size: input side (224).
        layers / width / stem_width: blocks per stage (3, 4, 6, 3), stage-1 planes (64) and
            deep-stem width (32) of the SCNet; tests shrink them.
        pretrained_file: local SCNet ImageNet weights (``scnet50_v1d-4109d1e1.pth`` layout);
            ``None``: random init; nothing is downloaded.
        hflip / jpeg_quality / jpeg_p: one flip / one JPEG quality per clip in training.
    """

    input_kind = "clip"

    def __init__(
        self,
        clip_len: int = 8,
        clip_stride: int = 1,
        size: int = 224,
        layers: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        stem_width: int = 32,
        pretrained_file: str | None = None,
        hflip: float = 0.5,
        jpeg_quality: Sequence[int] | None = (40, 100),
        jpeg_p: float = 0.5,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(None, optimizer or DEEPFAKEBENCH_ADAM, scheduler)
        self.clip_len = int(clip_len)
        self.clip_stride = int(clip_stride)
        if self.clip_len < 2:
            raise UserError(f"STIL: clip_len={clip_len}; its temporal modules need >= 2 frames")
        self.base_model = SCNet(self.clip_len, tuple(layers), int(width), int(stem_width))
        quality = tuple(int(q) for q in jpeg_quality) if jpeg_quality else None
        self.clip_preprocessing = ClipPreprocessing(
            int(size),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            hflip=hflip,
            jpeg_quality=quality,
            jpeg_p=jpeg_p,
        )
        if pretrained_file:
            self._load_backbone(pretrained_file)

    def load_weights(self, path: str | Path) -> None:
        """Load DeepfakeBench's ``stil_best.pth`` (``model.base_model.*``, 2-class ``fc``;
        ``module.``-prefixed from DDP) strictly."""
        source = f"weights file {path}"
        if not Path(path).is_file():
            raise UserError(f"STIL: {source} does not exist (detector.weights=)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
        if "base_model.fc.weight" not in state:
            raise UserError(f"STIL: {source} has no model.base_model.fc.weight: not a STIL file")
        w, b = state.pop("base_model.fc.weight"), state.pop("base_model.fc.bias")
        if w.shape[0] != 2:
            raise UserError(f"STIL: {source} has a {w.shape[0]}-class fc; expected 2")
        state["base_model.fc.weight"] = (w[1] - w[0])[None]
        state["base_model.fc.bias"] = b[1:] - b[:1]
        load_state_dict_strict(self, state, source)

    def _load_backbone(self, path: str) -> None:
        """SCNet ImageNet weights: every key but ``scconv.k2.*`` / ``fc.*`` must load, and
        only STIL's own modules (``tim``, ``shift``, ``ism``, ``scconv.f_w/f_h``) may stay
        random."""
        source = f"detector.pretrained_file={path}"
        if not Path(path).is_file():
            raise UserError(f"STIL: {source} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = self.base_model.state_dict()
        unexpected = sorted(k for k in state if k not in own and not _IMAGENET_ONLY.fullmatch(k))
        missing = sorted(k for k in own if k not in state and not _STIL_ONLY.fullmatch(k))
        wrong = sorted(
            k
            for k in state
            if k in own and not k.startswith("fc.") and state[k].shape != own[k].shape
        )
        if unexpected or missing or wrong:
            raise UserError(
                f"STIL: {source} is not SCNet-50-v1d ImageNet weights for this network: "
                f"unexpected {unexpected[:5]}, missing {missing[:5]}, other shapes {wrong[:5]}"
            )
        self.base_model.load_state_dict(
            {k: v for k, v in state.items() if k in own and not k.startswith("fc.")}, strict=False
        )

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["frames"]`` (T PIL crops) -> ``{"clip": (T, 3, size, size)}``."""
        frames = sample["frames"]
        if len(frames) != self.clip_len:
            raise UserError(
                f"STIL: got {len(frames)} frames, the config says clip_len={self.clip_len}"
            )
        return {"clip": self.clip_preprocessing(frames, train=train)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = batch["clip"]
        b, t = clip.shape[:2]
        if t != self.clip_len:
            raise UserError(
                f"STIL: a clip of {t} frames; this network is built for {self.clip_len}"
            )
        frame_logits = self.base_model(clip.flatten(0, 1)).view(b, t)
        return {"logits": frame_logits.mean(dim=1), "frame_logits": frame_logits}

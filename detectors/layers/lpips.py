"""LPIPS with the VGG-16 backbone, read from the two files the ``lpips`` package uses.

After R. Zhang, P. Isola, A. A. Efros, E. Shechtman and O. Wang, "The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018 (official code:
github.com/richzhang/PerceptualSimilarity, the ``lpips`` package, v0.1). Written
here so that AEROBLADE's distance needs neither the package nor a download:

* inputs in [0, 1] are mapped to [-1, 1] (``normalize=True``) and through the
  ``ScalingLayer`` (``(x - shift) / scale``, shift ``(-.030, -.088, -.188)``, scale
  ``(.458, .448, .450)``);
* torchvision's VGG-16 ``features`` cut after ``relu1_2``, ``relu2_2``, ``relu3_3``,
  ``relu4_3`` and ``relu5_3`` (indices 4, 9, 16, 23, 30);
* each feature map unit-normalised over channels (``x / (sqrt(sum x^2) + 1e-10)``),
  the squared difference weighted by a learned 1x1 convolution without bias
  (``lin<k>.model.1.weight``; the dropout before it is inactive at test time), which
  gives one map per layer at that layer's resolution.

Files: torchvision's ImageNet VGG-16 (``vgg16-397923af.pth``, a plain state dict,
``features.<i>.weight/bias``; its ``classifier.*`` tensors are not needed and may
be absent) and LPIPS v0.1's linear layers (``lpips/weights/v0.1/vgg.pth`` in the
``lpips`` wheel, ``lin0..lin4.model.1.weight``). Both are loaded strictly; a file
that is not the published one is used with a warning naming its SHA-256.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.errors import UserError

log = logging.getLogger(__name__)

#: torchvision's VGG-16 ``features`` configuration (``M`` = 2x2 max-pooling)
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: where LPIPS cuts ``features`` (after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
CUTS = (4, 9, 16, 23, 30)
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
#: torchvision's file name carries the first 8 hex digits of its SHA-256
VGG16_FILE = "vgg16-397923af.pth"
VGG16_SHA256_PREFIX = "397923af"
#: ``lpips/weights/v0.1/vgg.pth`` as shipped in the lpips 0.1.4 wheel on PyPI
LINS_FILE = "vgg.pth"
LINS_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"
OPTIONS = (
    "detector.lpips_backbone_file=<vgg16-397923af.pth> detector.lpips_file=<lpips v0.1 vgg.pth>"
)


def _features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*layers)


def normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """LPIPS's ``normalize_tensor``: unit L2 norm over channels (eps added to the norm)."""
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPSVGG(nn.Module):
    """LPIPS-vgg v0.1: :meth:`maps` gives the per-layer distance maps, unupsampled."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x: torch.Tensor, depth: int) -> list[torch.Tensor]:
        out, start = [], 0
        for end in CUTS[:depth]:
            for module in self.features[start:end]:
                x = module(x)
            out.append(x)
            start = end
        return out

    def maps(self, x: torch.Tensor, y: torch.Tensor, depth: int = 5) -> list[torch.Tensor]:
        """Images in [0, 1] -> the first ``depth`` layers' maps (B, 1, h_k, w_k)."""
        a = (2 * x - 1 - self.shift) / self.scale
        b = (2 * y - 1 - self.shift) / self.scale
        fa, fb = self._taps(a, depth), self._taps(b, depth)
        return [
            self.lins[k]((normalize_channels(fa[k]) - normalize_channels(fb[k])).square())
            for k in range(depth)
        ]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The usual LPIPS map: every layer's map upsampled (bilinear) to the input, summed."""
        return sum(
            F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)
            for m in self.maps(x, y)
        )


def _default_backbone() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def _default_lins() -> Path | None:
    spec = importlib.util.find_spec("lpips")  # the installed package's file, never imported
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "weights" / "v0.1" / LINS_FILE


def _read(path: Path, what: str, option: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{option}={path}: cannot read {what} ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{option}={path} is not a state dict of {what}")
    return state


def _check(
    path: Path, option: str, expected: dict[str, torch.Size], got: dict[str, torch.Tensor]
) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(got[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if wrong:
            parts.append(f"wrong shapes {wrong}")
        raise UserError(f"{option}={path} is not in the expected layout: {'; '.join(parts)}")


def _note_checksum(path: Path, published: str, name: str) -> None:
    from deepsift.core.hub import sha256_file

    digest = sha256_file(path)
    if digest.startswith(published):
        log.info("LPIPS: %s is the published %s (sha256 %s)", path, name, digest)
    else:
        log.warning("LPIPS: %s is not the published %s (sha256 %s)", path, name, digest)


def load_lpips_vgg(
    backbone_file: str | Path | None = None, lins_file: str | Path | None = None
) -> LPIPSVGG:
    """LPIPS-vgg from torchvision's VGG-16 file and LPIPS v0.1's ``vgg.pth`` (both strict).

    ``None``: the torch hub cache's ``vgg16-397923af.pth`` and the installed ``lpips``
    package's ``weights/v0.1/vgg.pth``; when either is absent, one line names the options.
    """
    backbone = Path(backbone_file).expanduser() if backbone_file else _default_backbone()
    lins_default = _default_lins()
    lins = Path(lins_file).expanduser() if lins_file else lins_default
    for path, option, given in (
        (backbone, "detector.lpips_backbone_file", backbone_file),
        (lins, "detector.lpips_file", lins_file),
    ):
        if path is None or not path.is_file():
            where = f"{path} does not exist" if given else "no local copy was found"
            raise UserError(
                f"distance=lpips needs LPIPS-vgg weights ({option}: {where}); pass {OPTIONS}"
            )
    model = LPIPSVGG()
    features = {k: v.shape for k, v in model.features.state_dict().items()}
    state = _read(backbone, "torchvision's VGG-16", "detector.lpips_backbone_file")
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    if not any(k.startswith("features.") for k in state):
        raise UserError(
            f"detector.lpips_backbone_file={backbone} holds no features.* tensors: "
            "it is not torchvision's vgg16 state dict"
        )
    state = {k.removeprefix("features."): v for k, v in state.items()}
    _check(backbone, "detector.lpips_backbone_file", features, state)
    model.features.load_state_dict(state, strict=True)
    expected = {f"lin{k}.model.1.weight": torch.Size([1, c, 1, 1]) for k, c in enumerate(CHANNELS)}
    lin_state = _read(lins, "LPIPS v0.1's linear layers", "detector.lpips_file")
    _check(lins, "detector.lpips_file", expected, lin_state)
    model.lins.load_state_dict(
        {f"{k}.weight": lin_state[f"lin{k}.model.1.weight"] for k in range(len(CHANNELS))},
        strict=True,
    )
    _note_checksum(backbone, VGG16_SHA256_PREFIX, f"torchvision {VGG16_FILE}")
    _note_checksum(lins, LINS_SHA256, "LPIPS v0.1 vgg.pth (lpips 0.1.4)")
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()

"""AIDE: DCT-scored patch selection, SRM-filtered ResNet-50s and an OpenCLIP ConvNeXt, fused.

After S. Yan, O. Li, J. Cai, Y. Hao, X. Jiang, Y. Hu and W. Xie, "A Sanity Check for
AI-generated Image Detection", ICLR 2025. Official code and checkpoints:
github.com/shilinyan99/AIDE (MIT licence; checkpoints on Google Drive, e.g.
``progan_train.pth``, ``sd14_train.pth``: ``{'model': AIDE_Model.state_dict(),
'optimizer', 'epoch', 'scaler', 'args'}`` written by ``utils.save_model``).
The picture's 32 x 32 windows (stride 16) are scored by their DCT energy in six
frequency bands; the two highest- and two lowest-scored patches, SRM high-pass
filtered, go through two ResNet-50s (one for the high-, one for the low-frequency
patches) for low-level artifacts, the whole picture through a frozen OpenCLIP
ConvNeXt-XXLarge for semantics; an MLP on both gives two class logits.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck
from torchvision.transforms import functional as TF

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.clip import CLIP_MEAN, CLIP_STD
from detectors.layers.resnet import init_resnet_weights
from detectors.layers.srm_bank import srm_filters
from detectors.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    merge_preprocessing,
    train_variant,
)

log = logging.getLogger(__name__)

#: the picture as a whole and each selected patch are resized to this (``transform_train``)
INPUT_SIZE = 256

#: ``data/datasets.py`` ``TestDataset``: ``ToTensor`` of the picture at its own size,
#: the DCT patch selection on it, then each patch and the picture ``Resize([256, 256])``
#: (tensor bilinear, antialiased) and ImageNet ``Normalize``. The fields below describe
#: the normalisation and training augmentation; the resizing is AIDE's own (see
#: :meth:`AIDE.transform`).
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": INPUT_SIZE,
    "resize": "none",
    "crop": "none",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "hflip": 0.0,
    "blur_prob": 0.0,
    "blur_sigma": (0.1, 3.0),
    "jpeg_prob": 0.0,
    "jpeg_quality": (30, 100),
}

#: training (``TrainDataset``): kornia ``RandomGaussianBlur((3, 3), sigma (0.1, 3.0), p 0.1)``
#: and ``RandomJPEG((30, 100), p 0.1)`` on the picture before the patch selection
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = {"blur_prob": 0.1, "jpeg_prob": 0.1}

#: the official checkpoint's test input (the defaults: AIDE has one protocol)
OFFICIAL_TEST_PREPROCESSING: dict[str, Any] = {
    "size": INPUT_SIZE,
    "resize": "none",
    "crop": "none",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}

#: the key prefix of the ConvNeXt trunk in the official checkpoint
TRUNK = "openclip_convnext_xxl."


class HighPass(nn.Module):
    """``hpf``: the 30 SRM filters, each summed over the three colour channels, frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.hpf = nn.Conv2d(3, 30, kernel_size=5, padding=2, bias=False)
        self.hpf.weight = nn.Parameter(
            srm_filters()[:, None].repeat(1, 3, 1, 1), requires_grad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hpf(x)


# -- the DCT patch selection (data/dct.py DCT_base_Rec_Module) -----------------------------
def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix: row ``i``, column ``j``: ``c_i cos((j + 1/2) pi i / n)``."""
    i = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    scale = torch.where(i == 0, math.sqrt(1.0 / n), math.sqrt(2.0 / n))
    return scale * torch.cos((j + 0.5) * math.pi * i / n)


def band_weights(window: int = 32, grades: int = 6) -> torch.Tensor:
    """(window, window) weight of each DCT coefficient in a patch's score.

    Band ``g`` (``g = 0..grades-1``) holds the coefficients ``(i, j)`` with
    ``2 window g / grades <= i + j <= 2 window (g + 1) / grades`` (both ends: a
    coefficient on a boundary counts in both bands); each band is averaged over its
    coefficients and weighted ``2**g``.
    """
    diagonal = torch.arange(window)[:, None] + torch.arange(window)[None, :]
    weights = torch.zeros(window, window, dtype=torch.float64)
    for g in range(grades):
        start, end = 2.0 * window / grades * g, 2.0 * window / grades * (g + 1)
        band = ((diagonal >= start) & (diagonal <= end)).double()
        weights += 2.0**g * band / band.sum()
    return weights


def patch_windows(image: torch.Tensor, window: int = 32, stride: int = 16) -> torch.Tensor:
    """(C, H, W) -> its ``window`` x ``window`` windows every ``stride`` pixels, row-major:
    (L, C, window, window)."""
    c, h, w = image.shape
    if h < window or w < window:
        raise UserError(
            f"AIDE scores {window} x {window} patches: the picture must be at least "
            f"{window} pixels on each side, got {w} x {h}"
        )
    patches = image.unfold(1, window, stride).unfold(2, window, stride)  # C, R, K, win, win
    return patches.permute(1, 2, 0, 3, 4).reshape(-1, c, window, window)


def window_scores(patches: torch.Tensor, grades: int = 6) -> torch.Tensor:
    """(L, C, n, n) windows -> (L,) scores: the :func:`band_weights`-weighted sum over
    channels and coefficients of ``log(1 + |DCT|)`` of each window's 2-D DCT."""
    n = patches.shape[-1]
    d = dct_matrix(n).to(patches)
    coefficients = d @ patches @ d.T
    weights = band_weights(n, grades).to(patches)
    return (torch.log(coefficients.abs() + 1) * weights).sum(dim=(1, 2, 3))


def select_windows(
    image: torch.Tensor, window: int = 32, stride: int = 16, grades: int = 6
) -> torch.Tensor:
    """Row-major indices of the lowest, highest, second lowest and second highest scored
    windows of a (3, H, W) picture in [0, 1] (the reference's ``x_minmin``, ``x_maxmax``,
    ``x_minmin1``, ``x_maxmax1``; a picture with one window repeats it)."""
    order = torch.sort(window_scores(patch_windows(image, window, stride), grades)).indices
    second = min(1, len(order) - 1)
    return torch.stack([order[0], order[-1], order[second], order[-1 - second]])


def select_patches(
    image: torch.Tensor, window: int = 32, stride: int = 16, grades: int = 6
) -> torch.Tensor:
    """(3, H, W) picture in [0, 1] -> the (4, 3, window, window) patches of :func:`select_windows`."""
    return patch_windows(image, window, stride)[select_windows(image, window, stride, grades)]


# -- the network ----------------------------------------------------------------------------
class SRMResNet(nn.Module):
    """torchvision's ResNet-50 layout with a 30-channel stem; ``forward`` stops at the pool.

    ``fc`` (to 1000 classes) is unused, as in the reference, kept for its keys and frozen.
    """

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(30, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for index, blocks in enumerate(layers):
            planes, stride = width * 2**index, 1 if index == 0 else 2
            out = planes * Bottleneck.expansion
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
            stage = [Bottleneck(inplanes, planes, stride, downsample)]
            stage += [Bottleneck(out, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            inplanes = out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, 1000)
        self.fc.requires_grad_(False)  # unused: no gradient ever reaches it
        self.num_features = inplanes
        init_resnet_weights(self)
        for module in self.modules():  # zero_init_residual=True
            if isinstance(module, Bottleneck):
                nn.init.constant_(module.bn3.weight, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


class Mlp(nn.Module):
    """``fc1``, GELU, ``fc2`` (the reference's ``Mlp``)."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def build_trunk(
    model_name: str = "convnext_xxlarge", vision_cfg: Mapping[str, Any] | None = None
) -> nn.Module:
    """open_clip's ``visual.trunk`` of ``model_name`` (a timm ConvNeXt), randomly initialised,
    with the head's pool and flatten removed: (B, 3, H, W) -> (B, C, H/32, W/32), normalised.

    Works under ``with torch.device("meta"):``.
    """
    try:
        import open_clip
        from open_clip.model import _build_vision_tower
    except ImportError:
        raise UserError("AIDE needs open_clip: pip install open_clip_torch") from None
    config = open_clip.get_model_config(model_name)
    if config is None or "timm_model_name" not in config["vision_cfg"]:
        raise UserError(
            f"AIDE's convnext_name must be an open_clip timm ConvNeXt such as "
            f"convnext_xxlarge, not {model_name!r}"
        )
    cfg = {**config["vision_cfg"], **dict(vision_cfg or {})}
    trunk = _build_vision_tower(int(config["embed_dim"]), cfg).trunk
    trunk.head.global_pool = nn.Identity()
    trunk.head.flatten = nn.Identity()
    return trunk


def read_trunk_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ConvNeXt trunk's tensors of ``path``: an open_clip file (``visual.trunk.*``), an
    official AIDE checkpoint (``openclip_convnext_xxl.*``) or a trunk state dict."""
    state = read_aide_file(path, "detector.backbone_file")
    for prefix in ("visual.trunk.", TRUNK):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def read_aide_file(path: str | Path, option: str = "weights file") -> dict[str, Any]:
    """:func:`read_state_dict` (``torch.load(weights_only=True)``; the official checkpoints'
    ``args`` Namespace is allowed there) with a message naming ``option``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"{option} {path} does not exist; pass an AIDE checkpoint or, for "
            f"detector.backbone_file, open_clip's ConvNeXt-XXLarge open_clip_pytorch_model.bin"
        )
    return read_state_dict(path)


class AIDE(Detector):
    """DCT patch selection -> SRM + ResNet-50 x 2 (low-level) and ConvNeXt (semantic) -> MLP.

    Reference defaults (github.com/shilinyan99/AIDE, commit ``6725b71``):

    * input (``data/datasets.py``, ``data/dct.py``): ``ToTensor`` of the picture at its
      own size; ``DCT_base_Rec_Module`` (window 32, stride 16, 6 bands) scores every
      window and keeps the lowest (``x_minmin``), highest (``x_maxmax``), second
      lowest and second highest; those four patches and the whole picture are
      ``Resize([256, 256])`` (bilinear tensor resize) and ImageNet-normalised,
      stacked (5, 3, 256, 256);
    * model (``models/AIDE.py``): the SRM bank ``HPF`` (30 fixed 5 x 5 filters over
      RGB) on each patch; ``model_min`` (ResNet-50, 30-channel stem) on the two
      low-scored patches, ``model_max`` on the two high-scored ones, the four
      2048-d features averaged; the picture, renormalised to CLIP's statistics,
      through the frozen OpenCLIP ``convnext_xxlarge`` trunk (LAION-2B
      ``CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup``) without its pool,
      ``AdaptiveAvgPool2d`` and ``convnext_proj`` Linear(3072, 256); ``fc`` =
      ``Mlp(2304, 1024, 2)`` (GELU); the fake probability is ``softmax[:, 1]``
      (``engine_finetune.evaluate``);
    * training (``main_finetune.py``, ``scripts/train.sh``): batch 32 x 8 GPUs,
      ``--blr 1e-4`` (lr = blr x 256 / 256 = 1e-4), AdamW (eps 1e-8, weight
      decay 0), 20 epochs of a per-step cosine schedule to ``min_lr`` 1e-6 without
      warm-up, label-smoothing cross-entropy (0.1); kornia blur (3 x 3, sigma
      U(0.1, 3), p 0.1) and JPEG (quality U(30, 100), p 0.1) before the selection;
      no crop, no flip.

    Where this differs: the fake logit is ``z_fake - z_real`` (its sigmoid is the
    reference's softmax probability); the selected patches are the picture's pixels
    (the reference passes them through DCT, an all-pass band and the inverse DCT,
    equal within float rounding); the ConvNeXt is built by open_clip offline from
    ``backbone_file`` (or from the checkpoint, which holds it) and kept frozen and out
    of ``parameters()``; ``convnext_proj`` is frozen, as it in effect is in the
    reference (it runs under ``torch.no_grad()``, so it never trains), and so are the
    ResNets' unused ``fc`` layers (the reference's optimiser holds them, never a
    gradient); the reference
    copies an ImageNet ResNet-50 into a local dict in ``__init__`` without loading it,
    so its ResNets start from random weights, as here; blur and JPEG are PIL's (a
    Gaussian blur of radius sigma, not kornia's 3 x 3 kernel); the trunk stays in
    eval mode in training (the reference's ``model.train()`` turns its drop-path
    on); the cosine schedule is the trainer's business.

    :meth:`load_weights` reads the official checkpoint (``{'model': ...}`` with an
    ``args`` Namespace; ``torch.load(weights_only=True)``) strictly: the ConvNeXt
    keys (``openclip_convnext_xxl.*``) into the trunk, the rest into this module,
    and records the file as ``backbone_file`` so a checkpoint trained from it rebuilds.
    On the full-size model with seeded weights, deepsift's transform and forward give
    the authors' ``TestDataset`` + ``AIDE_Model`` logits within 4e-7 (two pictures,
    ``python -m tests.official.make_aide --forward``, ``tests/official/aide/``); the
    test suite checks the selection, the views and the key layout against that file
    and the forward against an independent one on a small configuration.

    Args:
        convnext_name: open_clip model whose ``visual.trunk`` is the semantic branch.
        convnext_cfg: open_clip ``vision_cfg`` overrides (a small timm ConvNeXt for tests).
        backbone_file: local weights of that trunk: open_clip's
            ``open_clip_pytorch_model.bin`` (``visual.trunk.*``) or an AIDE checkpoint.
        random_init: random trunk weights: tests and benchmarks only.
        resnet_layers, resnet_width: the ResNets' blocks per stage and stem width.
        semantic_dim, hidden_dim: ``convnext_proj`` output and ``fc`` hidden widths.
        window, stride, grades: the DCT patch selection.
        seed: seed of ``random_init``'s trunk weights.
        label_smoothing: of the two-class cross-entropy.
        optimizer: default AdamW(lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 0).
    """

    #: views per picture in ``batch["image"]`` (B, 5, 3, 256, 256): x_minmin, x_maxmax,
    #: x_minmin1, x_maxmax1, the picture
    input_views = 5

    def __init__(
        self,
        convnext_name: str = "convnext_xxlarge",
        convnext_cfg: Mapping[str, Any] | None = None,
        backbone_file: str | None = None,
        random_init: bool = False,
        resnet_layers: tuple[int, ...] | list[int] = (3, 4, 6, 3),
        resnet_width: int = 64,
        semantic_dim: int = 256,
        hidden_dim: int = 1024,
        window: int = 32,
        stride: int = 16,
        grades: int = 6,
        seed: int = 0,
        label_smoothing: float = 0.1,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(
                torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
            )
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        self.window, self.stride, self.grades = int(window), int(stride), int(grades)
        self.label_smoothing = float(label_smoothing)
        with torch.device("meta"):
            trunk_dim = int(build_trunk(convnext_name, convnext_cfg).num_features)
        self._trunk_args = {
            "convnext_name": convnext_name,
            "convnext_cfg": copy.deepcopy(dict(convnext_cfg or {})),
            "backbone_file": backbone_file,
            "random_init": bool(random_init),
            "seed": int(seed),
        }
        # a list keeps the frozen trunk out of parameters() and state_dict()
        self._trunk: list[nn.Module] = []
        self.hpf = HighPass()
        self.model_min = SRMResNet(tuple(resnet_layers), resnet_width)
        self.model_max = SRMResNet(tuple(resnet_layers), resnet_width)
        self.convnext_proj = nn.Sequential(nn.Linear(trunk_dim, semantic_dim))
        self.convnext_proj.requires_grad_(False)
        self.fc = Mlp(semantic_dim + self.model_min.num_features, hidden_dim, 2)

    # -- data ---------------------------------------------------------------------------
    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """PIL picture -> (5, 3, 256, 256): the four selected patches and the picture."""
        p = self.train_preprocessing if train else self.preprocessing
        image = p.augment(sample["image"]) if train else sample["image"]
        picture = TF.to_tensor(image)
        views = [*select_patches(picture, self.window, self.stride, self.grades), picture]
        size = [p.size, p.size]
        views = [TF.resize(v, size, antialias=True) for v in views]
        return {"image": TF.normalize(torch.stack(views), p.mean, p.std)}

    # -- trunk --------------------------------------------------------------------------
    def load_backbone(self) -> nn.Module:
        """Build (and load) the ConvNeXt trunk now (otherwise done on first use)."""
        if not self._trunk:
            args = self._trunk_args
            hint = (
                "detector.backbone_file=/path/to/open_clip_pytorch_model.bin (open_clip "
                "CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup) or detector.weights="
                "an AIDE checkpoint"
            )
            if not args["backbone_file"] and not args["random_init"]:
                raise UserError(f"AIDE's ConvNeXt weights are not available offline; pass {hint}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args["seed"])
                trunk = build_trunk(args["convnext_name"], args["convnext_cfg"])
            if args["backbone_file"]:
                source = f"detector.backbone_file {args['backbone_file']}"
                load_state_dict_strict(trunk, read_trunk_state(args["backbone_file"]), source)
                log.info("AIDE: ConvNeXt trunk from %s", args["backbone_file"])
            else:
                log.warning(
                    "AIDE ConvNeXt with RANDOM weights (random_init=true): useless for "
                    "detection, for tests and benchmarks only; pass %s",
                    hint,
                )
            trunk.eval().requires_grad_(False)
            self._trunk.append(trunk)
        return self._trunk[0]

    @property
    def backbone(self) -> nn.Module:
        return self.load_backbone()

    def semantic_features(self, picture: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised picture (B, 3, 256, 256) -> pooled ConvNeXt features (B, C)."""
        trunk = self.backbone
        if next(trunk.parameters()).device != picture.device:
            trunk.to(picture.device)
        trunk.eval()
        mean = torch.tensor(self.preprocessing.mean).to(picture).view(3, 1, 1)
        std = torch.tensor(self.preprocessing.std).to(picture).view(3, 1, 1)
        clip_mean = torch.tensor(CLIP_MEAN).to(picture).view(3, 1, 1)
        clip_std = torch.tensor(CLIP_STD).to(picture).view(3, 1, 1)
        with torch.no_grad():
            maps = trunk(picture * (std / clip_std) + (mean - clip_mean) / clip_std)
        return maps.mean(dim=(2, 3))

    # -- model --------------------------------------------------------------------------
    def class_logits(self, views: torch.Tensor) -> torch.Tensor:
        """(B, 5, 3, H, W) -> (B, 2) logits (real, fake)."""
        low, high, low2, high2, picture = views.unbind(1)
        with torch.no_grad():
            semantic = self.convnext_proj(self.semantic_features(picture))
        b = len(views)
        lows = self.model_min(self.hpf(torch.cat([low, low2])))
        highs = self.model_max(self.hpf(torch.cat([high, high2])))
        artifacts = (lows[:b] + highs[:b] + lows[b:] + highs[b:]) / 4
        return self.fc(torch.cat([semantic, artifacts], dim=1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.class_logits(batch["image"])
        return {"logits": z[:, 1] - z[:, 0], "class_logits": z}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Label-smoothing cross-entropy on the two classes (timm's, smoothing 0.1)."""
        z = self(batch)["class_logits"].float()
        loss = F.cross_entropy(z, batch["label"].long(), label_smoothing=self.label_smoothing)
        return {"loss": loss}

    def load_weights(self, path: str | Path) -> None:
        """The official checkpoint (the ConvNeXt included) or this detector's state dict."""
        state = read_aide_file(path)
        trunk_state = {k[len(TRUNK) :]: v for k, v in state.items() if k.startswith(TRUNK)}
        rest = {k: v for k, v in state.items() if not k.startswith(TRUNK)}
        if "fc.fc1.weight" not in rest or "model_min.conv1.weight" not in rest:
            shown = ", ".join(sorted(state)[:6]) + (" ..." if len(state) > 6 else "")
            raise UserError(
                f"weights file {path} is not an AIDE checkpoint: expected hpf.*, model_min.*, "
                f"model_max.*, convnext_proj.*, fc.* (and {TRUNK}*), found {shown or 'none'}"
            )
        load_state_dict_strict(self, rest, f"weights file {path}")
        if trunk_state:
            with torch.random.fork_rng(devices=[]):
                trunk = build_trunk(
                    self._trunk_args["convnext_name"], self._trunk_args["convnext_cfg"]
                )
            load_state_dict_strict(trunk, trunk_state, f"weights file {path} ({TRUNK}*)")
            trunk.eval().requires_grad_(False)
            self._trunk[:] = [trunk]
            self._trunk_args["backbone_file"] = str(path)
            if self.config:
                self.config["backbone_file"] = str(path)
        log.info("AIDE: loaded %s", path)
        self.use_protocol("AIDE checkpoint", OFFICIAL_TEST_PREPROCESSING, DEFAULT_PREPROCESSING)

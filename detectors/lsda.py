"""LSDA: latent-space augmentation of per-method teachers, distilled into one EfficientNet-B4.

After Z. Yan, Y. Luo, S. Lyu, Q. Liu and B. Wu, "Transcending Forgery Specificity with
Latent Space Augmentation for Generalizable Deepfake Detection", CVPR 2024. Reference
code: DeepfakeBench (the authors' benchmark), github.com/SCLBD/DeepfakeBench at 8a4a7bf,
``training/detectors/lsda_detector.py`` (``LSDADetector``, ``generator``),
``training/config/detector/lsda.yaml``, ``training/networks/iresnet.py``,
``training/dataset/lsda_dataset.py``.

Architecture (``generator``, DeepfakeBench's name for the whole model): one
EfficientNet-B4 *teacher* per training method (``encoders_f``: efficientnet_pytorch's
``extract_features``, then a 1x1 conv 1792 -> 512), a *real* encoder ``encoder_c``
(``real_encoder: null`` in ``lsda.yaml``: a randomly initialised IResNet-100 whose
layers 1-3 are frozen, its 512-channel map at 1/32 of the input; or an EfficientNet-B4),
a *student* EfficientNet-B4 of the same form, ``fc_weights`` (1x1 conv 1024 -> 512 and
two 3x3 convs, LeakyReLU), a domain classifier ``mlp`` (pool, 512 -> 256 -> 5) and the
binary classifier ``binary_classifier`` (pool, 512 -> 512 -> 2).

**Test time** (``forward(..., inference=True)``): ``softmax(binary_classifier(student))``;
deepsift's fake logit is ``out[:, 1] - out[:, 0]`` (the same probability) and the
teachers, the real encoder, ``fc_weights`` and ``mlp`` are not run.

**Training** (:meth:`LSDA.training_step`, ``generator.forward``) on groups of one real
and one image of each method (DeepfakeBench's ``LSDADataset`` + ``CustomSampler``: the
same frame of a real video and of its four FF++ manipulations):

* each method's images go through their own teacher, every image through the real
  encoder;
* latent-space augmentation of the teachers' maps, per group and method, one of (chosen
  by ``random.choice``) applied to each channel's map with a fresh ``random.random()``
  weight: interpolation towards the method's hardest channel map (farthest from the
  method's mean map), extrapolation away from the mean map, Gaussian noise, or adding the
  difference of the first two channel maps; and a per-group mixup of the methods' maps
  (a random permutation of the methods, ``lambda ~ Beta(a, a)``, ``a ~ U(0.5, 2)``);
* ``fc_weights`` fuses the [augmented, mixed] maps into distillation targets;
* ``L = L_domain + 0.5 L_deepfake + L_distill + L_real``: cross-entropy of ``mlp`` on
  the method of [real-encoder map of the real, teachers' maps] (5 domains);
  cross-entropy of the student's binary head; MSE of the student's maps to the real
  encoder's map (reals) and to the fused augmented teachers' maps (fakes);
  ``sum(1 - cos)`` between the real's and each fake's real-encoder maps, added for
  Face2Face and NeuralTextures (identity kept) and subtracted for Deepfakes and FaceSwap
  (identity swapped).

Reference defaults (``lsda.yaml``, ``lsda_dataset.py``): 256 x 256 faces, mean = std =
0.5; training augmentation (``augmentation_methods2``): brightness / contrast +-0.1,
horizontal flip, random down-scaling x2 / x4, sharpening, JPEG 40-100 (each p 0.5);
EfficientNet-B4s from ImageNet ``efficientnet-b4-6ed6700e.pth`` (efficientnet_pytorch
0.7.1, ``from_pretrained``), the IResNet-100 from scratch; Adam lr 2e-4, betas (0.9,
0.999), eps 1e-8, weight decay 5e-4, no scheduler, 50 epochs, batch 20 (4 groups of 5).

Where deepsift differs, and why:

* Groups are formed from each batch: the images are sorted by method (from each
  record's ``generator``, ``methods``) and the ``i``-th image of each method forms group
  ``i`` (``min`` over the methods' counts); the group's images are not of the same
  source video as in DeepfakeBench's sampler (deepsift's data sources do not pair
  them). A batch without a full group gets only ``0.5 L_deepfake``.
* The number of teachers follows ``methods`` (DeepfakeBench fixes four); the sign of
  each method's ``L_real`` term follows ``identity_preserving``.
* The maps' size follows the input (DeepfakeBench writes 8 x 8, its 256 px).
* Augmentation: horizontal flip and JPEG 40-100 only (the rest is not in deepsift's
  preprocessing).
* Unused tensors of a DeepfakeBench file are checked for their shapes and dropped, not
  built: each EfficientNet's ImageNet ``_fc`` (1792 -> 1000) and the IResNet's ``fc``
  (25088 -> 512) and ``features`` (BatchNorm1d) after it, never called.
* ImageNet initialisation only from a local file (``pretrained_file``).

:meth:`LSDA.load_weights` loads DeepfakeBench's ``lsda_best.pth`` (``LSDADetector``'s
state dict: ``model.*``, efficientnet_pytorch names; ``module.``-prefixed or not) with
strict key matching and switches to DeepfakeBench's test input (a preprocessing the
user set still wins); deepsift's own state dicts load strictly as they are.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.efficientnet import (
    B4_FEATURES,
    convert_efficientnet_pytorch_keys,
    efficientnet_b4_backbone,
)
from detectors.layers.methods import FFPP_METHODS, method_label
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: DeepfakeBench's test input; in training flip and JPEG 40-100 (see the module docstring)
DEFAULT_PREPROCESSING: dict[str, Any] = {
    **DEEPFAKEBENCH_FACE_PREPROCESSING,
    "hflip": 0.5,
    "jpeg_prob": 0.5,
    "jpeg_quality": (40, 100),
}
FEAT_DIM = 512
REAL_ENCODERS = ("iresnet100", "efficientnet_b4")
#: IResNet-100's blocks per stage (DeepfakeBench ``iresnet100``)
IRESNET100_LAYERS = (3, 13, 30, 3)


# -- encoders ----------------------------------------------------------------------------
class EfficientNetEncoder(nn.Module):
    """DeepfakeBench's ``efficientnet``: efficientnet_pytorch B4 ``extract_features`` + 1x1 conv."""

    def __init__(self, pretrained_file: str | None, padding: str = "static") -> None:
        super().__init__()
        self.model = efficientnet_b4_backbone(pretrained_file, padding=padding)
        self.conv = nn.Conv2d(B4_FEATURES, FEAT_DIM, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.model.forward_features(x))


class IBasicBlock(nn.Module):
    """ArcFace's pre-activation basic block: BN, 3x3, BN, PReLU, 3x3 (stride), BN, + shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class IResNet(nn.Module):
    """DeepfakeBench's ``IResNet`` up to its feature map: stem, four stages, BN, 2x2 average pool.

    Layers 1-3 are frozen and convolutions start ``N(0, 0.1)``, as there; the embedding
    ``fc`` and ``features`` after the map are never called by LSDA and are not built.
    """

    def __init__(self, layers: Sequence[int] = IRESNET100_LAYERS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stage = [IBasicBlock(inplanes, planes, 2)]
            stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
        for name in ("layer1", "layer2", "layer3"):
            for p in getattr(self, name).parameters():
                p.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.avg_pool2d(self.bn2(x), kernel_size=2, stride=2)


# -- latent-space augmentation -------------------------------------------------------------
def augment_domains(maps: torch.Tensor) -> torch.Tensor:
    """DeepfakeBench ``augment_domains`` on (G, M, C, H, W) teacher maps, per channel map.

    Draws from Python's ``random`` (the choice per group and method, a weight per
    channel) and torch's generator (the noise) in DeepfakeBench's order.
    """
    groups, methods, channels = maps.shape[:3]
    means, hards = [], []
    for m in range(methods):
        pool = maps[:, m].reshape(groups * channels, *maps.shape[3:])
        mean = pool.mean(dim=0)
        distances = (pool - mean).flatten(1).norm(dim=1)
        means.append(mean)
        hards.append(pool[torch.argmax(distances.detach())])
    out = []
    for g in range(groups):
        per_method = []
        for m in range(methods):
            z = maps[g, m]
            kind = random.choice(range(4))
            if kind == 2:  # Gaussian noise: sigma, weight, then the noise, channel by channel
                sigma, weight = [], []
                for _ in range(channels):
                    sigma.append(random.random())
                    weight.append(random.random())
                noise = torch.stack([torch.randn_like(z[c]) for c in range(channels)])
                s = z.new_tensor(sigma)[:, None, None]
                w = z.new_tensor(weight)[:, None, None]
                per_method.append(z + w * (noise * s))
                continue
            w = z.new_tensor([random.random() for _ in range(channels)])[:, None, None]
            if kind == 0:  # interpolation towards the hardest map
                per_method.append(z + w * (hards[m] - z))
            elif kind == 1:  # extrapolation away from the mean map
                per_method.append(z + w * (z - means[m]))
            else:  # the difference of the first two channel maps
                per_method.append(z + w * (z[0] - z[1]))
        out.append(torch.stack(per_method))
    return torch.stack(out)


def mixup_methods(maps: torch.Tensor) -> torch.Tensor:
    """DeepfakeBench ``mixup_in_latent_space``: per group, ``l x + (1 - l) x[perm]``."""
    mixed = []
    for g in range(maps.shape[0]):
        perm = torch.randperm(maps.shape[1])
        alpha = torch.rand(1) * 1.5 + 0.5
        lam = torch.distributions.beta.Beta(alpha, alpha).sample().to(maps.device)
        mixed.append(lam * maps[g] + (1 - lam) * maps[g, perm])
    return torch.stack(mixed)


def cosine_distance(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cos`` over the channels (dim 1), as DeepfakeBench's ``cosine_similarity_loss``."""
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    y = y / (y.norm(dim=1, keepdim=True) + eps)
    return 1 - (x * y).sum(dim=1)


def _pooled_mlp(in_f: int, hidden: int, out_f: int) -> nn.Sequential:
    return nn.Sequential(
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(in_f, hidden),
        nn.LeakyReLU(inplace=True),
        nn.Linear(hidden, out_f),
    )


class LSDA(Detector):
    """LSDA: per-method EfficientNet-B4 teachers, latent augmentation, a distilled student.

    Args:
        pretrained_file: local ImageNet EfficientNet-B4 (``efficientnet-b4-6ed6700e.pth``)
            for the teachers and the student (and an EfficientNet real encoder); ``None``:
            random weights (the reference starts from ImageNet).
        methods: the training set's manipulation methods, one teacher each, in the order of
            their domain labels 1, 2, ... (reals 0), matched to each record's ``generator``.
        real_encoder: ``iresnet100`` (``lsda.yaml``'s ``real_encoder: null``) or
            ``efficientnet_b4``.
        identity_preserving: methods whose real-encoder maps are pulled towards the real's
            in ``L_real`` (the others are pushed away).
        lambda_domain, lambda_deepfake, lambda_distill, lambda_real: loss weights (1, 0.5, 1, 1).
        padding: the EfficientNets' padding (see ``efficientnet_b4_backbone``; efficientnet_pytorch
            0.7.1's ``static``).
        preprocessing: fields over DeepfakeBench's defaults.
        optimizer: default Adam(lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 5e-4).
        scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        pretrained_file: str | None = None,
        methods: Sequence[str] = FFPP_METHODS,
        real_encoder: str = "iresnet100",
        identity_preserving: Sequence[str] = ("Face2Face", "NeuralTextures"),
        lambda_domain: float = 1.0,
        lambda_deepfake: float = 0.5,
        lambda_distill: float = 1.0,
        lambda_real: float = 1.0,
        padding: str = "static",
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.methods = tuple(str(m) for m in methods)
        if not self.methods:
            raise UserError("detector.methods is empty; list the training set's fake methods")
        if real_encoder not in REAL_ENCODERS:
            raise UserError(
                f"detector.real_encoder must be one of {', '.join(REAL_ENCODERS)}, "
                f"not {real_encoder!r}"
            )
        self.identity_preserving = tuple(str(m) for m in identity_preserving)
        self.lambda_domain = float(lambda_domain)
        self.lambda_deepfake = float(lambda_deepfake)
        self.lambda_distill = float(lambda_distill)
        self.lambda_real = float(lambda_real)
        self.real_encoder = real_encoder
        self.encoders_f = nn.ModuleList(
            EfficientNetEncoder(pretrained_file, padding) for _ in self.methods
        )
        if real_encoder == "iresnet100":
            self.encoder_c: nn.Module = IResNet()
        else:
            self.encoder_c = EfficientNetEncoder(pretrained_file, padding)
        self.student_encoder = EfficientNetEncoder(pretrained_file, padding)
        self.fc_weights = nn.Sequential(
            nn.Conv2d(2 * FEAT_DIM, FEAT_DIM, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(FEAT_DIM, FEAT_DIM, 3, 1, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(FEAT_DIM, FEAT_DIM, 3, 1, 1),
            nn.LeakyReLU(inplace=True),
        )
        self.mlp = _pooled_mlp(FEAT_DIM, FEAT_DIM // 2, len(self.methods) + 1)
        self.binary_classifier = _pooled_mlp(FEAT_DIM, 512, 2)

    # -- data --------------------------------------------------------------------------
    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        out = super().transform(sample, train)
        record = sample.get("record")
        if train and record is not None:
            out["label_spe"] = torch.tensor(method_label(record, self.methods, "LSDA"))
        return out

    # -- model -------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.binary_classifier(self.student_encoder(batch["image"]))
        return {"logits": out[:, 1] - out[:, 0]}

    def group_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``generator.forward`` on (G, 1 + M, C, H, W) groups (real first, then each method)."""
        groups, domains, c, h, w = images.shape
        content = torch.stack([self.encoder_c(images[:, d]) for d in range(domains)], dim=1)
        forgery = torch.stack(
            [self.encoders_f[d - 1](images[:, d]) for d in range(1, domains)], dim=1
        )
        size = forgery.shape[-2:]
        augmented = augment_domains(forgery)
        mixed = mixup_methods(forgery)
        fused = self.fc_weights(
            torch.cat([augmented, mixed], dim=2).reshape(-1, 2 * FEAT_DIM, *size)
        ).reshape(groups, domains - 1, FEAT_DIM, *size)

        real = content[:, 0]
        loss_real = real.new_zeros(())
        for d, method in enumerate(self.methods, start=1):
            sign = 1.0 if method in self.identity_preserving else -1.0
            loss_real = loss_real + sign * cosine_distance(real, content[:, d]).sum()

        label = torch.arange(domains, device=images.device).repeat(groups)
        binary = (label > 0).long()
        student = self.student_encoder(images.reshape(-1, c, h, w))
        binary_out = self.binary_classifier(student)
        deepfake = F.cross_entropy(binary_out.float(), binary)
        real_mask = label == 0
        distill = F.mse_loss(student[real_mask], content.reshape(-1, FEAT_DIM, *size)[real_mask])
        distill = distill + F.mse_loss(
            student[~real_mask].reshape(groups, domains - 1, FEAT_DIM, *size), fused
        )
        all_domains = torch.cat([content[:, :1], forgery], dim=1).reshape(-1, FEAT_DIM, *size)
        domain = F.cross_entropy(self.mlp(all_domains).float(), label)
        loss = (
            self.lambda_domain * domain
            + self.lambda_deepfake * deepfake
            + self.lambda_distill * distill
            + self.lambda_real * loss_real
        )
        return {
            "loss": loss,
            "loss_domain": domain.detach(),
            "loss_deepfake": deepfake.detach(),
            "loss_distillation": distill.detach(),
            "loss_real": loss_real.detach(),
        }

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        if "label_spe" not in batch:
            raise UserError(
                "LSDA.training_step needs batch['label_spe'] (the method labels): train through "
                "its transform(train=True), which reads each record's generator"
            )
        label_spe = batch["label_spe"].reshape(-1).long()
        members = [torch.nonzero(label_spe == d).flatten() for d in range(len(self.methods) + 1)]
        groups = min(m.numel() for m in members)
        if groups == 0:  # no full group: the student's binary loss only
            out = self.binary_classifier(self.student_encoder(images))
            deepfake = F.cross_entropy(out.float(), (label_spe > 0).long())
            return {"loss": self.lambda_deepfake * deepfake, "loss_deepfake": deepfake.detach()}
        order = torch.stack([m[:groups] for m in members], dim=1)  # (G, 1 + M)
        return self.group_losses(images[order])

    # -- weights -----------------------------------------------------------------------
    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench ``lsda_best.pth`` (strict) or a deepsift state dict."""
        raw = strip_prefixes(read_state_dict(path), ("module.",))
        source = f"weights file {path}"
        deepfakebench = any(k.startswith("model.") for k in raw)
        if not deepfakebench:
            load_state_dict_strict(self, raw, source)
            return
        state = lsda_state(raw, self.real_encoder == "efficientnet_b4")
        load_state_dict_strict(self, state, source)
        log.info("LSDA: DeepfakeBench checkpoint %s (unused classifiers dropped)", path)
        self.use_protocol("DeepfakeBench", DEEPFAKEBENCH_FACE_PREPROCESSING, DEFAULT_PREPROCESSING)


#: tensors of a DeepfakeBench file that LSDA never calls, with the shapes its code builds
_EFFICIENTNET_FC = {"_fc.weight": (1000, B4_FEATURES), "_fc.bias": (1000,)}
_IRESNET_EMBEDDING = {
    "fc.weight": (512, 512 * 7 * 7),
    "fc.bias": (512,),
    "features.weight": (512,),
    "features.bias": (512,),
    "features.running_mean": (512,),
    "features.running_var": (512,),
    "features.num_batches_tracked": (),
}


def _drop_if_built_so(state: dict[str, Any], prefix: str, shapes: Mapping[str, tuple]) -> None:
    for key, shape in shapes.items():
        value = state.get(prefix + key)
        if torch.is_tensor(value) and tuple(value.shape) == shape:
            del state[prefix + key]


def lsda_state(state: Mapping[str, Any], efficientnet_real: bool) -> dict[str, Any]:
    """DeepfakeBench's ``LSDADetector`` state dict in :class:`LSDA`'s layout.

    ``model.`` removed; each EfficientNet's efficientnet_pytorch names (``*.model.*``) in
    timm's, its unused ImageNet ``_fc`` dropped; the IResNet's unused ``fc`` and
    ``features`` dropped. Tensors of other shapes and other keys are kept, so that strict
    loading names them.
    """
    state = {k.removeprefix("model."): v for k, v in state.items()}
    encoders = sorted({k.split(".model.", 1)[0] for k in state if ".model._conv_stem." in k})
    out: dict[str, Any] = {}
    taken: set[str] = set()
    for encoder in encoders:
        prefix = f"{encoder}.model."
        network = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        taken.update(prefix + k for k in network)
        _drop_if_built_so(network, "", _EFFICIENTNET_FC)
        out.update({prefix + k: v for k, v in convert_efficientnet_pytorch_keys(network).items()})
    out.update({k: v for k, v in state.items() if k not in taken})
    if not efficientnet_real:
        _drop_if_built_so(out, "encoder_c.", _IRESNET_EMBEDDING)
    return out

"""PatchCraft: the SRM residue of an image's poorest-textured patches minus its richest.

After N. Zhong, Y. Xu, S. Li, Z. Qian and X. Zhang, "PatchCraft: Exploring Texture
Patch for Efficient AI-generated Image Detection", arXiv 2311.12397 (first titled
"Rich and Poor Texture Contrast: A Simple yet Effective Approach for AI-generated Image
Detection", RPTC). The first author's benchmark repository
(github.com/Ekko-zn/AIGCDetectBenchmark, commit 5cd41a6) lists PatchCraft with its test
and training code "in progress" and ships only the texture measure (``data/process.py``
``ED``); its ``networks/Patch5Model.py`` is the "Fusing" detector (Ju et al., a ResNet-50
with patch attention), not PatchCraft. Its README (2025-04-01) puts "the official test
code" and the checkpoints on ModelScope / Baidu Netdisk, which this project cannot reach;
the code read here is that release as vendored by github.com/kylin0421/AIGIDetectionZOO
(commit 1bbeca1, MIT; ``aigidetection_zoo/PatchCraft/networks/RPTC.py``,
``networks/srm_filter_kernel.py``, ``patchcraft_api.py``), whose ``weights/RPTC.pth``
it calls the official weights (not confirmed against the authors' own download).

Smash & reconstruction: 192 random 32 x 32 crops of the picture are ranked by texture
diversity (the summed absolute difference of neighbouring pixels in four directions);
the 64 poorest tile one 256 x 256 picture, the 64 richest another. The network filters
both with the 30 SRM high-pass filters, maps each to 32 channels and classifies their
difference with a small CNN.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import functional as TF

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.srm_bank import srm_filters
from detectors.preprocessing import Preprocessing, merge_preprocessing, train_variant

#: test time (``processing_RPTC``): ``ToTensor`` of the picture at its own size (a side
#: under one patch: ``Resize((32, 32))`` first), no normalisation; ``size`` is the side of
#: the two reconstructed pictures (``loadSize`` 256)
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 256,
    "resize": "none",
    "crop": "none",
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "hflip": 0.0,
    "blur_prob": 0.0,
    "blur_sigma": (0.0, 3.0),
    "jpeg_prob": 0.0,
    "jpeg_quality": (30, 100),
}

#: training (AIGCDetectBenchmark ``options.py``, its shared defaults): blur sigma U(0, 3)
#: p 0.1 and JPEG quality U(30, 100) p 0.1, before the patch selection
DEFAULT_TRAIN_PREPROCESSING: dict[str, Any] = {"blur_prob": 0.1, "jpeg_prob": 0.1}

#: ``processing_RPTC(img, seed=42)``: the seed the authors' test code resets before each picture
TEST_SEED = 42


def texture_diversity(patches: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) patches -> (N,) float64 ``ED``: the sums of ``|x[i] - x[i+1]|`` down
    the columns, along the rows and along both diagonals, over all channels, added.

    Each direction is summed in float32 and the four added in float64, as ``ED`` adds
    four ``.item()`` floats; for contiguous patches the float32 sums are the
    reference's per-patch ``torch.sum`` bit for bit."""
    x = patches.float()
    sums = [
        (x[:, :, :-1, :] - x[:, :, 1:, :]).abs().sum(dim=(1, 2, 3)),
        (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().sum(dim=(1, 2, 3)),
        (x[:, :, :-1, :-1] - x[:, :, 1:, 1:]).abs().sum(dim=(1, 2, 3)),
        (x[:, :, :-1, 1:] - x[:, :, 1:, :-1]).abs().sum(dim=(1, 2, 3)),
    ]
    return sum(s.double() for s in sums)  # ED adds the four .item() floats in Python


def crop_positions(
    height: int, width: int, patch: int, count: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(count, 2) top-left corners of ``count`` ``transforms.RandomCrop(patch)`` draws on a
    ``height`` x ``width`` picture, from the same random stream: per crop
    ``torch.randint(0, height - patch + 1)`` then ``torch.randint(0, width - patch + 1)``,
    no draw at all when the picture is exactly one patch."""
    if height < patch or width < patch:
        raise ValueError(f"a {patch} px patch does not fit a {width} x {height} picture")
    if height == patch and width == patch:
        return torch.zeros(count, 2, dtype=torch.long)
    out = torch.empty(count, 2, dtype=torch.long)
    for n in range(count):
        out[n, 0] = torch.randint(0, height - patch + 1, (1,), generator=generator)
        out[n, 1] = torch.randint(0, width - patch + 1, (1,), generator=generator)
    return out


def select_patches(
    image: torch.Tensor,
    size: int = 256,
    grid: int = 8,
    candidates: int = 3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smash & reconstruction of a (3, H, W) picture in [0, 1], each side >= ``size // grid``.

    ``grid * grid * candidates`` random crops of ``size // grid`` px, ranked by
    :func:`texture_diversity` (a stable ascending sort, as Python's ``sorted``).
    Returns the (grid * grid, 2) corners of the poorest crops, poorest first, and of the
    richest, richest first: the row-major tiles of the poor and the rich picture.
    """
    patch = size // grid
    tiles = grid * grid
    _, h, w = image.shape
    corners = crop_positions(h, w, patch, tiles * candidates, generator)
    crops = image.unfold(1, patch, 1).unfold(2, patch, 1)[:, corners[:, 0], corners[:, 1]]
    # contiguous crops: each crop's sums then run in the reference's order, bit for bit
    crops = crops.movedim(1, 0).contiguous()
    order = torch.sort(texture_diversity(crops), stable=True).indices
    return corners[order[:tiles]], corners[order.flip(0)[:tiles]]


def tile(image: torch.Tensor, corners: torch.Tensor, patch: int, grid: int) -> torch.Tensor:
    """The ``grid x grid`` picture whose row-major tiles are ``image``'s patches at ``corners``."""
    rows = torch.arange(patch)
    ys = (corners[:, 0, None] + rows).view(grid, grid, patch)  # tile row, tile col, y
    xs = (corners[:, 1, None] + rows).view(grid, grid, patch)
    out = image[:, ys[:, :, :, None], xs[:, :, None, :]]  # C, grid, grid, patch, patch
    return out.permute(0, 1, 3, 2, 4).reshape(image.shape[0], grid * patch, grid * patch)


def rich_poor_views(
    image: torch.Tensor,
    size: int = 256,
    grid: int = 8,
    candidates: int = 3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(3, H, W) picture in [0, 1] -> (2, 3, size, size): the poor picture, the rich one."""
    poor, rich = select_patches(image, size, grid, candidates, generator)
    patch = size // grid
    return torch.stack([tile(image, poor, patch, grid), tile(image, rich, patch, grid)])


class HPF(nn.Module):
    """``hpf``: the 30 SRM filters on each colour channel separately, frozen (``group1``).

    The reference's ``TLU(3.0)`` truncation is built but not called in its ``forward``,
    so it is left out here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hpf = nn.Conv2d(1, 30, kernel_size=5, padding=2, bias=False)
        self.hpf.weight = nn.Parameter(srm_filters()[:, None], requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 30 C, H, W), channel ``30 c + k``: filter ``k`` on channel ``c``."""
        b, c, h, w = x.shape
        return self.hpf(x.reshape(b * c, 1, h, w)).reshape(b, -1, h, w)


def _convs(count: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(count):
        layers += [nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
    if pool:
        layers.append(nn.AvgPool2d(kernel_size=3, padding=1, stride=2))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """The reference's ``initWeights``: trainable convolutions Kaiming-normal (fan-in,
    ReLU gain), linear layers N(0, 0.01) with zero bias; the rest at PyTorch's defaults."""
    if type(module) is nn.Conv2d and module.weight.requires_grad:
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    if type(module) is nn.Linear:
        nn.init.normal_(module.weight, mean=0.0, std=0.01)
        nn.init.constant_(module.bias, 0.0)


class PatchCraft(Detector):
    """Poor and rich reconstructions -> SRM bank -> 90 -> 32 channels each -> CNN on the difference.

    Module names and shapes are those of the reference ``RPTC.py`` ``Net`` (``group1.hpf``
    Conv2d(1, 30, 5) frozen; ``group1_b`` Conv2d(90, 32, 3), BatchNorm, Hardtanh(-5, 5);
    ``group2`` four and ``group3``/``group4`` two 3 x 3 Conv-BN-ReLU blocks, each group
    ending in AvgPool2d(3, stride 2, padding 1); ``group5`` two blocks; global average pool;
    ``fc2`` Linear(32, 1)): 119,919 parameters, of which 750 are the frozen filters.
    ``batch["image"]`` is (B, 2, 3, 256, 256), the poor picture then the rich one
    (``transform`` builds it); the logit is ``fc2``'s output, whose sigmoid is the fake
    probability. The two pictures go through ``group1``/``group1_b`` in separate calls,
    as in the reference, so that in training each is normalised by its own batch
    statistics.

    :meth:`load_weights` reads the reference layout strictly: ``{'netC': state_dict}``
    with the ``module.`` prefix of ``DataParallel`` (``RPTC.pth``), or a plain state dict.

    Reference defaults (``RPTC.py``, ``patchcraft_api.py`` of the vendored release; the
    training options of AIGCDetectBenchmark ``options.py`` and ``networks/trainer.py``):

    * input (``processing_RPTC``): ``ToTensor`` of the picture at its own size (resized to
      32 x 32 if a side is under 32 px), no normalisation; ``rate = 3``: an 8 x 8 grid of
      32 px patches on a ``loadSize`` 256 canvas; 192 ``RandomCrop(32)`` crops ranked by
      ``ED``; ``processing_RPTC(img, seed=42)`` reseeds Python, NumPy and torch with 42
      before each picture, so a picture always gets the same crops;
    * model: as above; ``initWeights`` (Kaiming fan-in convolutions, N(0, 0.01) linear);
    * training: ``BCEWithLogitsLoss``; Adam (lr 1e-4, betas (0.9, 0.999)); batch 64; blur
      (sigma U(0, 3)) and JPEG (quality U(30, 100), cv2 or PIL) each with p 0.1.
      These are the benchmark's shared defaults: the authors' PatchCraft training code
      is not public, and the paper's own settings are not checked here.

    Where this differs: the test-time crops come from a private ``torch.Generator``
    seeded with 42 for each picture (the same crops as the reference's global reseeding,
    without touching the caller's random state); training draws fresh crops from torch's
    global generator (the reference's training path is not public); the texture measure
    runs on all crops at once (its float32 sums equal the reference's per-crop ones bit
    for bit on contiguous crops, so the ranking is the same, ties included); blur and JPEG
    are PIL's (:meth:`Preprocessing.augment`); ``preprocessing.resize``, ``crop`` and ``hflip``
    are not used (the picture is read at its own size, as the reference reads it; ``size``
    sets the reconstructed pictures' side, so ``size=64`` makes 8 px patches on a 64 px
    canvas, with ``grid=2`` 32 px ones); no released weights could be confirmed
    from the authors themselves (``RPTC.pth`` above is a third party's copy).

    Args:
        grid: patches per side of a reconstructed picture (``2 ** rate``, 8).
        candidates: crops drawn per tile (3: 192 crops for 64 tiles).
        test_seed: seed of the test-time crops of each picture (42).
        train_preprocessing: fields of ``preprocessing`` that differ in training.
        preprocessing: test-time fields; ``size`` is the reconstructed pictures' side.
        optimizer, scheduler: see :class:`Detector`; default Adam(lr 1e-4, betas (0.9, 0.999)).
    """

    #: views per picture in ``batch["image"]``: the poor picture, the rich picture
    input_views = 2

    def __init__(
        self,
        grid: int = 8,
        candidates: int = 3,
        test_seed: int = TEST_SEED,
        train_preprocessing: Mapping[str, Any] | None = None,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.9, 0.999))
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.train_preprocessing = train_variant(
            self.preprocessing, train_preprocessing, DEFAULT_TRAIN_PREPROCESSING
        )
        if grid < 1 or candidates < 1:
            raise UserError(
                f"PatchCraft grid and candidates must be at least 1, got {grid} and {candidates}"
            )
        if self.preprocessing.size % grid:
            raise UserError(
                f"PatchCraft preprocessing.size ({self.preprocessing.size}) must be a multiple "
                f"of grid ({grid}): the reconstructed pictures are grid x grid patches"
            )
        self.grid, self.candidates, self.test_seed = int(grid), int(candidates), int(test_seed)
        self.group1 = HPF()
        self.group1_b = nn.Sequential(
            nn.Conv2d(90, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.Hardtanh(min_val=-5.0, max_val=5.0),
        )
        self.group2 = _convs(4, pool=True)
        self.group3 = _convs(2, pool=True)
        self.group4 = _convs(2, pool=True)
        self.group5 = _convs(2, pool=False)
        self.fc2 = nn.Linear(32, 1)
        self.advpool = nn.AdaptiveAvgPool2d((1, 1))
        self.apply(init_weights)

    @property
    def patch(self) -> int:
        """Side of a patch: ``preprocessing.size // grid`` (32)."""
        return self.preprocessing.size // self.grid

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """PIL picture -> (2, 3, size, size): its poor and rich reconstructions."""
        p = self.train_preprocessing if train else self.preprocessing
        image = p.augment(sample["image"]) if train else sample["image"]
        patch = p.size // self.grid
        if min(image.size) < patch:  # transforms.Resize((patch, patch)) of the PIL picture
            image = TF.resize(image, [patch, patch])
        picture = TF.to_tensor(image)
        generator = None if train else torch.Generator().manual_seed(self.test_seed)
        views = rich_poor_views(picture, p.size, self.grid, self.candidates, generator)
        mean = torch.tensor(p.mean).view(1, 3, 1, 1)
        std = torch.tensor(p.std).view(1, 3, 1, 1)
        return {"image": (views - mean) / std}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """One reconstructed picture (B, 3, H, W) -> ``group1_b`` maps (B, 32, H, W)."""
        return self.group1_b(self.group1(x))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = batch["image"]
        if views.dim() != 5 or views.shape[1] != 2:
            raise UserError(
                "PatchCraft takes batch['image'] of shape (B, 2, 3, H, W) (poor, rich), got "
                f"{tuple(views.shape)}; build it with the detector's transform"
            )
        x = self.features(views[:, 0]) - self.features(views[:, 1])
        x = self.group5(self.group4(self.group3(self.group2(x))))
        return {"logits": self.fc2(torch.flatten(self.advpool(x), 1))[:, 0]}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``BCEWithLogitsLoss`` on the logit, as the reference trainer."""
        logits = self(batch)["logits"].float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["label"].float())
        return {"loss": loss}

    def load_weights(self, path: str | Path) -> None:
        """``RPTC.pth`` (``{'netC': ...}``, ``module.`` prefixes) or a plain state dict, strictly."""
        state = read_state_dict(path)
        if isinstance(state.get("netC"), Mapping):
            state = strip_prefixes(state["netC"])
        load_state_dict_strict(self, state, f"weights file {path}")

"""Reconstruction-error detection (AEROBLADE) with pluggable autoencoders and distances.

After J. Ricker, D. Lukovnikov and A. Fischer, "AEROBLADE: Training-Free
Detection of Latent Diffusion Images Using Autoencoder Reconstruction Error",
CVPR 2024 (official code: github.com/jonasricker/aeroblade). A latent diffusion
model's decoder reproduces the images it generated almost exactly, so passing an
image through that model's autoencoder (encode, then decode) changes a generated
image less than a real photograph. The score is the distance between the image
and its reconstruction, minimised over several autoencoders (one per generator
family); a small distance means *fake*.

Reference facts (jonasricker/aeroblade):

* ``src/aeroblade/image.py`` (``compute_reconstructions``): images in [0, 1] are
  mapped to [-1, 1], encoded with the pipeline's ``vae`` (``movq`` for
  Kandinsky), the latent is *sampled* from the posterior
  (``retrieve_latents(..., generator)``, one CPU ``torch.Generator().manual_seed(1)``
  per dataset and autoencoder, drawn on from batch to batch), decoded, mapped back
  with ``(x / 2 + 0.5).clamp(0, 1)`` and **saved as 8-bit PNG** by ``to_pil_image``,
  which truncates (``uint8(255 x)``), before the distance is computed on the PNG read
  back; fp16 weights (``variant="fp16"``) with ``upcast_vae()``; the whole image, no
  crop; batch size 1 (``run_aeroblade.py``).
* ``scripts/run_aeroblade.py``: autoencoders ``CompVis/stable-diffusion-v1-1``,
  ``stabilityai/stable-diffusion-2-base``, ``kandinsky-community/kandinsky-2-1``;
  distance ``lpips_vgg_2``.
* ``src/aeroblade/distances.py``: ``lpips_vgg_<k>`` is LPIPS with the VGG
  backbone, ``k = 0`` the sum over all five layers (the usual LPIPS), ``k >= 1``
  the k-th layer alone (``lpips_vgg_2`` = the second VGG block, ``relu2_2``),
  with LPIPS's learned linear weights, computed as a spatial map at the layer's
  own resolution (no upsampling) and then **averaged spatially** (``spatial=False``
  by default): the image score is the mean, not a patch-wise max (the spatial
  maps are used for the paper's localisation analysis). The maps are stored as
  float16 before the mean; distances are stored negated (``-LPIPS``).
* ``src/aeroblade/high_level_funcs.py`` (``compute_distances``): the final score
  is the **maximum of the negated distance over the autoencoders**, i.e. the
  minimum distance. No classifier and no threshold are fitted; the paper reports
  AP, which needs none.

This implementation:

* ``autoencoder``: any module (or list of modules) mapping images in [0, 1] to
  reconstructions in [0, 1], through ``forward(x)`` or ``decode(encode(x))``
  (diffusers-style outputs with ``.latent_dist``/``.sample`` are unwrapped).
  Hydra merges dict overrides into the default node, so replace it on the command
  line with ``'~detector.autoencoder' '+detector.autoencoder=[{_target_: ...}, ...]'``.
  Factories usable as ``_target_`` in configs: :func:`diffusers_vae` (the real
  thing, needs ``pip install diffusers`` and a local model folder),
  :func:`datasets.embedded.generators.embedded_autoencoder` (a ``GeneratorAE`` of the
  embedded benchmark from a weights file; it lives with the generators, since
  ``detectors`` never imports ``datasets``) and :func:`resampling_autoencoder` (a
  parameter-free low-pass
  "autoencoder": average-pool down, interpolate up; the offline default).
* ``distance``: ``"l2"`` (mean squared error), ``"l1"`` or ``"lpips"``. LPIPS needs
  torchvision's VGG-16 ImageNet file and LPIPS v0.1's ``vgg.pth``
  (``lpips_backbone_file``, ``lpips_file``; by default the torch hub cache and the
  installed ``lpips`` package; nothing is downloaded); the paper's numbers need
  ``distance=lpips``, ``lpips_layer=2`` and the latent-diffusion VAEs.
* ``reduction``: ``"mean"`` (the reference) or ``"max"`` (the largest mean over
  ``patch_size`` patches of the distance map, a patch-wise variant).
* Scoring: ``logits = scale * (-distance) + bias``. Training (one epoch, no
  gradients) only calibrates ``(scale, bias)`` by a 1-D logistic regression on the
  training distances, so the detector stays training-free in spirit. **Unfitted**,
  ``bias = threshold / temperature`` when ``threshold`` is set (probability 0.5 at
  that distance), else 0, and ``scale = 1 / temperature``: scores rank images
  correctly (AUC and AP are right) but probabilities are not calibrated.

What deepsift reproduces (``tests/test_aeroblade_official.py`` against the authors'
``compute_distances`` on two seeded tiny ``AutoencoderKL``, a tiny Kandinsky-style
``VQModel`` and seeded LPIPS files, ``tests/official/aeroblade/``;
largest difference 6e-6 relative to their LPIPS in float32, 5e-4 to their final
float16-stored output): the sampled posterior (``diffusers_vae(posterior="sample",
seed=1, generator="run")``, the default; ``generator="batch"`` for pictures scored one
file at a time, as their script does with files; ``posterior="mode"`` for scores that do
not depend on the order, 9 % off there), the PNG's truncation to 8 bits
(``quantize="floor"``, the default; ``"round"`` is 0.2 % off), the precisions (SD VAEs
from their fp16 files upcast to float32, Kandinsky's ``movq`` in float16: the
``diffusers_vae`` defaults; a float32 movq is 5e-4 off), LPIPS-vgg written here
(:mod:`detectors.layers.lpips`, no ``lpips`` package needed) from torchvision's
``vgg16-397923af.pth`` and LPIPS v0.1's ``vgg.pth``, and the minimum over autoencoders.

Deliberate differences: the LPIPS maps are averaged in float32 (the reference stores
them as float16 first: up to 5e-4 relative); reconstructions are quantised in memory,
not written to disk; inputs are reflect-padded to a multiple of
``multiple_of`` and cropped back (the reference needs sizes divisible by 8); the
default preprocessing centre-crops to the embedded benchmark's 64 px, the paper scores
the whole image (``preprocessing.crop=none``); no ``torch.compile``; the autoencoder
weights are frozen (``requires_grad=False``) but stay in the state dict, so checkpoints
are self-contained (a diffusers VAE makes a large checkpoint). DIRE (Wang et al., ICCV
2023; DDIM reconstruction error fed to a ResNet-50) is not implemented here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core import distributed as dist
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.closed_form import fit_on_main, gathered_training_set, training_set_problem
from detectors.layers.lpips import CHANNELS, load_lpips_vgg
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

DISTANCES = ("l2", "l1", "lpips")
REDUCTIONS = ("mean", "max")

#: pixels as they are, a centre crop, values in [0, 1] (what the autoencoders expect)
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 64,
    "resize": "none",
    "crop": "center",
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
}


# -- autoencoders ------------------------------------------------------------------
class ResamplingAutoencoder(nn.Module):
    """A parameter-free low-pass "autoencoder": average-pool by ``factor``, interpolate back.

    Its reconstruction error is the image's energy above ``1 / factor`` of the
    Nyquist frequency, so it scores images that lack fine detail (the output of
    many decoders) as well reconstructed. A stand-in for tests and offline use,
    not one of the paper's autoencoders.
    """

    def __init__(self, factor: int = 2, mode: str = "bilinear") -> None:
        super().__init__()
        if factor < 1:
            raise UserError(f"resampling_autoencoder factor must be at least 1, not {factor}")
        if mode not in ("nearest", "bilinear", "bicubic"):
            raise UserError(
                f"resampling_autoencoder mode must be nearest, bilinear or bicubic, not {mode!r}"
            )
        self.factor = int(factor)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return x
        small = F.avg_pool2d(x, self.factor)
        kwargs = {} if self.mode == "nearest" else {"align_corners": False}
        return F.interpolate(small, size=x.shape[-2:], mode=self.mode, **kwargs)


def resampling_autoencoder(factor: int = 2, mode: str = "bilinear") -> ResamplingAutoencoder:
    """Config factory for :class:`ResamplingAutoencoder`."""
    return ResamplingAutoencoder(factor, mode)


POSTERIORS = ("sample", "mode")
GENERATORS = ("run", "batch")
QUANTIZE = ("floor", "round", "none")


class DiffusersVAE(nn.Module):
    """Wraps a diffusers ``AutoencoderKL``/``VQModel``: [0, 1] in, [0, 1] out, as the reference.

    ``posterior="sample"`` (the reference's ``retrieve_latents(..., generator)``) draws
    the latent from the posterior with a CPU ``torch.Generator`` seeded with ``seed``;
    ``generator="run"`` keeps drawing from the one generator across calls, as the
    reference does over one folder (an image's noise then depends on its position in
    the run and on the batch size, there as here; :meth:`reset_generator` starts over),
    ``generator="batch"`` reseeds it at every call (the reference on images passed as
    separate files: each one is a dataset of its own). ``posterior="mode"`` decodes
    the posterior mean: deterministic, independent of the order.
    """

    def __init__(
        self,
        vae: nn.Module,
        posterior: str = "sample",
        seed: int = 1,
        generator: str = "run",
    ) -> None:
        super().__init__()
        if posterior not in POSTERIORS:
            raise UserError(f"posterior must be one of {', '.join(POSTERIORS)}, not {posterior!r}")
        if generator not in GENERATORS:
            raise UserError(f"generator must be one of {', '.join(GENERATORS)}, not {generator!r}")
        self.vae = vae
        self.posterior = posterior
        self.seed = int(seed)
        self.generator = generator
        self._generator: torch.Generator | None = None

    def reset_generator(self) -> None:
        """Start the posterior noise over from ``seed`` (the reference's start of a run)."""
        self._generator = None

    def _noise_source(self) -> torch.Generator:
        if self._generator is None or self.generator == "batch":
            # the reference's torch.Generator() lives on the CPU; diffusers draws there and moves
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        encoded = self.vae.encode(x.to(dtype) * 2.0 - 1.0)
        if hasattr(encoded, "latent_dist"):
            posterior = encoded.latent_dist
            if self.posterior == "sample":
                latents = posterior.sample(generator=self._noise_source())
            else:
                latents = posterior.mode()
            decoded = self.vae.decode(latents, return_dict=False)[0]
        else:  # VQModel (Kandinsky's movq): decode the unquantised latents, as the reference
            latents = encoded.latents if hasattr(encoded, "latents") else encoded[0]
            decoded = self.vae.decode(latents, force_not_quantize=True, return_dict=False)[0]
        # in the autoencoder's dtype, as the reference (a float16 movq's output stays half)
        return (decoded / 2 + 0.5).clamp(0, 1)


def diffusers_vae(
    path: str | None = None,
    subfolder: str | None = None,
    kind: str | None = None,
    posterior: str = "sample",
    seed: int = 1,
    generator: str = "run",
    variant: str | None = None,
    dtype: str | None = None,
) -> DiffusersVAE:
    """A latent-diffusion autoencoder from a local diffusers folder (nothing is downloaded).

    ``path``: a local copy of e.g. ``CompVis/stable-diffusion-v1-1`` (its ``vae``
    subfolder, an ``AutoencoderKL``) or ``kandinsky-community/kandinsky-2-1`` (its
    ``movq`` subfolder, a ``VQModel``), or the autoencoder's own folder.
    ``subfolder``/``kind`` (``"kl"``/``"vq"``) are found from the folder when not given.
    ``variant="fp16"`` reads the half-precision files the reference loads (it then
    upcasts the VAE to float32, as here); they are read by default when they are the
    only weights in the folder. ``dtype``: what the autoencoder runs in; ``None`` is the
    reference's: float32 for an ``AutoencoderKL`` (``upcast_vae()``), float16 for a
    ``VQModel`` (Kandinsky's ``movq`` is kept in half precision there). ``posterior``,
    ``seed``, ``generator``: see :class:`DiffusersVAE` (the defaults are the reference's).
    """
    if not path:
        raise UserError(
            "diffusers_vae needs a local model folder: pass detector.autoencoder_path=<dir> "
            "(or detector.autoencoder.path=<dir>)"
        )
    try:
        import diffusers
    except ImportError:
        raise UserError(
            "the diffusers autoencoder needs diffusers: pip install diffusers, and pass "
            "detector.autoencoder_path=<local model dir>"
        ) from None
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"autoencoder folder {folder} does not exist; pass a local diffusers model dir"
        )
    if subfolder is None:
        subfolder = next((s for s in ("vae", "movq") if (folder / s).is_dir()), None)
    if kind is None:
        kind = "vq" if subfolder == "movq" else "kl"
    if kind not in ("kl", "vq"):
        raise UserError(f"diffusers_vae kind must be kl or vq, not {kind!r}")
    cls = diffusers.VQModel if kind == "vq" else diffusers.AutoencoderKL
    kwargs: dict[str, Any] = (
        {"subfolder": subfolder} if subfolder and (folder / subfolder).is_dir() else {}
    )
    weights = folder / subfolder if "subfolder" in kwargs else folder
    plain = [weights / f"diffusion_pytorch_model.{ext}" for ext in ("safetensors", "bin")]
    # the reference downloads only the fp16 files (variant="fp16"); read those when alone
    if (
        variant is None
        and not any(f.is_file() for f in plain)
        and any(weights.glob("diffusion_pytorch_model.fp16.*"))
    ):
        variant = "fp16"
    if variant:
        kwargs["variant"] = variant
    if dtype is None:
        dtype = "float16" if kind == "vq" else "float32"
    if dtype not in ("float16", "float32"):
        raise UserError(f"diffusers_vae dtype must be float16 or float32, not {dtype!r}")
    vae = cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    return DiffusersVAE(vae.to(getattr(torch, dtype)).eval(), posterior, seed, generator)


def _unwrap(output: Any) -> torch.Tensor:
    """A tensor out of a diffusers-style output (``.sample``, ``.latents``, tuples)."""
    if torch.is_tensor(output):
        return output
    for name in ("sample", "latents"):
        value = getattr(output, name, None)
        if torch.is_tensor(value):
            return value
    if hasattr(output, "latent_dist"):
        return output.latent_dist.mode()
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise TypeError(
        f"cannot read a tensor from an autoencoder output of type {type(output).__name__}"
    )


def reconstruct(autoencoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``autoencoder``'s reconstruction of ``x``: ``forward`` unless it is a bare encode/decode pair."""
    forward_overridden = type(autoencoder).forward is not nn.Module.forward
    if not forward_overridden and hasattr(autoencoder, "encode") and hasattr(autoencoder, "decode"):
        return _unwrap(autoencoder.decode(_unwrap(autoencoder.encode(x))))
    return _unwrap(autoencoder(x))


# -- distances ---------------------------------------------------------------------
class PixelDistance(nn.Module):
    """Per-pixel squared (``l2``) or absolute (``l1``) difference, averaged over channels."""

    def __init__(self, kind: str = "l2") -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        diff = x - y
        value = diff.square() if self.kind == "l2" else diff.abs()
        return value.mean(dim=1, keepdim=True)


class LPIPSLayerDistance(nn.Module):
    """LPIPS map of one layer (``layer >= 1``) or their sum (``layer = 0``), as the reference.

    The layer maps stay at their own resolution (the reference's ``_PatchedLPIPS``
    returns them unupsampled before averaging); with ``layer = 0`` they are summed
    after upsampling to the input size (the usual LPIPS). LPIPS-vgg is deepsift's own
    (:mod:`detectors.layers.lpips`), read from torchvision's VGG-16 file and LPIPS
    v0.1's ``vgg.pth``.
    """

    def __init__(
        self,
        net: str = "vgg",
        layer: int = 2,
        backbone_file: str | None = None,
        lins_file: str | None = None,
    ) -> None:
        super().__init__()
        if net != "vgg":
            raise UserError(f"lpips_net must be vgg (the reference's), not {net!r}")
        if not 0 <= layer <= len(CHANNELS):
            raise UserError(f"lpips_layer must be 0 (all) .. {len(CHANNELS)}, not {layer}")
        self.model = load_lpips_vgg(backbone_file, lins_file)
        self.layer = int(layer)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.layer == 0:
            return self.model(x, y)
        return self.model.maps(x, y, depth=self.layer)[self.layer - 1]


def build_distance(
    kind: str,
    lpips_net: str = "vgg",
    lpips_layer: int = 2,
    lpips_backbone_file: str | None = None,
    lpips_file: str | None = None,
) -> nn.Module:
    if kind not in DISTANCES:
        raise UserError(f"distance must be one of {', '.join(DISTANCES)}, not {kind!r}")
    if kind == "lpips":
        return LPIPSLayerDistance(lpips_net, lpips_layer, lpips_backbone_file, lpips_file)
    return PixelDistance(kind)


# -- detector ----------------------------------------------------------------------
class AEROBLADE(Detector):
    """Autoencoder reconstruction distance, minimised over autoencoders, as a fake logit.

    Args:
        autoencoder: a module or a list of modules ([0, 1] images in, reconstructions
            out); built from config nodes (see the module docstring). ``None``: the
            parameter-free :class:`ResamplingAutoencoder` (x2, bilinear).
        autoencoder_path: shortcut for the real thing: a local diffusers model folder
            (or a list of them); when set, ``autoencoder`` is replaced by
            :func:`diffusers_vae` of each, with the reference's defaults.
        distance: ``"l2"``, ``"l1"`` or ``"lpips"`` (reference: LPIPS-vgg, layer 2).
        lpips_net, lpips_layer: LPIPS backbone (``vgg``) and layer (0 = sum of all layers).
        lpips_backbone_file, lpips_file: torchvision's ``vgg16-397923af.pth`` and LPIPS
            v0.1's ``vgg.pth`` (default: the torch hub cache and the installed ``lpips``
            package; see :mod:`detectors.layers.lpips`).
        reduction: ``"mean"`` over the distance map (reference) or patch-wise ``"max"``.
        patch_size: patch side for ``reduction="max"`` (pixels of the distance map).
        quantize: ``"floor"`` (the reference: ``to_pil_image`` truncates ``255 x`` to
            uint8 before the PNG is written), ``"round"`` or ``"none"``; ``True`` is
            ``"floor"``, ``False`` ``"none"``.
        multiple_of: reflect-pad inputs to a multiple of this (8 for SD VAEs).
        threshold, temperature: the unfitted logit ``(threshold - d) / temperature``
            (``threshold`` ``None``: 0, ranking only).
        C, max_iter: the 1-D logistic regression that calibrates the threshold.
        preprocessing: a :class:`Preprocessing`, or fields over :data:`DEFAULT_PREPROCESSING`
            (keep ``mean = 0``, ``std = 1``: autoencoders see [0, 1] pixels).
    """

    epochs_needed = 1

    def __init__(
        self,
        autoencoder: nn.Module | Sequence[nn.Module] | None = None,
        autoencoder_path: str | Sequence[str] | None = None,
        distance: str = "l2",
        lpips_net: str = "vgg",
        lpips_layer: int = 2,
        lpips_backbone_file: str | None = None,
        lpips_file: str | None = None,
        reduction: str = "mean",
        patch_size: int = 8,
        quantize: bool | str = "floor",
        multiple_of: int = 8,
        threshold: float | None = None,
        temperature: float = 1.0,
        C: float = 1.0,
        max_iter: int = 1000,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if reduction not in REDUCTIONS:
            raise UserError(f"reduction must be one of {', '.join(REDUCTIONS)}, not {reduction!r}")
        if temperature <= 0:
            raise UserError(f"temperature must be positive, not {temperature}")
        if autoencoder_path:
            paths = (
                [autoencoder_path] if isinstance(autoencoder_path, str) else list(autoencoder_path)
            )
            autoencoder = [diffusers_vae(path) for path in paths]
        if quantize is True or quantize is False:
            quantize = "floor" if quantize else "none"
        if quantize not in QUANTIZE:
            raise UserError(f"quantize must be one of {', '.join(QUANTIZE)}, not {quantize!r}")
        if autoencoder is None:
            autoencoder = ResamplingAutoencoder()
        modules = list(autoencoder) if isinstance(autoencoder, (list, tuple)) else [autoencoder]
        if not modules or not all(isinstance(m, nn.Module) for m in modules):
            raise UserError("autoencoder must be a module or a non-empty list of modules")
        self.autoencoders = nn.ModuleList(modules)
        for param in self.autoencoders.parameters():
            param.requires_grad_(False)  # training-free: nothing is back-propagated
        self.distance_fn = build_distance(
            distance, lpips_net, lpips_layer, lpips_backbone_file, lpips_file
        )
        for param in self.distance_fn.parameters():
            param.requires_grad_(False)
        self.distance = distance
        self.reduction = reduction
        self.patch_size = int(patch_size)
        self.quantize = str(quantize)
        self.multiple_of = max(int(multiple_of), 1)
        self.C = float(C)
        self.max_iter = int(max_iter)
        bias = 0.0 if threshold is None else float(threshold) / temperature
        self.register_buffer("scale", torch.tensor([1.0 / temperature]))
        self.register_buffer("bias", torch.tensor([bias]))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._calibrated = threshold is not None
        self._warned = False
        self._train_distances: list[torch.Tensor] = []
        self._train_labels: list[torch.Tensor] = []

    def train(self, mode: bool = True) -> AEROBLADE:
        super().train(mode)
        self.autoencoders.eval()  # never batch-norm statistics or dropout of the AEs
        self.distance_fn.eval()
        return self

    # -- distances -----------------------------------------------------------------
    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.new_tensor(self.preprocessing.mean).view(1, -1, 1, 1)
        std = images.new_tensor(self.preprocessing.std).view(1, -1, 1, 1)
        return (images.float() * std + mean).clamp(0, 1)

    def _reduce(self, dmap: torch.Tensor) -> torch.Tensor:
        if self.reduction == "mean":
            return dmap.flatten(1).mean(dim=1)
        k = min(self.patch_size, *dmap.shape[-2:])
        return F.avg_pool2d(dmap, k, stride=k).flatten(1).amax(dim=1)

    @torch.no_grad()
    def distances(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) -> per-autoencoder distances (B, n_autoencoders)."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = self._pixels(images).contiguous()
            height, width = x.shape[-2:]
            pad_h, pad_w = (-height) % self.multiple_of, (-width) % self.multiple_of
            padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
            out = []
            for ae in self.autoencoders:
                rec = reconstruct(ae, padded)[..., :height, :width].clamp(0, 1)
                # quantised in the reconstruction's dtype: to_pil_image multiplies a half
                # tensor by 255 in half precision before it truncates to uint8
                if self.quantize == "floor":  # the reference's PNG: to_pil_image truncates
                    rec = rec.mul(255).floor().float().mul(1.0 / 255)  # ToDtype(scale=True)
                elif self.quantize == "round":
                    rec = rec.mul(255).round().float().div(255)
                rec = rec.float()
                out.append(self._reduce(self.distance_fn(x, rec).float()))
            return torch.stack(out, dim=1)

    def score_distance(self, images: torch.Tensor) -> torch.Tensor:
        """The AEROBLADE distance: the minimum over autoencoders (B,)."""
        return self.distances(images).amin(dim=1)

    # -- model -----------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        distance = self.score_distance(batch["image"])
        if not bool(self.fitted) and not self._calibrated and not self._warned:
            log.warning(
                "AEROBLADE is not calibrated: logits = -distance / temperature rank images "
                "correctly but are not probabilities; train one epoch or set threshold"
            )
            self._warned = True
        return {"logits": self.scale * (-distance) + self.bias, "distance": distance}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Collect this batch's distances and labels; the calibration happens at epoch end."""
        self._train_distances.append(self.score_distance(batch["image"]).detach().float().cpu())
        self._train_labels.append(batch["label"].detach().float().cpu().reshape(-1))
        return {}

    def on_train_epoch_end(self) -> None:
        """Gather every rank's distances, fit the 1-D logistic regression on rank 0, share it."""
        d, y = gathered_training_set(self._train_distances, self._train_labels, (0,))
        if d.shape[0] == 0 and bool(self.fitted):
            return
        result = fit_on_main(self._fit, d.double().numpy(), y.numpy())
        self.scale.fill_(result["scale"])
        self.bias.fill_(result["bias"])
        self.fitted.fill_(True)
        if dist.is_main():
            log.info(
                "AEROBLADE: calibrated on %d images: logit = %.4g * (-d) + %.4g "
                "(threshold d = %.4g, train accuracy %.4f)",
                result["n"],
                result["scale"],
                result["bias"],
                result["bias"] / result["scale"] if result["scale"] else float("nan"),
                result["accuracy"],
            )
            if result["scale"] < 0:
                log.warning(
                    "AEROBLADE: fakes reconstruct worse than reals here (negative slope); "
                    "the autoencoder does not match these generators"
                )

    def _fit(self, d: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression

        problem = training_set_problem(
            "AEROBLADE",
            d,
            y,
            purpose=" to calibrate",
            hint="check the training split or set threshold",
            what="distances",
        )
        if problem:
            return {"error": problem}
        labels = np.rint(y).astype(np.int64)
        feature = -d
        mu, sigma = float(feature.mean()), float(feature.std()) or 1.0
        z = ((feature - mu) / sigma)[:, None]
        model = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(z, labels)
        coef, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
        return {
            "scale": coef / sigma,
            "bias": intercept - coef * mu / sigma,
            "n": int(d.shape[0]),
            "accuracy": float(model.score(z, labels)),
        }

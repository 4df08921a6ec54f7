"""Where JPEGs are decoded when scoring: ``score.py --decode-device auto|cpu|cuda``.

* ``cpu`` (what every run did before): the worker processes decode each item with Pillow
  (:mod:`deepsift.scoring.decode`) and run each member's PIL transform.
* ``cuda``: the workers still read the bytes, hash them and check the header (format,
  ``--max-pixels``, mode, EXIF orientation) but do not decode a JPEG they can hand on;
  the model process decodes those in batches on the GPU with torchvision's
  ``decode_jpeg(..., device="cuda")`` (nvJPEG) and preprocesses them with tensor ops
  (:func:`tensor_preprocess`) on the GPU. Everything else, and every JPEG the GPU path
  cannot take exactly, takes the CPU path per item, never an error of its own:
  non-JPEG data, CMYK/YCCK JPEGs, EXIF orientation other than 1 (nvJPEG ignores it),
  multi-picture (MPO) files, files that do not end in the EOI marker (Pillow refuses a
  truncated JPEG where libjpeg would pad it with grey), and any file the device decoder
  rejects or decodes to another size than its header says. The JPEGs it takes (YCbCr or
  grey, upright) need none of :mod:`deepsift.core.images`' conversions but grey -> RGB,
  which ``ImageReadMode.RGB`` does the same way (the grey value in all three channels);
  that module applies no ICC profile, so an embedded profile changes nothing on either path.
* ``auto`` (the default): ``cuda`` only when the model runs on CUDA (on the Ray engine:
  the model actors get GPUs, ``--gpus-per-worker`` > 0 on a cluster with GPUs), nothing
  in the run needs CPU pixels (face members crop faces from them, PDQ hashes them,
  provenance reads the invisible watermark from them, ``--stability`` launders them,
  clip detectors read videos) and every member's test-time transform has a tensor
  implementation (:func:`member_support`); else ``cpu``. The summary's ``decode_device``
  says which ran and why.
* On the Ray engine (:mod:`deepsift.scoring.ray_engine`) the decode tasks play the
  workers' part and each model actor the model process's, on the GPU Ray gave it; the
  fallback item is prepared again in the actor, on the CPU path.

Why torchvision's ``decode_jpeg`` rather than nvImageCodec or TorchCodec: it is already a
dependency (no new package for one flag), it decodes a list of JPEGs in one batched nvJPEG
call (on an error it returns nothing, so that batch is retried file by file) into CUDA
uint8 tensors the tensor transform takes as they are, and
its CPU path (libjpeg-turbo) decodes bit for bit as Pillow does (measured: 0 grey levels
on 4:2:0, 4:4:4 and grey JPEGs), so the very code the GPU runs is tested on the CPU.
torchvision 0.29 deprecates its image decoders in favour of TorchCodec (>= 0.16, whose
``torchcodec.decoders.decode_jpeg(..., device="cuda")`` is the successor, largely the same
call); moving is a change to :func:`decode_batch` alone, not made here because TorchCodec is
not installed and no GPU was lent to measure either. nvImageCodec would add JPEG 2000 and
TIFF, which uploads rarely are. nvJPEG's IDCT and chroma upsampling differ from
libjpeg-turbo's by a grey level or so on some pixels: GPU runs are near, not equal, to CPU
runs; that difference was not measured here.

Tensor preprocessing (:func:`tensor_preprocess`) against :class:`Preprocessing`'s PIL path
(``python -m benchmarks.decode_parity --all``: torchvision's CPU ``decode_jpeg`` + this
module against Pillow + the detector's transform, 15 JPEGs of 64x80 to 1024x768 px):

* resize ``none`` (with or without crop, ``pad``): equal, 0 grey levels (15 of the 47
  detector configs, among them cnnspot, univfd, timm_classifier);
* ``pil`` bilinear and bicubic (npr, c2p_clip, clipbased, freqnet, d3, ladeda, lgrad...):
  equal, 0 grey levels: :func:`pillow_resize` redoes Pillow's fixed-point two-pass
  resampling; ``F.interpolate(antialias=True)``, rounded, was up to 1 (bilinear, 15% of the
  values) and 13 (bicubic) grey levels off. Pillow 13 runs the vertical pass first for some
  geometries; the order is asked of the installed Pillow once per geometry, and a geometry
  neither order reproduces takes the CPU path (:class:`NotExact`);
* ``cv2`` bilinear and bicubic (DeepfakeBench, SBI; only for non-face members): within 1
  grey level (``F.interpolate(antialias=False)``, rounded; OpenCV computes in 11-bit fixed
  point), on 12% (bilinear) and 0.001% (bicubic) of the values;
* no tensor implementation (``auto`` picks ``cpu``, ``cuda`` is refused): ``nearest``
  (Pillow's affine sampling and ``F.interpolate`` pick different pixels: up to 91 grey
  levels on 6% of the values) and ``area`` (cv2 only).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deepsift.core.errors import UserError
from deepsift.core.images import upright_transpose
from detectors.preprocessing import Preprocessing

DECODE_DEVICES = ("auto", "cpu", "cuda")
#: Pillow modes of JPEGs the device decoder gives exactly: YCbCr/RGB, and grey (-> RGB)
DEVICE_MODES = ("RGB", "L")
_EOI = b"\xff\xd9"


@dataclass
class DecodeChoice:
    """What ``--decode-device`` resolved to: ``on_device`` (JPEGs decoded by the model's
    device), the ``requested`` value and ``reason``, for the summary."""

    requested: str
    on_device: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "decode_device": "cuda" if self.on_device else "cpu",
            "reason": self.reason,
        }


# -- tensor preprocessing ---------------------------------------------------------------
def tensor_support(pre: Preprocessing) -> str | None:
    """None when :func:`tensor_preprocess` matches ``pre``'s PIL path within 1 grey level;
    else why not (see the module docstring for the measured figures)."""
    if pre.resize == "none":
        return None
    if pre.interpolation in ("nearest", "area"):
        return f"resize interpolation {pre.interpolation} has no tensor implementation"
    return None


def tensor_preprocess(pre: Preprocessing, image: torch.Tensor) -> torch.Tensor:
    """``pre`` at test time on a uint8 ``(3, H, W)`` RGB tensor, or a batch ``(N, 3, H, W)``
    of pictures of one size, on the tensor's device: pad, resize (rounded to uint8, as the
    PIL/cv2 paths are), scale to [0, 1], centre crop (zero-padding a smaller image, as
    ``TF.center_crop``), normalise. Refuses a configuration :func:`tensor_support` refuses."""
    why = tensor_support(pre)
    if why is not None:
        raise ValueError(why)
    if image.dtype != torch.uint8 or image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"expected a uint8 (3, H, W) or (N, 3, H, W) tensor, got {image.dtype} "
            f"{tuple(image.shape)}"
        )
    height, width = image.shape[-2:]
    if pre.pad == "to_size" and (height < pre.size or width < pre.size):
        out_h, out_w = max(height, pre.size), max(width, pre.size)
        top, left = (out_h - height) // 2, (out_w - width) // 2
        image = F.pad(image, (left, out_w - width - left, top, out_h - height - top))
        height, width = out_h, out_w
    x = image.float()
    if pre.resize != "none":
        pre.validate()
        out_w, out_h = pre.target_size(width, height)
        if (out_h, out_w) != (height, width):
            x = _resize(x, pre, out_h, out_w).float()
    x = x / 255.0
    if pre.crop == "center":
        x = _center_crop(x, pre.size)
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


class NotExact(Exception):
    """This picture's resize cannot be reproduced exactly here: take the CPU path for it."""


def _resize(x: torch.Tensor, pre: Preprocessing, height: int, width: int) -> torch.Tensor:
    """Resized as the PIL or cv2 path does, rounded to uint8 values (as floats).

    ``pil`` bilinear/bicubic: Pillow's own resampling, re-done in integer arithmetic
    (:func:`pillow_resize`), equal to Pillow bit for bit. ``cv2`` bilinear/bicubic:
    ``F.interpolate(antialias=False)`` (OpenCV's half-pixel centres), rounded; OpenCV
    computes in 11-bit fixed point, so this is within 1 grey level, not equal.
    ``nearest``: only for the parity benchmark (``nearest-exact``)."""
    if pre.resize_backend == "pil" and pre.interpolation != "nearest":
        return pillow_resize(x, width, height, pre.interpolation)
    batch = x if x.ndim == 4 else x[None]
    if pre.interpolation == "nearest":
        out = F.interpolate(batch, size=(height, width), mode="nearest-exact")
    else:
        out = F.interpolate(
            batch, size=(height, width), mode=pre.interpolation, align_corners=False
        )
        out = out.round().clamp(0, 255)
    return out if x.ndim == 4 else out[0]


# -- Pillow's resampling in tensor ops -------------------------------------------------------
# Pillow (src/libImaging/Resample.c) resizes 8-bit images in two separable passes, each in
# fixed point with 22 fractional bits and rounded and clipped to uint8 in between: per output
# pixel, the filter (triangle / Keys a = -0.5 cubic, stretched by the reduction factor) is
# sampled at the source pixel centres, normalised, and its weights rounded to integers. The
# same integer sums in float64 are exact (every partial sum < 2**53), so the result is equal.
_PRECISION_BITS = 22


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


@functools.lru_cache(maxsize=256)
def _taps(in_size: int, out_size: int, interpolation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and integer weights, each ``(out_size, k)``, of one Pillow pass."""
    kernel, support = _FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    ksize = math.ceil(support) * 2 + 1
    index = np.zeros((out_size, ksize), np.int64)
    weight = np.zeros((out_size, ksize), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [kernel((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = sum(k)
        for x, w in enumerate(k):
            w = w / total if total != 0.0 else w
            weight[xx, x] = int(w * (1 << _PRECISION_BITS) + (-0.5 if w < 0 else 0.5))
            index[xx, x] = xmin + x
    return torch.from_numpy(index), torch.from_numpy(weight)


@functools.lru_cache(maxsize=256)
def _taps_on(
    in_size: int, out_size: int, interpolation: str, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    index, weight = _taps(in_size, out_size, interpolation)
    return index.to(device), weight.to(device)


def _pass(x: torch.Tensor, out_size: int, interpolation: str) -> torch.Tensor:
    """One Pillow pass along the last dimension of float64 ``x`` (integer values 0..255)."""
    index, weight = _taps_on(x.shape[-1], out_size, interpolation, str(x.device))
    rows = x.numel() // x.shape[-1]
    if rows * out_size * index.shape[1] <= 1 << 24:  # one gather (few launches: GPU batches)
        acc = (x[..., index] * weight).sum(-1) + float(1 << (_PRECISION_BITS - 1))
        return torch.floor(acc / (1 << _PRECISION_BITS)).clamp_(0, 255)
    acc = torch.full(
        (*x.shape[:-1], out_size),
        float(1 << (_PRECISION_BITS - 1)),
        dtype=torch.float64,
        device=x.device,
    )
    for t in range(index.shape[1]):
        acc += x[..., index[:, t]] * weight[:, t]
    return torch.floor(acc / (1 << _PRECISION_BITS)).clamp_(0, 255)


def _two_passes(
    x: torch.Tensor, width: int, height: int, interpolation: str, vertical_first: bool
) -> torch.Tensor:
    x = x.double()
    steps = ["v", "h"] if vertical_first else ["h", "v"]
    for step in steps:
        if step == "h" and x.shape[-1] != width:
            x = _pass(x, width, interpolation)
        elif step == "v" and x.shape[-2] != height:
            x = _pass(x.transpose(-1, -2), height, interpolation).transpose(-1, -2)
    return x


@functools.lru_cache(maxsize=4096)
def _pillow_order(
    in_h: int, in_w: int, height: int, width: int, interpolation: str, device: str
) -> bool | None:
    """Whether this Pillow runs the vertical pass first for this resize (None: neither order
    reproduces it). Pillow 13 picks the order from the sizes (python-pillow/Pillow#9549:
    vertical first when the height shrinks much more than the width), earlier versions always
    go horizontal first; rather than copy a rule that moves between versions, the order is
    asked of the installed Pillow once per geometry, on a noise picture (where the orders
    differ on most pixels)."""
    from PIL import Image as PILImage

    rng = np.random.default_rng(in_h * 7919 + in_w)
    noise = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
    mode = {"bilinear": PILImage.BILINEAR, "bicubic": PILImage.BICUBIC}[interpolation]
    reference = np.asarray(PILImage.fromarray(noise).resize((width, height), mode))
    x = torch.from_numpy(noise).permute(2, 0, 1).to(device)
    for vertical_first in (False, True):
        out = _two_passes(x, width, height, interpolation, vertical_first)
        if np.array_equal(out.permute(1, 2, 0).cpu().numpy().astype(np.uint8), reference):
            return vertical_first
    return None


def pillow_resize(x: torch.Tensor, width: int, height: int, interpolation: str) -> torch.Tensor:
    """Pillow's ``resize((width, height), BILINEAR | BICUBIC)`` of a ``(..., 3, H, W)`` tensor
    of uint8 values, bit for bit, on the tensor's device (float64 values 0..255 back);
    :class:`NotExact` when the installed Pillow resizes this geometry some other way."""
    in_h, in_w = x.shape[-2:]
    if in_h != height and in_w != width:
        order = _pillow_order(in_h, in_w, height, width, interpolation, str(x.device))
        if order is None:
            raise NotExact(f"Pillow's {interpolation} {in_w}x{in_h} -> {width}x{height}")
    else:
        order = False
    return _two_passes(x, width, height, interpolation, order)


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's ``center_crop``: the same offsets, and zero padding when smaller."""
    height, width = x.shape[-2:]
    if height < size or width < size:
        pad_w, pad_h = max(size - width, 0), max(size - height, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        height, width = x.shape[-2:]
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return x[..., top : top + size, left : left + size]


# -- which members and runs can take it ---------------------------------------------------
_PROBE = Image.fromarray(np.random.default_rng(14).integers(0, 256, (29, 37, 3), dtype=np.uint8))


def member_support(detector: Any) -> str | None:
    """None when ``detector``'s test-time transform is ``{"image": preprocessing(image)}``
    and that preprocessing has a tensor implementation; else why not. The transform is
    checked on a probe picture, so a detector whose own transform adds or changes
    anything (a second input, its own resize) is never handed tensors it did not make."""
    if getattr(detector, "input_kind", "image") != "image":
        return f"{type(detector).__name__} is not an image detector"
    pre = getattr(detector, "preprocessing", None)
    if not isinstance(pre, Preprocessing):
        return f"{type(detector).__name__} has no Preprocessing"
    why = tensor_support(pre)
    if why is not None:
        return why
    try:
        sample = detector.eval_transform({"image": _PROBE, "record": None})
        expected = pre(_PROBE, train=False)
    except Exception as exc:  # a transform that fails on the probe: keep it on the CPU
        return f"its transform failed on a probe picture ({type(exc).__name__})"
    if set(sample) != {"image"} or not torch.equal(sample["image"], expected):
        return f"{type(detector).__name__}'s transform is not its Preprocessing alone"
    return None


def cpu_pixel_needs(
    *,
    faces: bool,
    pdq: bool,
    provenance: bool,
    stability: bool,
    clips: bool,
) -> list[str]:
    """What in a run reads CPU pixels (each with its flag), in the order the refusal names them."""
    needs = []
    if faces:
        needs.append("face members crop faces from CPU pixels (--faces off)")
    if pdq:
        needs.append("PDQ hashes CPU pixels (--no-pdq)")
    if provenance:
        needs.append("provenance reads the invisible watermark from CPU pixels (--no-provenance)")
    if stability:
        needs.append("--stability launders CPU copies (drop --stability)")
    if clips:
        needs.append("clip detectors read videos on the CPU")
    return needs


def resolve_decode_device(
    requested: str,
    device: torch.device,
    members: list[tuple[str, Any]],
    needs: list[str],
    engine: str = "local",
) -> DecodeChoice:
    """``--decode-device`` for a run on ``device`` with ``members`` (``(label, detector)``)
    and the CPU-pixel ``needs`` of :func:`cpu_pixel_needs`; one UserError for an explicit
    ``cuda`` that cannot run as asked. ``engine="ray"``: ``device`` is the model actors'
    (CUDA when ``--gpus-per-worker`` > 0; :func:`.ray_engine.start_ray` refuses that on a
    cluster without GPUs), the rest as on the local engine."""
    if requested not in DECODE_DEVICES:
        raise UserError(f"--decode-device {requested!r}: use auto, cpu or cuda")
    if requested == "cpu":
        return DecodeChoice(requested, False, "--decode-device cpu")
    explicit = requested == "cuda"
    if device.type != "cuda" and engine == "ray":
        if explicit:
            raise UserError(
                "--decode-device cuda needs GPUs for the Ray engine's model actors "
                "(--gpus-per-worker 0); pass --gpus-per-worker 1 on a cluster with GPUs, "
                "or use --decode-device cpu or auto"
            )
        return DecodeChoice(requested, False, "the model actors get no GPU (--gpus-per-worker 0)")
    if device.type != "cuda":
        if explicit:
            raise UserError(
                f"--decode-device cuda needs the model on CUDA (scoring on {device.type}); "
                "use --decode-device cpu or auto"
            )
        return DecodeChoice(requested, False, f"the model runs on {device.type}")
    if needs:
        if explicit:
            raise UserError(
                "--decode-device cuda but " + "; ".join(needs) + ": pass those flags, or use "
                "--decode-device cpu or auto"
            )
        return DecodeChoice(requested, False, "; ".join(needs))
    for label, detector in members:
        why = member_support(detector)
        if why is not None:
            if explicit:
                raise UserError(
                    f"--decode-device cuda but {label}: {why}; use --decode-device cpu or auto"
                )
            return DecodeChoice(requested, False, f"{label}: {why}")
    return DecodeChoice(
        requested,
        True,
        "--decode-device cuda"
        if explicit
        else "the model runs on CUDA and every member has a tensor transform",
    )


# -- the worker's side and the model process's side -----------------------------------------
def device_jpeg(raw: bytes, opened: Image.Image) -> str | None:
    """None when the device decoder takes this JPEG exactly (see the module docstring);
    else why it takes the CPU path."""
    if opened.format != "JPEG":
        return f"{opened.format or 'unknown'} is not JPEG"
    if opened.mode not in DEVICE_MODES:
        return f"JPEG mode {opened.mode}"
    if upright_transpose(opened) is not None:
        return "EXIF orientation"
    if not raw.endswith(_EOI):
        return "no end-of-image marker"
    return None


def decode_batch(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 ``(3, H, W)`` RGB tensors on ``device`` (torchvision ``decode_jpeg``, one batched
    call; on a failure each file alone); None for a file the decoder rejects."""
    if not datas:
        return []
    with warnings.catch_warnings():  # torchvision 0.29's deprecation notice, on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        target = str(device) if device.type == "cuda" else "cpu"
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=target))
        except (RuntimeError, ValueError):
            pass
        out: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=target))
            except (RuntimeError, ValueError):
                out.append(None)
        return out

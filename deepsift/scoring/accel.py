"""How the model runs when scoring: autocast precision and memory format, for both engines.

``score.py --precision`` (both engines; the Ray engine resolves it in each model actor,
on the device the actor got):

* ``fp32`` (or ``32``): no autocast.
* ``bf16``: autocast to bfloat16, on CUDA and on the CPU (PyTorch's CPU autocast
  supports bfloat16); on CUDA without bf16 support, a refusal.
* ``fp16`` (or ``16``): autocast to float16 on CUDA. **Refused on the CPU** (one line,
  exit 2): CPU autocast of float16 is slow and partial in PyTorch, and silently
  running fp32 or bf16 instead would make the summary lie about what ran.
* ``auto`` (the default): bf16 on CUDA where supported, else fp16; fp32 on the CPU.

channels_last (NHWC) is used on CUDA for convolutional detectors only, those with
most of their parameters in 2-D convolutions (ResNet, EfficientNet, Xception...):
cuDNN's NHWC kernels are faster there, while a ViT (whose only convolution is the
patch embedding) gains nothing. The weights are converted once and the inputs of
every batch follow (:func:`deepsift.core.inference.move_batch`).
"""

from __future__ import annotations

import torch
from torch import nn

from deepsift.core.errors import UserError

#: --precision spellings -> canonical names (``32``/``16`` as trainer.precision spells them)
PRECISIONS = {
    "auto": "auto",
    "fp32": "fp32",
    "32": "fp32",
    "bf16": "bf16",
    "fp16": "fp16",
    "16": "fp16",
}


def resolve_precision(
    precision: str, device: torch.device, bf16_supported: bool | None = None
) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` on ``device`` (None: fp32), or one UserError.

    ``bf16_supported``: whether the CUDA device supports bf16 (asked of torch when None).
    """
    name = PRECISIONS.get(str(precision))
    if name is None:
        raise UserError(f"--precision {precision!r}: use auto, fp32, bf16 or fp16")
    if name == "fp32":
        return None
    if device.type == "cuda":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        if name == "fp16":
            return torch.float16
        if name == "bf16" and not bf16_supported:
            raise UserError(
                "--precision bf16 but this GPU does not support bfloat16; use fp16 or fp32"
            )
        return torch.bfloat16 if bf16_supported else torch.float16
    if name == "fp16":
        raise UserError(
            f"--precision fp16 needs a CUDA device (scoring on {device.type}); "
            "use --precision bf16 (CPU autocast) or fp32"
        )
    return torch.bfloat16 if name == "bf16" else None


def is_convolutional(model: nn.Module, share: float = 0.5) -> bool:
    """True when at least ``share`` of the model's parameters are in 2-D convolutions."""
    total = conv = 0
    for module in model.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        total += own
        if isinstance(module, nn.Conv2d):
            conv += own
    return total > 0 and conv >= share * total


def use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """channels_last for this detector on this device: CUDA and a convolutional detector."""
    return device.type == "cuda" and is_convolutional(model)


def prepare_model(model: nn.Module, device: torch.device) -> bool:
    """Put ``model`` in channels_last when :func:`use_channels_last`; return whether it did."""
    if not use_channels_last(model, device):
        return False
    model.to(memory_format=torch.channels_last)
    return True

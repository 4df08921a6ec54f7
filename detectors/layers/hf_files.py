"""Local Hugging Face weight files (nothing is downloaded): a ``save_pretrained`` file or the
folder holding one, and the CLIP vision tower of a ``CLIPModel`` file."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from deepsift.core.checkpoint import read_state_dict
from deepsift.core.errors import UserError

log = logging.getLogger(__name__)

#: the file names ``save_pretrained`` writes, in the order a folder is searched
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_weight_file(path: str | Path, hint: str, option: str = "detector.backbone_file") -> Path:
    """``option``'s value: a transformers weight file, or the folder holding one; else one
    UserError naming ``option`` and ending with ``hint`` (what to pass)."""
    file = Path(path).expanduser()
    if file.is_dir():
        found = [file / n for n in HF_WEIGHT_FILES if (file / n).is_file()]
        if not found:
            raise UserError(f"{option} {file} holds no {' or '.join(HF_WEIGHT_FILES)}; {hint}")
        file = found[0]
    if not file.is_file():
        raise UserError(f"{option} {file} does not exist; {hint}")
    return file


def read_hf_clip_vision(
    path: str | Path,
    option: str,
    hint: str,
    name: str,
    prefixes: tuple[str, ...] = ("vision_model.",),
) -> tuple[Path, dict[str, torch.Tensor]]:
    """The file ``option`` names and its tensors under ``prefixes`` (keys unchanged) of a
    Hugging Face CLIP file (``openai/clip-vit-*``'s ``model.safetensors`` / ``pytorch_model.bin``
    or their folder); the ``position_ids`` buffer older transformers saved (an ``arange``) is
    dropped. One UserError when it holds no ``vision_model.*``; its SHA-256 is logged (no
    checksum is published to check it against)."""
    from deepsift.core.hub import sha256_file

    file = hf_weight_file(path, hint, option)
    keep = {
        k: v
        for k, v in read_state_dict(file).items()
        if k.startswith(prefixes) and not k.endswith("position_ids")
    }
    if not any(k.startswith("vision_model.") for k in keep):
        raise UserError(f"{option} {file} has no 'vision_model.*' tensors; {hint}")
    log.info("%s: CLIP weights %s (sha256 %s)", name, file, sha256_file(file))
    return file, keep

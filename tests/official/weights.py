"""Random weights from a seed, written the way each official training code writes them.

A reference (``tests/official/<format>.json``) lists the official file's keys, shapes
and dtypes. :func:`seeded_state_dict` makes the same tensors from that list and a seed
on any machine (one ``torch.Generator`` per key, seeded by the seed and the key's
CRC-32), scaled so that random networks stay well-conditioned: weights
``N(0, 1/fan_in)``, biases ``N(0, 0.01)``, batch-norm scales ``U(0.8, 1.2)``,
running means ``N(0, 0.01)``, running variances ``U(0.8, 1.2)``, counters 0.
:func:`write_official_file` then saves them in the official container.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
    "float16": torch.float16,
}


def key_spec(state: Mapping[str, torch.Tensor]) -> list[list[Any]]:
    """``[[key, shape, dtype], ...]`` of a state dict, for a reference file."""
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]


def _tensor(key: str, shape: list[int], dtype: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
    kind = _DTYPES[dtype]
    if not kind.is_floating_point:
        return torch.zeros(shape, dtype=kind)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        value = torch.empty(shape).uniform_(0.8, 1.2, generator=gen)
    elif leaf == "running_mean":
        value = torch.randn(shape, generator=gen) * 0.1
    elif len(shape) <= 1 and leaf in ("weight", "gamma"):  # norm scales
        value = torch.empty(shape).uniform_(0.8, 1.2, generator=gen)
    elif len(shape) <= 1:  # biases, norm shifts, scalars
        value = torch.randn(shape, generator=gen) * 0.1
    else:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        value = torch.randn(shape, generator=gen) / max(fan_in, 1) ** 0.5
    return value.to(kind)


def seeded_state_dict(spec: list[list[Any]], seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of ``spec`` (:func:`key_spec`) made from ``seed``."""
    return {k: _tensor(k, shape, dtype, seed) for k, shape, dtype in spec}


def computed_tensor(recipe: list[Any]) -> torch.Tensor:
    """A fixed tensor an official model builds from a formula rather than learns.

    ``["dct", n]``: the orthonormal DCT-II matrix (row ``i``, column ``j``:
    ``c_i cos((j + 0.5) pi i / n)``, ``c_0 = sqrt(1/n)``, else ``sqrt(2/n)``; float64,
    then float32); ``["dct_t", n]``: its transpose; ``["band", n, start, end]``: 1
    where ``start <= i + j <= end`` on an n x n grid, else 0 (float32).
    """
    kind, n = recipe[0], int(recipe[1])
    index = np.arange(n, dtype=np.float64)
    if kind in ("dct", "dct_t"):
        scale = np.where(index == 0, np.sqrt(1.0 / n), np.sqrt(2.0 / n))[:, None]
        matrix = scale * np.cos((index[None, :] + 0.5) * np.pi * index[:, None] / n)
        tensor = torch.tensor(matrix).float()
        return tensor.T.contiguous() if kind == "dct_t" else tensor
    if kind == "band":
        start, end = float(recipe[2]), float(recipe[3])
        diagonal = index[:, None] + index[None, :]
        return torch.tensor(((diagonal >= start) & (diagonal <= end)).astype(np.float32))
    raise ValueError(f"unknown computed tensor {recipe!r}")


def official_state_dict(reference: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a reference's official file, before its container's prefix.

    ``seeded_state_dict`` of its keys, except those in ``reference["computed"]``
    (key -> :func:`computed_tensor` recipe): constants such as F3-Net's DCT matrices,
    which every real file holds with their formula's values.
    """
    state = seeded_state_dict(reference["keys"], reference.get("seed", 0))
    for key, recipe in reference.get("computed", {}).items():
        state[key] = computed_tensor(recipe)
    return state


def write_official_file(reference: Mapping[str, Any], path: Path) -> Path:
    """Save ``official_state_dict`` of a reference in its official container.

    ``reference["save"]``: ``{"container": "state_dict"}`` (``torch.save(state_dict)``)
    or ``{"container": "dict", "key": K, "extra": {...}}`` (``torch.save({K: state_dict,
    **extra})``); ``"prefix"`` (e.g. ``"module."``) is put before every key first.
    """
    save = reference["save"]
    state = official_state_dict(reference)
    prefix = save.get("prefix", "")
    state = {prefix + k: v for k, v in state.items()}
    if save["container"] == "state_dict":
        payload: Any = state
    elif save["container"] == "dict":
        payload = {save["key"]: state, **save.get("extra", {})}
    else:
        raise ValueError(f"unknown container {save['container']!r}")
    torch.save(payload, path)
    return path


def load_reference(name: str) -> dict[str, Any]:
    return json.loads((HERE / f"{name}.json").read_text())


def reference_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))

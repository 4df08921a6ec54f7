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
import re
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def seeded_state_dict(
    spec: list[list[Any]], seed: int = 0, scale: Mapping[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of ``spec`` (:func:`key_spec`) made from ``seed``.

    ``scale`` (a reference's ``"scale"``): ``{regex: factor}``; a key that
    ``re.search`` matches with a regex has its tensor multiplied by the factor (the
    first regex that matches), for networks too deep to stay well-conditioned on the
    defaults (e.g. EfficientNet's swish and squeeze-excitation shrink the input's
    part of the features eightfold a block unless its batch norms' running
    variances are smaller).
    """
    state = {k: _tensor(k, shape, dtype, seed) for k, shape, dtype in spec}
    for key, value in state.items():
        factor = next((f for rx, f in (scale or {}).items() if re.search(rx, key)), None)
        if factor is not None:
            state[key] = value * factor
    return state


def write_official_file(reference: Mapping[str, Any], path: Path) -> Path:
    """Save ``seeded_state_dict`` of a reference in its official container.

    ``reference["save"]``: ``{"container": "state_dict"}`` (``torch.save(state_dict)``)
    or ``{"container": "dict", "key": K, "extra": {...}}`` (``torch.save({K: state_dict,
    **extra})``); ``"prefix"`` (e.g. ``"module."``) is put before every key first.
    ``{"container": "pickled_module", "modules": [[path, "module.Class"], ...]}`` is a
    whole pickled model (``torch.save(model)``, FaceForensics++'s ``full_c23.p``):
    see :func:`pickled_module`; ``"zipfile": false`` writes torch's legacy format.
    """
    save = reference["save"]
    state = seeded_state_dict(reference["keys"], reference.get("seed", 0), reference.get("scale"))
    prefix = save.get("prefix", "")
    state = {prefix + k: v for k, v in state.items()}
    if save["container"] == "pickled_module":
        return save_pickled_module(state, save, path)
    if save["container"] == "state_dict":
        payload: Any = state
    elif save["container"] == "dict":
        payload = {save["key"]: state, **save.get("extra", {})}
    else:
        raise ValueError(f"unknown container {save['container']!r}")
    torch.save(payload, path)
    return path


#: the state-dict leaves that are buffers, not parameters, in the pickled module trees
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def pickled_module(state: Mapping[str, torch.Tensor], modules: list[list[str]]) -> Any:
    """A stand-in of an official model: its module tree with its class paths and tensors.

    ``modules`` lists ``[path, "package.module.Class"]`` for every submodule, parents
    first (``named_modules(remove_duplicate=False)`` of the official model). Classes
    under ``torch.`` are torch's own; every other class is a bare ``nn.Module``
    subclass of that name, put in ``sys.modules`` under its module path only while
    the tree is pickled, so the file names the official classes without their code.
    Each instance holds only ``_modules``, ``_parameters`` and ``_buffers`` (leaves
    in :data:`BUFFERS` are buffers), not the other attributes of the official objects.
    Returns ``(root, stand_in_modules)``; :func:`save_pickled_module` pickles the root
    while those modules are in ``sys.modules``.
    """
    import importlib
    import types

    from torch import nn

    fake: dict[str, types.ModuleType] = {}
    classes: dict[str, type] = {}
    for _, name in modules:
        if name in classes:
            continue
        module_name, _, qualname = name.rpartition(".")
        if module_name.startswith("torch.") or module_name == "torch":
            classes[name] = getattr(importlib.import_module(module_name), qualname)
            continue
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            package = ".".join(parts[:i])
            fake.setdefault(package, types.ModuleType(package))
        cls = type(qualname, (nn.Module,), {"__module__": module_name, "__qualname__": qualname})
        setattr(fake[module_name], qualname, cls)
        classes[name] = cls
    tree: dict[str, nn.Module] = {}
    for path, name in modules:
        cls = classes[name]
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        tree[path] = obj
        if path:
            parent, _, child = path.rpartition(".")
            tree[parent]._modules[child] = obj
    for key, value in state.items():
        path, _, leaf = key.rpartition(".")
        owner = tree[path]
        if leaf in BUFFERS:
            owner._buffers[leaf] = value
        else:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=value.is_floating_point())
    return tree[""], fake


def save_pickled_module(
    state: Mapping[str, torch.Tensor], save: Mapping[str, Any], path: Path
) -> Path:
    """``torch.save`` of the stand-in tree of :func:`pickled_module` (see there)."""
    import sys

    root, fake = pickled_module(state, save["modules"])
    for module in (root, *root.modules()):
        module.training = bool(save.get("training", False))
    saved = {name: sys.modules.get(name) for name in fake}
    sys.modules.update(fake)
    try:
        with warnings.catch_warnings():  # the legacy format looks for the classes' source
            warnings.filterwarnings("ignore", "Couldn't retrieve source code", UserWarning)
            torch.save(root, path, _use_new_zipfile_serialization=bool(save.get("zipfile", True)))
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path


def load_reference(name: str) -> dict[str, Any]:
    return json.loads((HERE / f"{name}.json").read_text())


def reference_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))

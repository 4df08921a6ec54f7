"""Random weights from a seed, written the way each official training code writes them.

A reference (``tests/official/<format>.json``) lists the official file's keys, shapes
and dtypes. :func:`seeded_state_dict` makes the same tensors from that list and a seed
on any machine (one ``torch.Generator`` per key, seeded by the seed and the key's
CRC-32), scaled so that random networks stay well-conditioned: weights
``N(0, 1/fan_in)``, biases ``N(0, 0.01)``, batch-norm scales ``U(0.8, 1.2)``,
running means ``N(0, 0.01)``, running variances ``U(0.8, 1.2)``, counters 0.
A reference may add ``"gains": {regex: factor}``: the tensors whose key matches a
pattern in full are multiplied by its factor (every matching pattern applies; a pattern
that matches no key is an error), for networks whose random weights would otherwise make
the output (nearly) independent of the picture (FreqNet's raw biases drown its frequency
convolutions; EfficientNet's blocks shrink the input's share eightfold each) or a head
of unrealistic norm. :func:`write_official_file` then saves them in the
official container.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
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


def seeded_state_dict(
    spec: list[list[Any]], seed: int = 0, gains: Mapping[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of ``spec`` (:func:`key_spec`) made from ``seed``, each floating-point
    one whose key matches a pattern of ``gains`` in full multiplied by its factor."""
    state = {k: _tensor(k, shape, dtype, seed) for k, shape, dtype in spec}
    for pattern, factor in (gains or {}).items():
        keys = [k for k, v in state.items() if re.fullmatch(pattern, k) and v.is_floating_point()]
        if not keys:
            raise ValueError(f"gain pattern {pattern!r} matches no key")
        for key in keys:
            state[key] = state[key] * factor
    return state


def computed_tensor(recipe: list[Any]) -> torch.Tensor:
    """A fixed tensor an official model builds from a formula rather than learns.

    ``["dct", n]``: the orthonormal DCT-II matrix (row ``i``, column ``j``:
    ``c_i cos((j + 0.5) pi i / n)``, ``c_0 = sqrt(1/n)``, else ``sqrt(2/n)``; float64,
    then float32); ``["dct_t", n]``: its transpose; ``["band", n, start, end]``: 1
    where ``start <= i + j <= end`` on an n x n grid, else 0 (float32); ``["border", n, w]``:
    a (1, 1, n, n) float32 mask, 1 except on a ``w``-wide border (Multi-Attention's).
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
    if kind == "border":  # ["border", n, width]: (1, 1, n, n), 1 inside a zero border
        width = int(recipe[2])
        mask = torch.zeros(1, 1, n, n)
        mask[0, 0, width : n - width, width : n - width] = 1
        return mask
    raise ValueError(f"unknown computed tensor {recipe!r}")


def official_state_dict(reference: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a reference's official file, before its container's prefix.

    ``seeded_state_dict`` of its keys (with its ``gains``), then ``reference["values"]``
    (key -> a constant, broadcast: buffers such as a blur kernel) and
    ``reference["computed"]`` (key -> :func:`computed_tensor` recipe: constants such as
    F3-Net's DCT matrices, which every real file holds with their formula's values).
    """
    state = seeded_state_dict(reference["keys"], reference.get("seed", 0), reference.get("gains"))
    for key, value in reference.get("values", {}).items():
        state[key] = torch.tensor(value, dtype=state[key].dtype).expand_as(state[key]).clone()
    for key, recipe in reference.get("computed", {}).items():
        state[key] = computed_tensor(recipe)
    return state


def write_official_file(reference: Mapping[str, Any], path: Path) -> Path:
    """Save ``official_state_dict`` of a reference in its official container.

    ``reference["save"]``: ``{"container": "state_dict"}`` (``torch.save(state_dict)``)
    or ``{"container": "dict", "key": K, "extra": {...}}`` (``torch.save({K: state_dict,
    **extra})``; ``"numpy_extra"``: more entries, saved as ``numpy.float64``) or
    ``{"container": "torchscript"}`` (a TorchScript archive whose
    ``state_dict()`` is these tensors, as OpenAI's CLIP ``ViT-L-14.pt``); ``"prefix"``
    (e.g. ``"module."``) is put before every key first. ``reference["gains"]``
    (optional, see :func:`seeded_state_dict`) multiplies tensors first: a linear head on
    unit-norm features needs a realistic norm for its logits to tell inputs apart.
    ``reference["values"]`` (``{key: value}``, optional, broadcast to the key's shape)
    sets constants the official model holds as buffers (a blur kernel, a level of detail).
    ``{"container": "pickled_module", "modules":
    [[path, "module.Class"], ...]}`` is a whole pickled model (``torch.save(model)``,
    FaceForensics++'s ``full_c23.p``): see :func:`pickled_module`; ``"zipfile": false``
    writes torch's legacy format.
    """
    save = reference["save"]
    state = official_state_dict(reference)
    prefix = save.get("prefix", "")
    state = {prefix + k: v for k, v in state.items()}
    if save["container"] == "pickled_module":
        return save_pickled_module(state, save, path)
    if save["container"] == "state_dict":
        payload: Any = state
    elif save["container"] == "dict":
        payload = {save["key"]: state, **save.get("extra", {})}
        # metrics a training script saved as NumPy floats (CORE's acc and auc)
        payload.update({k: np.float64(v) for k, v in save.get("numpy_extra", {}).items()})
    elif save["container"] == "torchscript":
        _save_torchscript(state, path)
        return path
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


def _save_torchscript(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """A scripted module tree holding ``state`` under its dotted names (no methods)."""
    import warnings

    from torch import nn

    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if name not in module._modules:
                module.add_module(name, nn.Module())
            module = module._modules[name]
        if value.is_floating_point():
            module.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(leaf, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.script(root).save(str(path))


def write_companions(
    reference: Mapping[str, Any], directory: Path, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write a reference's companion files; ``overrides`` with arguments naming them.

    Some formats are two files: UnivFD's and ClipBased's released head and the CLIP
    weights the user passes as ``backbone_file``; LGrad's classifier and the StyleGAN
    discriminator (``gradient_model.weights``). ``reference["companions"]`` maps a
    detector argument (dotted for a field of a dict argument) to a file spec
    (``filename``, ``keys``, ``seed``, ``save``, ``gains``, ``values``, as a reference's
    own), written with :func:`write_official_file` into ``directory``.
    """
    out: dict[str, Any] = copy.deepcopy(dict(overrides or {}))
    for argument, spec in reference.get("companions", {}).items():
        path = write_official_file(spec, Path(directory) / spec["filename"])
        *parents, leaf = argument.split(".")
        target = out
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = str(path)
    return out


def load_reference(name: str) -> dict[str, Any]:
    return json.loads((HERE / f"{name}.json").read_text())


def reference_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))

"""Weights out of a whole pickled ``nn.Module`` (``torch.save(model)``), without running its code.

Some community checkpoints are not state dicts but whole pickled models: the
FaceForensics++ Xception files (``full_c23.p``, ``full_raw.p``, ``full_c40.p``)
are ``torch.save`` of a ``TransferModel``. Unpickling them normally imports
their classes and lets the pickle call any function it names, so deepsift never
does that. This module is a ``pickle_module`` for
``torch.load(..., weights_only=False, pickle_module=...)`` whose unpickler
resolves only

* ``collections.OrderedDict``, ``set``/``frozenset`` and ``torch.Size``;
* torch's tensor and parameter rebuild functions (``torch._utils._rebuild_tensor``,
  ``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``, ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state``), replaced by local versions that only view
  the storage torch itself read (hooks, metadata and Python state dropped);

and maps every other global (the model's classes, ``torch.nn`` modules, but
also ``os.system`` or ``builtins.eval``) to an inert :class:`Placeholder` class
that only records what it is given: calling it, ``__new__``, ``__setstate__``,
item assignment and appends store their arguments and run nothing else.
Storages are read by torch's own loader, before the unpickler sees a name.
:func:`read_pickled_module` then walks the placeholders' ``_modules``,
``_parameters`` and ``_buffers`` into a flat state dict.
"""

from __future__ import annotations

import collections
import pickle
import sys
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from deepsift.core.errors import UserError


class Placeholder:
    """An inert stand-in for a pickled object of a class deepsift does not import.

    ``global_name`` (on the class) is the ``module.name`` the pickle asked
    for; ``args``/``kwargs`` what it was called or ``__new__``-ed with;
    ``state`` what ``BUILD`` gave it (a module's ``__dict__``); ``items`` and
    ``elements`` what ``SETITEMS``/``APPENDS`` added.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = super().__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, elements=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: ``__new__`` already recorded the arguments."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["elements"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["elements"].extend(values)

    def __repr__(self) -> str:
        return f"<placeholder for {self.global_name}>"


def _placeholder_class(module: str, name: str) -> type[Placeholder]:
    return type(
        f"Placeholder[{module}.{name}]", (Placeholder,), {"global_name": f"{module}.{name}"}
    )


def _check_storage(storage: Any) -> torch.storage.TypedStorage:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}")
    return storage


def _view(storage: Any, offset: int, size: Any, stride: Any) -> torch.Tensor:
    storage = _check_storage(storage)
    tensor = torch.empty((0,), dtype=storage.dtype, device=storage._untyped_storage.device)
    return tensor.set_(storage._untyped_storage, int(offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any) -> torch.Tensor:
    return _view(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any, offset: int, size: Any, stride: Any, *_ignored: Any
) -> torch.Tensor:
    return _view(storage, offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any, offset: int, size: Any, stride: Any, _grad: Any, _hooks: Any, dtype: Any, *_: Any
) -> torch.Tensor:
    tensor = _view(storage, offset, size, stride)
    if isinstance(dtype, torch.dtype) and dtype != tensor.dtype:
        raise pickle.UnpicklingError("tensor dtype differs from its storage's")
    return tensor


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter holds a {type(data).__name__}")
    return data


#: the only globals resolved to real objects
ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only :data:`ALLOWED`."""

    def __init__(self, file: IO[bytes], **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._classes: dict[tuple[str, str], type[Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in ALLOWED:
            return ALLOWED[key]
        if key not in self._classes:
            self._classes[key] = _placeholder_class(module, name)
        return self._classes[key]


def load(file: IO[bytes], **kwargs: Any) -> Any:
    """``pickle.load`` with :class:`Unpickler` (what ``torch.load`` calls on legacy files)."""
    return Unpickler(file, **kwargs).load()


def _module_state(obj: Placeholder) -> dict[str, Any]:
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
        state = state[0]  # (dict, slots) form
    return state if isinstance(state, dict) else {}


def placeholder_state_dict(root: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict ``root.state_dict()`` would have given, from the recorded module tree.

    Parameters and persistent buffers of every module reachable through
    ``_modules``, named ``child.grandchild.tensor``; ``None`` entries skipped.
    """
    out: dict[str, torch.Tensor] = {}
    if not isinstance(root, Placeholder):
        return out
    state = _module_state(root)
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        tensors = state.get(group) or {}
        if not isinstance(tensors, dict):
            continue
        for name, tensor in tensors.items():
            if tensor is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise UserError(f"pickled module entry {prefix}{name} is not a tensor")
            out[f"{prefix}{name}"] = tensor
    children = state.get("_modules") or {}
    if isinstance(children, dict):
        for name, child in children.items():
            out.update(placeholder_state_dict(child, f"{prefix}{name}."))
    return out


def read_pickled_module(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """``(class name, state dict)`` of a file written by ``torch.save(module)``, run-free.

    Raises :class:`~deepsift.core.errors.UserError` when the file is not a pickled
    module (or holds no tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("constants.pkl") for name in archive.namelist()):
                raise UserError(
                    f"weights file {path} is a TorchScript archive, which deepsift does not run"
                )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy files: "couldn't retrieve source code"
            root = torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__]
            )
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"weights file {path} cannot be read as a pickled module ({reason})"
        ) from None
    if not isinstance(root, Placeholder):
        raise UserError(
            f"weights file {path} is not a pickled module (it holds a {type(root).__name__})"
        )
    state = placeholder_state_dict(root)
    if not state:
        raise UserError(f"weights file {path} is a pickled {root.global_name} without tensors")
    return root.global_name, state

"""A small reader of Keras 2 ``.h5`` weight files (no TensorFlow needed, only h5py).

Keras 2 writes weights in HDF5 in two layouts:

* ``model.save_weights("x.h5")``: one group per layer at the top level, the
  file's ``layer_names`` attribute listing the layers in the model's order;
* ``model.save("x.h5")``: the same groups under ``model_weights`` (beside the
  model's config, which is not read here: no code or config is executed).

Each layer group's ``weight_names`` attribute lists its arrays
(``conv2d_5/kernel:0``, ``conv2d_5/bias:0``, ...). Keras itself loads such a
file by position: the n-th layer with weights in the file goes to the n-th
layer with weights in the model. Detectors map them more robustly by kind and
creation order instead (:func:`layers_by_kind`), because Keras 2 names layers
``<kind>_<k>`` with ``k`` counting up as layers are created, and the file's
positional order is a topological sort that can interleave parallel branches.

Keras 3's ``.weights.h5`` format (``layers/<name>/vars/0``) is a different
layout and is not read here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepsift.core.errors import UserError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
H5_SUFFIXES = (".h5", ".hdf5")

_AUTO_NAME = re.compile(r"(?P<kind>.+?)(?:_(?P<index>\d+))?")


@dataclass
class KerasLayer:
    """One layer with weights: its name and arrays keyed by short name (``kernel``, ``bias``...)."""

    name: str
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The layer name without Keras's ``_<k>`` counter (``conv2d_5`` -> ``conv2d``)."""
        return split_name(self.name)[0]


def split_name(name: str) -> tuple[str, int]:
    """``conv2d_5`` -> (``conv2d``, 5); ``conv2d`` (TF 2's first layer) -> (``conv2d``, 0)."""
    match = _AUTO_NAME.fullmatch(name)
    assert match is not None  # the pattern matches every non-empty string
    return match.group("kind"), int(match.group("index") or 0)


def is_hdf5(path: str | Path) -> bool:
    """True for an HDF5 file: a ``.h5``/``.hdf5`` name or the HDF5 signature in its first bytes.

    The official MesoNet example loads ``weights/Meso4_DF`` without a suffix,
    so the signature is checked as well.
    """
    path = Path(path)
    if path.suffix.lower() in H5_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


def _text(value: object) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _short_weight_name(full: str) -> str:
    """``conv2d_5/kernel:0`` or ``model/conv2d_5/kernel:0`` -> ``kernel``."""
    return full.rsplit("/", 1)[-1].split(":", 1)[0]


def read_keras_h5(path: str | Path) -> list[KerasLayer]:
    """The layers with weights of a Keras 2 ``.h5`` file, in the file's layer order.

    Raises :class:`~deepsift.core.errors.UserError` for a missing file, a file that is
    not HDF5, or an HDF5 file that is not a Keras 2 weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        import h5py
    except ImportError:
        raise UserError(
            f"reading the Keras weights file {path} needs h5py: pip install h5py"
        ) from None
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(
            f"weights file {path} cannot be opened as HDF5 ({str(exc).splitlines()[0][:160]}); "
            f"pass an official Keras .h5 weights file or a deepsift state dict"
        ) from None
    with handle:
        root = handle.get("model_weights", handle)
        if "layer_names" not in root.attrs:
            raise UserError(
                f"{path} is an HDF5 file but not a Keras 2 weights file (no layer_names "
                f"attribute); Keras 3 .weights.h5 files are not supported: re-save the weights "
                f"with Keras 2 (tf_keras) save_weights('x.h5')"
            )
        layers: list[KerasLayer] = []
        for layer_name in (_text(n) for n in root.attrs["layer_names"]):
            if layer_name not in root:
                raise UserError(f"Keras weights file {path} lists layer {layer_name} but lacks it")
            group = root[layer_name]
            weight_names = [_text(n) for n in group.attrs.get("weight_names", [])]
            if not weight_names:
                continue
            layer = KerasLayer(layer_name)
            for full in weight_names:
                if full not in group:
                    raise UserError(
                        f"Keras weights file {path} lists {layer_name}/{full} but lacks it"
                    )
                layer.weights[_short_weight_name(full)] = np.asarray(group[full])
            layers.append(layer)
    return layers


def layers_by_kind(layers: list[KerasLayer]) -> dict[str, list[KerasLayer]]:
    """Layers grouped by kind, each group in creation order (the ``_<k>`` counter)."""
    groups: dict[str, list[KerasLayer]] = defaultdict(list)
    for layer in layers:
        groups[layer.kind].append(layer)
    return {
        kind: sorted(group, key=lambda layer: split_name(layer.name)[1])
        for kind, group in groups.items()
    }

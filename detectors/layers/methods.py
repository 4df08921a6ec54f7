"""Manipulation-method labels for detectors with a head (or an encoder) per method.

UCF's specific head and LSDA's per-method teachers label each training image 0 for
real and ``1 + i`` for the ``i``-th method of the training set; deepsift reads the
method from the record's ``generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deepsift.core.errors import UserError

#: DeepfakeBench's FF++ method order (``label_dict`` / ``fake_dict``: FF-DF 1, FF-F2F 2,
#: FF-FS 3, FF-NT 4; reals 0), under deepsift's FF++ generator names
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")


def method_label(record: Any, methods: Sequence[str], detector: str) -> int:
    """0 for a real record, ``1 +`` the index of its ``generator`` in ``methods`` for a fake."""
    if int(record.label) == 0:
        return 0
    generator = getattr(record, "generator", None)
    if generator not in methods:
        raise UserError(
            f"{detector}: training record {record.path} has generator {generator!r}, not one of "
            f"detector.methods={list(methods)}; set detector.methods to the training set's "
            f"manipulation methods"
        )
    return 1 + list(methods).index(generator)

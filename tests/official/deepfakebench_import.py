"""Import one of DeepfakeBench's detector modules on its own, for the reference makers.

DeepfakeBench's ``training/detectors/<name>_detector.py`` files import its registry
(``from detectors import DETECTOR``), its losses (``from loss import LOSSFUNC``) and its
metrics, and its package ``__init__`` imports every detector (and their dependencies).
:func:`import_detector` loads ONE detector file from a checkout given on the command line,
as a submodule of a bare package pointing at ``training/detectors`` (so its relative
``from .base_detector import AbstractDetector`` resolves to the authors' file), with
stubs for the registry, the losses (``cross_entropy`` -> ``nn.CrossEntropyLoss``), the
training metrics, and the optional packages a file imports but never calls in its forward
pass (``loralib``, ``torch.utils.tensorboard``). None of the stubs is on the forward path.

Used only by ``make_*.py`` in this folder; never imported by deepsift or its tests. The
project's own ``detectors`` package must not be imported in the same process (the stub
takes its name, as DeepfakeBench's code expects).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

from torch import nn


class _Registry(dict):
    def register_module(self, module_name: str | None = None):
        def deco(cls):
            self[module_name or cls.__name__] = cls
            return cls

        return deco


def _module(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def import_detector(repo: Path, name: str) -> types.ModuleType:
    """``training/detectors/<name>.py`` of the checkout ``repo``, imported with the stubs."""
    if "detectors" in sys.modules and not isinstance(
        sys.modules["detectors"].__dict__.get("DETECTOR"), _Registry
    ):
        raise RuntimeError("deepsift's detectors package is imported: run the maker on its own")
    _module("detectors", DETECTOR=_Registry())
    _module("loss", LOSSFUNC={"cross_entropy": nn.CrossEntropyLoss})
    _module("metrics")
    _module("metrics.base_metrics_class", calculate_metrics_for_train=lambda *a: (0, 0, 0, 0))
    _module("loralib")
    _module("torch.utils.tensorboard", SummaryWriter=object)
    package = _module("dfb_detectors")
    package.__path__ = [str(repo / "training" / "detectors")]
    return importlib.import_module(f"dfb_detectors.{name}")

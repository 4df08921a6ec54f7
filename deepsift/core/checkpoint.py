"""Checkpoints that are enough on their own, and safe to open.

A deepsift checkpoint is a ``torch.save`` of plain data (tensors, numbers,
strings, lists, dicts) so that it loads with ``torch.load(weights_only=True)``:
nothing in it is unpickled as code. It carries

* ``detector``: the detector's config name and resolved config (``_target_``,
  arguments, preprocessing), so ``load_detector(path)`` rebuilds it;
* ``state_dict``: the weights;
* ``face_crop``: how the training faces were cut, when the training data says it (a
  video benchmark's crop cache): ``{"align": true, "margin": 1.3, "size": 256,
  "detector": {"name": "dlib_hog", "upsample": 0, "max_side": 960}}``
  (``datasets.faces.CropSettings``); ``score.py`` cuts faces with the same settings.
  ``None`` otherwise (``score.py`` then uses the detector config's ``face_crop``);
* ``window_stride``: for a cache built with windows (``datasets.preprocess clip_len=...
  stride=N``), the N video frames between cached neighbours, so that ``score.py`` takes a
  clip detector's frames ``clip_stride x N`` video frames apart as training did; ``None``
  otherwise;
* ``git``: the code version that wrote it; ``epoch``, ``seed``, ``metrics``;
* ``last`` checkpoints add ``optimizer``, ``scheduler``, ``scaler`` and
  ``trainer_state`` so an interrupted run resumes exactly (the engine reseeds
  every random generator from the seed and the epoch number, so no RNG state is
  needed).

A config's ``_target_`` is imported and called when the detector is rebuilt
(Hydra instantiates nested configs too), so :func:`check_targets` refuses, before
anything is built, every config that names something else than:

* at the top (``detector._target_``): a detector class, one of the ``_target_``
  values of the shipped ``configs/detector/*.yaml`` (:func:`detector_targets`,
  read as YAML on first use, nothing imported);
* anywhere below it (``detector.optimizer._target_``, inside lists, ``_args_``
  ...): one of :data:`NESTED_TARGETS`, the torch optimisers and per-epoch LR
  schedulers a config would pick, SBI's ``SAM`` and ``LinearDecayLR``, and the
  AEROBLADE autoencoder factories.

Configs must be plain data (dicts, lists, strings, numbers, booleans, None);
targets must be plain strings matched exactly; ``_args_``, ``_partial_``,
``_recursive_`` and ``_convert_`` must have the types Hydra expects, any other
``_name_`` key (``_call_`` ...) is refused, and so is any string holding
``${``: Hydra resolves interpolations again when it instantiates, and
``${oc.create:...}`` or ``${oc.decode:...}`` would turn a string into a new
``_target_`` after the check. :func:`read_checkpoint` checks every checkpoint
it opens, and ``detectors.factory.build_detector`` checks every config again,
resolved, right before it instantiates. A crafted checkpoint cannot make
deepsift call ``os.system``, ``builtins.exec`` or ``deepsift.core.hub.download``.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.configs import CONFIG_DIR, REPO_ROOT
from deepsift.core.errors import UserError

FORMAT = "deepsift-checkpoint/1"

#: optimisers a config may name below the top (``optimizer:``, SAM's ``base_optimizer:``);
#: the shipped configs use SGD, Adam and AdamW, the others are the usual alternatives
OPTIMIZER_TARGETS = tuple(
    f"torch.optim.{name}"
    for name in (
        "SGD",
        "Adam",
        "AdamW",
        "NAdam",
        "RAdam",
        "Adamax",
        "RMSprop",
        "Adagrad",
        "Adadelta",
    )
)
#: LR schedulers stepped once per epoch without arguments (the engine's ``scheduler.step()``);
#: the shipped configs use MultiStepLR and CosineAnnealingLR (configs/experiment/demo.yaml)
SCHEDULER_TARGETS = tuple(
    f"torch.optim.lr_scheduler.{name}"
    for name in (
        "MultiStepLR",
        "StepLR",
        "CosineAnnealingLR",
        "CosineAnnealingWarmRestarts",
        "ExponentialLR",
        "LinearLR",
        "ConstantLR",
        "PolynomialLR",
    )
)
#: deepsift callables the detector configs nest: SBI's optimiser and scheduler
#: (configs/detector/sbi.yaml), AEROBLADE's default autoencoder
#: (configs/detector/aeroblade.yaml) and the two other factories that config and
#: detectors/reconstruction.py document for ``detector.autoencoder``, so AEROBLADE
#: checkpoints trained with them reload (they only read local files, weights_only)
DEEPSIFT_NESTED_TARGETS = (
    "detectors.layers.sam.SAM",
    "detectors.layers.sam.LinearDecayLR",
    "detectors.reconstruction.resampling_autoencoder",
    "datasets.embedded.generators.embedded_autoencoder",
    "detectors.reconstruction.diffusers_vae",
)
#: every ``_target_`` allowed below a detector config's top
NESTED_TARGETS = frozenset(OPTIMIZER_TARGETS + SCHEDULER_TARGETS + DEEPSIFT_NESTED_TARGETS)
#: the keys Hydra 1.3's instantiate acts on; every one is checked
HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
CONVERT_MODES = ("none", "partial", "object", "all")


def git_hash(repo: Path | None = None) -> str:
    """The checkout's commit (with ``-dirty`` when tracked files have uncommitted changes)."""
    repo = repo or REPO_ROOT

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=5, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


@functools.cache
def detector_targets() -> frozenset[str]:
    """The ``_target_`` of every shipped ``configs/detector/*.yaml``: the detector classes.

    Read as plain YAML on first use (nothing is imported or instantiated), then cached.
    """
    import yaml

    targets = set()
    for path in sorted((CONFIG_DIR / "detector").glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue  # Hydra reports a broken config when it is used
        if isinstance(data, dict) and isinstance(data.get("_target_"), str):
            targets.add(data["_target_"])
    return frozenset(targets)


def _refuse(where: str, location: str, problem: str, allowed: str) -> UserError:
    return UserError(f"{where}: {location} {problem}; refusing to build it ({allowed})")


def _allowed_text(top: bool) -> str:
    if top:
        names = sorted(detector_targets())
        return "detector._target_ must be a detector class of configs/detector: " + (
            ", ".join(names) or "none found (configs/detector is missing)"
        )
    return "nested _target_ values must be one of: " + ", ".join(sorted(NESTED_TARGETS))


def _check_node(node: Any, where: str, location: str, top: bool) -> None:
    if isinstance(node, str):
        if "${" in node:
            raise _refuse(
                where,
                location,
                f"holds an interpolation ({node[:80]!r}) that Hydra would resolve, possibly "
                "into a new _target_, after this check",
                "write the value without ${...}; a saved config is already resolved",
            )
        return
    if isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_node(value, where, f"{location}[{i}]", False)
        return
    if not isinstance(node, Mapping):
        if node is not None and not isinstance(node, (bytes, int, float)):
            # weights_only unpickling can still hand back e.g. a torch function object
            raise _refuse(
                where, location, f"is a {type(node).__name__}", "a config holds plain data only"
            )
        return
    if top and "_target_" not in node:
        raise _refuse(where, f"{location}._target_", "is missing", _allowed_text(True))
    for key, value in node.items():
        here = f"{location}.{key}"
        if not isinstance(key, str):  # OmegaConf takes int keys: still check what they hold
            _check_node(value, where, f"{location}[{key!r}]", False)
            continue
        if "${" in key:
            raise _refuse(where, here, "is a key holding an interpolation", "use plain keys")
        if key == "_target_":
            allowed = detector_targets() if top else NESTED_TARGETS
            if type(value) is not str:
                raise _refuse(
                    where,
                    here,
                    f"is a {type(value).__name__} ({str(value)[:60]!r}), not a class name",
                    _allowed_text(top),
                )
            if value not in allowed:
                raise _refuse(where, here, f"is {value!r}", _allowed_text(top))
        elif key in ("_partial_", "_recursive_"):
            if type(value) is not bool:
                raise _refuse(where, here, f"is {value!r}", "it must be true or false")
        elif key == "_convert_":
            if type(value) is not str or value.lower() not in CONVERT_MODES:
                raise _refuse(
                    where, here, f"is {value!r}", f"use one of {', '.join(CONVERT_MODES)}"
                )
        elif key == "_args_":
            if not isinstance(value, (list, tuple)):
                raise _refuse(where, here, f"is a {type(value).__name__}", "_args_ must be a list")
        elif len(key) > 2 and key.startswith("_") and key.endswith("_"):
            raise _refuse(
                where,
                here,
                "is not an instruction deepsift lets a config give Hydra",
                f"allowed: {', '.join(HYDRA_KEYS)}",
            )
        _check_node(value, where, here, False)


def check_targets(config: Any, where: str) -> None:
    """Refuse a detector config that would build anything but the allow-lists (module doc).

    ``where`` names the source in the error (``checkpoint runs/x/best.pt``); the
    error also names the place in the config (``detector.optimizer._target_``),
    the offending value and what is allowed there.
    """
    if not isinstance(config, Mapping):
        problem = "is missing" if config is None else f"is a {type(config).__name__}, not a mapping"
        raise _refuse(where, "the detector config", problem, _allowed_text(True))
    _check_node(config, where, "detector", True)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a kill never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Open a deepsift checkpoint safely; one clear error for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; pass the path of a best.pt or last.pt from a run directory"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"checkpoint {path} cannot be read safely ({reason[:200]}); it is corrupt, truncated, "
            f"or needs unpickling of code, which deepsift never does: re-export it as a state dict"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a deepsift checkpoint; if it holds official or third-party weights, "
            f"load them with load_detector('<name>', weights='{path}') or detector.weights={path}"
        )
    info = payload.get("detector")
    check_targets(info.get("config") if isinstance(info, Mapping) else None, f"checkpoint {path}")
    return payload


def strip_prefixes(
    state_dict: Mapping[str, Any], prefixes: tuple[str, ...] = ("module.",)
) -> dict[str, Any]:
    """Remove wrapper prefixes (``module.`` from DataParallel/DDP) shared by every key."""
    out = dict(state_dict)
    for prefix in prefixes:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """``load_state_dict(strict=True)`` with a message that names missing and unexpected keys."""
    state_dict = strip_prefixes(state_dict)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return (
                ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                if keys
                else "none"
            )

        raise UserError(
            f"{source} does not match {type(module).__name__}: missing keys: {show(missing)}; "
            f"unexpected keys: {show(unexpected)}"
        )
    wrong = [
        k for k, v in state_dict.items() if torch.is_tensor(v) and v.shape != expected[k].shape
    ]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"{source} does not match {type(module).__name__}: {len(wrong)} tensors have other shapes, "
            f"e.g. {k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        )
    module.load_state_dict(state_dict, strict=True)


def _numpy_scalar_globals() -> list[Any]:
    """What a numeric NumPy scalar needs to unpickle: its reconstructor and its dtype classes.

    Training scripts often save metrics next to the weights (CORE's ``{'model', 'optimizer',
    'acc', 'auc', 'epoch'}`` holds ``numpy.float64`` values). A numeric scalar is rebuilt from
    a dtype and raw bytes, with no code run; object dtypes (which would unpickle an arbitrary
    payload) are not allowed.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [scalar, np.dtype, *sorted(dtypes, key=lambda t: t.__name__)]


def torch_load_weights_only(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` that also accepts numeric NumPy scalars (see above)
    and ``argparse.Namespace`` (training scripts save their ``args`` beside the weights,
    e.g. AIDE's ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``; a Namespace only
    holds attributes, whose values go through the same restricted unpickler)."""
    import argparse

    with torch.serialization.safe_globals([*_numpy_scalar_globals(), argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The tensors of a weights file, safely.

    ``torch.load(weights_only=True)`` (nothing is unpickled as code) or
    safetensors; a deepsift checkpoint's ``state_dict``; ``{'model': ...}``,
    ``{'state_dict': ...}`` and ``{'model_state_dict': ...}`` wrappers unwrapped;
    ``module.`` prefixes removed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch_load_weights_only(path)
        except Exception as exc:
            raise UserError(
                f"weights file {path} cannot be read safely ({type(exc).__name__}); "
                "it is corrupt or not a state dict"
            ) from None
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state["state_dict"]
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} does not hold a state dict")
    return strip_prefixes(state)


def load_state_dict_file(module: nn.Module, path: str | Path) -> None:
    """Load a weights file (see :func:`read_state_dict`) with strict key matching."""
    load_state_dict_strict(module, read_state_dict(path), f"weights file {path}")

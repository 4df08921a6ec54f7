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
* ``git``: the code version that wrote it; ``epoch``, ``seed``, ``metrics``;
* ``last`` checkpoints add ``optimizer``, ``scheduler``, ``scaler`` and
  ``trainer_state`` so an interrupted run resumes exactly (the engine reseeds
  every random generator from the seed and the epoch number, so no RNG state is
  needed).

A config's ``_target_`` is imported and called when the detector is rebuilt, so
targets are restricted to deepsift's own detectors and torch's optimisers and
schedulers: a crafted checkpoint cannot make deepsift call ``os.system``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.errors import UserError

FORMAT = "deepsift-checkpoint/1"
ALLOWED_TARGET_PREFIXES = ("detectors.", "torch.optim.", "deepsift.")


def git_hash(repo: Path | None = None) -> str:
    """The checkout's commit (with ``-dirty`` when tracked files have uncommitted changes)."""
    repo = repo or Path(__file__).resolve().parents[1]

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


def check_targets(config: Any, where: str) -> None:
    """Refuse ``_target_`` values outside deepsift and torch.optim (see module doc)."""
    if isinstance(config, Mapping):
        target = config.get("_target_")
        if target is not None and not str(target).startswith(ALLOWED_TARGET_PREFIXES):
            raise UserError(
                f"{where} asks to build {target!r}, which is not a deepsift detector or torch "
                f"optimiser; refusing to run it (allowed prefixes: {', '.join(ALLOWED_TARGET_PREFIXES)})"
            )
        for value in config.values():
            check_targets(value, where)
    elif isinstance(config, (list, tuple)):
        for value in config:
            check_targets(value, where)


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
    check_targets(payload.get("detector", {}).get("config", {}), f"checkpoint {path}")
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
            state = torch.load(path, map_location="cpu", weights_only=True)
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

"""The model that scores: one detector, a checkpoint, or an ensemble of several.

* ``--checkpoint PATH``: a deepsift checkpoint (``best.pt``), rebuilt as trained;
* ``--detector NAME [--weights FILE] [--set key=value ...]``: a configured detector
  with official (or other) weights; ``--set`` overrides config fields
  (``--set backbone=resnet50 --set preprocessing.size=224``);
* ``--ensemble SPEC``: several, each scored with its own preprocessing, combined
  by the mean of their probabilities (``--combine max`` for the maximum). SPEC is
  a comma-separated list of ``NAME``, ``NAME:WEIGHTS`` or ``CHECKPOINT.pt``
  (``meso4:Meso4_DF.h5,npr:NPR.pth``), or a YAML file::

      combine: mean            # or max
      members:
        - detector: meso4
          weights: Meso4_DF.h5 # relative to the YAML file
          faces: auto          # auto | on | off
        - checkpoint: runs/train/x/best.pt
          label: ours          # the key of this member in the record's ``scores``

Face detectors: a member scores face crops when ``--faces on``, or with
``--faces auto`` (the default) when its config says ``input: face``. Its faces are
cut as its training faces were (:class:`datasets.faces.CropSettings`, see
:mod:`.faces`), from the first of:

1. the checkpoint's ``face_crop``: the settings of the crop cache it was trained on
   (``datasets.preprocess`` records them, training copies them);
2. the detector config's ``face_crop`` (``configs/detector/*.yaml``): the protocol of
   the official weights the config loads (FaceForensics++: the unrotated square 1.3x
   the box; DeepfakeBench: aligned on five landmarks, 1.3, 256 px), also what a
   checkpoint that does not say falls back to;
3. :data:`.faces.DEFAULT_CROP`.

``--face-align on|off`` and ``--face-margin`` override align and margin (the crops then
differ from the training ones); each member logs one line naming its crop and where
it came from.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.faces import CropSettings
from deepsift.core.errors import UserError
from deepsift.scoring.faces import DEFAULT_CROP
from detectors.base import Detector

log = logging.getLogger(__name__)

COMBINE = ("mean", "max")


@dataclass
class Member:
    label: str
    detector: Detector
    faces: bool
    identity: dict[str, Any]
    weight: float = 1.0
    face_crop: CropSettings | None = None  # how its faces are cut (face members)
    face_crop_from: str | None = None  # where those settings came from, in words
    #: clip detectors: video frames per cached frame of the training cache (its windows'
    #: ``stride``, from the checkpoint); a clip's frames are ``clip_stride x`` this apart
    frame_step: int = 1


@dataclass
class Ensemble:
    members: list[Member]
    combine: str = "mean"
    _identity_cache: Any = field(default=None, repr=False)

    def combine_scores(self, scores: dict[str, float | None]) -> float | None:
        """The combined probability of the members that scored (None when none did)."""
        pairs = [(m.weight, scores.get(m.label)) for m in self.members]
        pairs = [(w, s) for w, s in pairs if s is not None]
        if not pairs:
            return None
        if self.combine == "max":
            return float(max(s for _, s in pairs))
        total = sum(w for w, _ in pairs)
        return float(sum(w * s for w, s in pairs) / total)

    def identity(self) -> Any:
        """What a calibration file must match: names, config overrides, weight file hashes."""
        if self._identity_cache is None:
            ids = [_resolve_identity(m.identity) for m in self.members]
            self._identity_cache = (
                ids[0] if len(ids) == 1 else {"combine": self.combine, "members": ids}
            )
        return self._identity_cache

    def to(self, device: torch.device) -> Ensemble:
        for member in self.members:
            member.detector.to(device).eval()
        return self


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _resolve_identity(identity: dict[str, Any]) -> dict[str, Any]:
    out = dict(identity)
    for key in ("weights", "checkpoint"):
        if out.get(key):
            out[key] = {"sha256_16": file_digest(out[key])}
    return out


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict with YAML-typed values."""
    from omegaconf import OmegaConf

    if not pairs:
        return {}
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise UserError(f"--set takes key=value, got {bad[0]!r}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(pairs)), resolve=True)


def _face_mode(detector: Detector, faces: str) -> bool:
    if faces not in ("auto", "on", "off"):
        raise UserError(f"--faces {faces!r}: use auto, on or off")
    if faces == "auto":
        if getattr(detector, "input_kind", "image") == "clip":
            return True  # clip detectors read tracked face crops
        return str(detector.config.get("input", "image")).lower() == "face"
    return faces == "on"


def _crop_settings(data: Any, where: str) -> CropSettings:
    try:
        return CropSettings.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: bad face_crop ({exc})") from None


def resolve_face_crop(
    model: Detector,
    payload: dict[str, Any] | None,
    where: str,
    face_overrides: dict[str, Any] | None = None,
) -> tuple[CropSettings, str]:
    """How a face member cuts faces, and where that came from (see the module doc)."""
    config = model.config.get("face_crop") if isinstance(model.config, dict) else None
    if payload is not None and payload.get("face_crop"):
        settings = _crop_settings(payload["face_crop"], where)
        source = f"{where} (the crop cache it was trained on)"
    elif config:
        settings = _crop_settings(config, f"{where}: detector config")
        source = (
            f"the detector config's face_crop ({where} does not say how its training faces were cut)"
            if payload is not None
            else f"the detector config's face_crop ({where})"
        )
    else:
        settings = DEFAULT_CROP
        source = f"deepsift's default ({where} and its config do not say)"
    changed = {k: v for k, v in (face_overrides or {}).items() if v is not None}
    if changed:
        settings = _crop_settings({**settings.to_dict(), **changed}, "--face-align/--face-margin")
        source += (
            " with " + ", ".join(f"{k}={v}" for k, v in changed.items()) + " from the command line"
        )
    return settings, source


def build_member(
    *,
    detector: str | None = None,
    weights: str | None = None,
    checkpoint: str | None = None,
    overrides: dict[str, Any] | None = None,
    faces: str = "auto",
    label: str | None = None,
    weight: float = 1.0,
    face_overrides: dict[str, Any] | None = None,
) -> Member:
    from detectors.factory import load_checkpoint_detector, load_detector

    if checkpoint:
        if detector or weights or overrides:
            raise UserError(
                "a checkpoint fixes its detector and weights; drop --detector, --weights and --set"
            )
        model, payload = load_checkpoint_detector(checkpoint)
        name = payload["detector"].get("name") or Path(checkpoint).stem
        identity = {"checkpoint": str(checkpoint), "detector": name}
        where = f"checkpoint {checkpoint}"
    elif detector:
        if weights and not Path(weights).is_file():
            raise UserError(f"--weights {weights} does not exist")
        model = load_detector(detector, weights=weights, **(overrides or {}))
        if not weights and not (overrides or {}).get("weights"):
            log.warning(
                "%s has no weights (--weights or a weights: entry): it is untrained and its "
                "scores mean nothing; pass a checkpoint or official weights to act on them",
                detector,
            )
        name = detector
        identity = {"detector": detector, "weights": weights, "overrides": overrides or {}}
        payload, where = None, f"configs/detector/{detector}.yaml"
    else:
        raise UserError("pass a detector: --checkpoint PATH, --detector NAME or --ensemble SPEC")
    member = Member(label or name, model, _face_mode(model, faces), identity, float(weight))
    if payload is not None and payload.get("window_stride"):
        member.frame_step = int(payload["window_stride"])
    if getattr(model, "needs_mouth", False) and not member.faces:
        raise UserError(
            f"{name} reads mouth crops, cut from the landmarks of tracked faces: drop --faces off"
        )
    if member.faces:
        member.face_crop, member.face_crop_from = resolve_face_crop(
            model, payload, where, face_overrides
        )
        # scores of other crops are not comparable: a calibration must match the crops too
        identity["face_crop"] = {
            k: v for k, v in member.face_crop.to_dict().items() if k != "detector"
        }
    return member


def parse_ensemble(spec: str, faces: str = "auto") -> tuple[list[dict[str, Any]], str | None]:
    """Member keyword arguments (for :func:`build_member`) and the combine rule, from SPEC."""
    from detectors.factory import CHECKPOINT_SUFFIXES, list_detectors

    path = Path(spec)
    if spec.lower().endswith((".yaml", ".yml")):
        if not path.is_file():
            raise UserError(f"--ensemble {spec} does not exist")
        return _parse_yaml(path, faces)
    names = set(list_detectors())
    members = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name, _, weights = entry.partition(":")
        if name in names:
            members.append({"detector": name, "weights": weights or None, "faces": faces})
        elif entry.endswith(CHECKPOINT_SUFFIXES) or Path(entry).is_file():
            members.append({"checkpoint": entry, "faces": faces})
        else:
            raise UserError(
                f"--ensemble entry {entry!r} is neither NAME[:WEIGHTS] (names: {', '.join(sorted(names))}) "
                "nor a checkpoint file"
            )
    if not members:
        raise UserError("--ensemble is empty")
    return members, None


def _parse_yaml(path: Path, faces: str) -> tuple[list[dict[str, Any]], str | None]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--ensemble {path} is not readable YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("members"), list):
        raise UserError(f"--ensemble {path} must hold a 'members' list (see score.py --help)")
    members = []
    allowed = {"detector", "weights", "checkpoint", "set", "faces", "label", "weight"}
    for i, entry in enumerate(data["members"]):
        if not isinstance(entry, dict) or set(entry) - allowed:
            raise UserError(
                f"--ensemble {path}: member {i} must be a mapping with keys among {sorted(allowed)}"
            )
        kwargs = {k: v for k, v in entry.items() if k != "set"}
        kwargs["overrides"] = entry.get("set") or None
        kwargs.setdefault("faces", faces)
        for key in ("weights", "checkpoint"):
            if kwargs.get(key) and not Path(kwargs[key]).is_absolute():
                kwargs[key] = str(path.parent / kwargs[key])
        members.append(kwargs)
    return members, data.get("combine")


def load_ensemble(
    *,
    checkpoint: str | None = None,
    detector: str | None = None,
    weights: str | None = None,
    overrides: list[str] | None = None,
    ensemble: str | None = None,
    faces: str = "auto",
    combine: str | None = None,
    face_overrides: dict[str, Any] | None = None,
) -> Ensemble:
    """The model of a ``score.py`` command line (see the module docstring).

    ``face_overrides``: ``align`` / ``margin`` values that replace every face member's own.
    """
    if ensemble and (checkpoint or detector):
        raise UserError("pass either --ensemble or --checkpoint / --detector, not both")
    if ensemble:
        specs, file_combine = parse_ensemble(ensemble, faces)
        members = [build_member(**spec, face_overrides=face_overrides) for spec in specs]
        combine = combine or file_combine or "mean"
    else:
        members = [
            build_member(
                detector=detector,
                weights=weights,
                checkpoint=checkpoint,
                overrides=parse_overrides(overrides),
                faces=faces,
                face_overrides=face_overrides,
            )
        ]
        combine = combine or "mean"
    clips = [m.label for m in members if getattr(m.detector, "input_kind", "image") == "clip"]
    if clips and len(members) > 1:
        raise UserError(
            f"{clips[0]} is a clip detector: it scores videos clip by clip, alone; score it "
            "in its own run (no --ensemble)"
        )
    if combine not in COMBINE:
        raise UserError(f"--combine {combine!r}: use one of {', '.join(COMBINE)}")
    seen: dict[str, int] = {}
    for member in members:  # unique labels: npr, npr_2, ...
        count = seen.get(member.label, 0) + 1
        seen[member.label] = count
        if count > 1:
            member.label = f"{member.label}_{count}"
    return Ensemble(members, combine)


def aggregate(values: list[float], how: str) -> float | None:
    if not values:
        return None
    if how == "median":
        return float(np.median(values))
    if how == "max":
        return float(np.max(values))
    return float(np.mean(values))

"""Build detectors from their configs, checkpoints and official weight files.

Detector configs live in ``configs/detector/<name>.yaml`` and are instantiated
with Hydra's ``_target_`` mechanism; this module is the Python door to the same
configs, used by ``load_detector``, ``evaluate.py`` and ``score.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from deepsift.core.checkpoint import check_targets, read_checkpoint
from deepsift.core.configs import CONFIG_DIR, config_names, instantiate
from deepsift.core.errors import UserError
from detectors.base import Detector

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def list_detectors() -> list[str]:
    """Names accepted by ``load_detector`` and ``detector=`` (the files in configs/detector)."""
    return config_names("detector")


def detector_config(name: str, **overrides: Any) -> DictConfig:
    """The config of detector ``name`` with keyword overrides (``backbone="resnet50"``)."""
    path = CONFIG_DIR / "detector" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown detector {name!r}; valid names: {', '.join(list_detectors())}")
    config = OmegaConf.load(path)
    if overrides:
        config = OmegaConf.merge(config, OmegaConf.create(overrides))
    return config


def build_detector(config: Mapping[str, Any] | DictConfig, name: str | None = None) -> Detector:
    """Instantiate a detector config.

    The config is resolved and then checked by :func:`deepsift.core.checkpoint.check_targets`
    before anything is built: the top ``_target_`` must be a detector class of
    ``configs/detector``, nested ones an allowed optimiser, scheduler or factory.

    A ``weights`` entry (official or third-party weights file) is not a constructor
    argument: it is loaded after construction with the detector's ``load_weights``.
    """
    plain = OmegaConf.to_container(
        OmegaConf.create(config) if not isinstance(config, DictConfig) else config, resolve=True
    )
    check_targets(plain, f"detector config {name or ''}".strip())
    weights = plain.pop("weights", None)
    # what the detector reads: "image" (whole pictures) or "face" (face crops; score.py
    # --faces auto crops faces for these); not a constructor argument
    input_kind = plain.pop("input", None)
    # how score.py cuts faces for it when no checkpoint says (the protocol of the weights
    # the config loads: align, margin, size); plain data, not a constructor argument
    face_crop = plain.pop("face_crop", None)
    detector = instantiate(plain, _convert_="all")
    if not isinstance(detector, Detector):
        raise UserError(
            f"detector config {name!r} builds a {type(detector).__name__}, not a deepsift Detector"
        )
    detector.config_name = name
    detector.config = dict(plain)
    if input_kind is not None:
        detector.config["input"] = input_kind
    if face_crop is not None:
        detector.config["face_crop"] = face_crop
    if weights:
        detector.load_weights(weights)
    # after the file's protocol: a user's field is judged against the backend that results
    detector.preprocessing.validate()
    return detector


def load_checkpoint_detector(
    path: str | Path, expected_name: str | None = None
) -> tuple[Detector, dict[str, Any]]:
    """Rebuild the detector a deepsift checkpoint was trained as, with its weights."""
    from deepsift.core.checkpoint import load_state_dict_strict

    payload = read_checkpoint(path)
    info = payload["detector"]
    if expected_name and info.get("name") and info["name"] != expected_name:
        raise UserError(
            f"checkpoint {path} was trained as detector {info['name']!r}, not {expected_name!r}; "
            f"drop detector={expected_name} or pass a checkpoint of that detector"
        )
    detector = build_detector(info["config"], info.get("name"))
    load_state_dict_strict(detector, payload["state_dict"], f"checkpoint {path}")
    return detector, payload


def load_detector(
    name_or_path: str | Path, weights: str | Path | None = None, **overrides: Any
) -> Detector:
    """A ready-to-use detector.

    - ``load_detector("durall")``: the configured detector, untrained;
    - ``load_detector("runs/.../best.pt")``: a trained deepsift checkpoint;
    - ``load_detector("meso4", weights="Meso4_DF.h5")``: official weights, where the
      detector supports their format (its ``load_weights``).

    Keyword arguments override config fields (``backbone="resnet50"``).
    """
    text = str(name_or_path)
    looks_like_file = text.endswith(CHECKPOINT_SUFFIXES) or "/" in text or Path(text).is_file()
    if looks_like_file:
        if weights is not None or overrides:
            raise UserError(
                "a checkpoint already fixes the detector and its weights; pass weights= and overrides only with a detector name"
            )
        detector, _ = load_checkpoint_detector(text)
        return detector
    if weights is not None:
        overrides["weights"] = str(weights)
    return build_detector(detector_config(text, **overrides), text)

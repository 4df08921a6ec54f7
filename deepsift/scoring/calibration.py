"""Score bands and the thresholds behind them, fitted on a labelled validation set.

Four bands, from the probability of synthetic ``s`` and three thresholds
``a <= l <= t``:

========================  ============================
``authentic``             ``s < a``
``uncertain``             ``a <= s < l``
``likely_synthetic``      ``l <= s < t``
``synthetic``             ``s >= t``
========================  ============================

``score.py --calibrate VAL --out calib.json`` fits them with scikit-learn's
``roc_curve`` on the detector's scores of labelled images (1 = synthetic):

* ``t`` (synthetic): the lowest threshold whose false-positive rate on the reals
  is at most ``--fpr-synthetic`` (default 0.1%), i.e. the most synthetic images
  caught while at most that share of reals are called synthetic;
* ``l`` (likely synthetic): the same at ``--fpr-likely`` (default 1%);
* ``a`` (authentic): the highest threshold that still catches at least
  ``1 - --fnr-authentic`` of the synthetic images (default: 95%), so at most 5%
  of synthetic images fall in ``authentic``; clipped to ``l`` when it is above it.

With fewer than ``1 / fpr`` reals, no non-zero rate below ``fpr`` exists: the
threshold is then the lowest one that calls no real synthetic (the lowest
synthetic score above every real score, or just above the highest real score
when there is none) and the file says so in ``warnings``. Thresholds hold only for the detector, preprocessing and kind of
data they were fitted on; the file records the detector's identity and scoring
refuses a calibration made for another detector.

Without a calibration file the documented defaults below are used and every
record says ``calibrated: false``: they are not error rates of anything.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsift.core.errors import UserError

FORMAT = "deepsift-calibration/1"
BANDS = ("authentic", "uncertain", "likely_synthetic", "synthetic")


@dataclass(frozen=True)
class Bands:
    authentic_below: float = 0.2
    likely_synthetic_from: float = 0.5
    synthetic_from: float = 0.9
    calibrated: bool = False
    source: str | None = None
    detector: Any = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def band(self, score: float | None) -> str | None:
        if score is None or (isinstance(score, float) and math.isnan(score)):
            return None
        if score >= self.synthetic_from:
            return "synthetic"
        if score >= self.likely_synthetic_from:
            return "likely_synthetic"
        if score >= self.authentic_below:
            return "uncertain"
        return "authentic"

    def thresholds(self) -> dict[str, float]:
        return {
            "authentic_below": self.authentic_below,
            "likely_synthetic_from": self.likely_synthetic_from,
            "synthetic_from": self.synthetic_from,
        }


#: used when no calibration file is given (records say calibrated: false)
DEFAULT_BANDS = Bands()


def load_calibration(path: str | Path, detector_id: Any = None) -> Bands:
    """Bands from a file written by ``--calibrate``; refuses one made for another detector."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--calibration {path} does not exist; fit one with --calibrate") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--calibration {path} is not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"--calibration {path} is not a deepsift calibration file ({FORMAT})")
    if detector_id is not None and data.get("detector") != detector_id:
        raise UserError(
            f"--calibration {path} was fitted for detector {data.get('detector')!r}, not for "
            f"{detector_id!r}; thresholds do not transfer between detectors: refit with --calibrate"
        )
    t = data["thresholds"]
    return Bands(
        float(t["authentic_below"]),
        float(t["likely_synthetic_from"]),
        float(t["synthetic_from"]),
        calibrated=True,
        source=str(path),
        detector=data.get("detector"),
    )


def _threshold_at_fpr(fpr: np.ndarray, thresholds: np.ndarray, target: float, top: float) -> float:
    index = int(np.flatnonzero(fpr <= target + 1e-12).max())
    value = float(thresholds[index])
    return value if math.isfinite(value) else top


def fit_thresholds(
    labels: np.ndarray,
    scores: np.ndarray,
    fpr_likely: float = 0.01,
    fpr_synthetic: float = 0.001,
    fnr_authentic: float = 0.05,
) -> dict[str, Any]:
    """Thresholds and what they achieve on this set (see the module docstring)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    for name, rate in (
        ("--fpr-likely", fpr_likely),
        ("--fpr-synthetic", fpr_synthetic),
        ("--fnr-authentic", fnr_authentic),
    ):
        if not 0.0 < rate < 1.0:
            raise UserError(f"{name} must be a rate in (0, 1), not {rate}")
    if fpr_synthetic > fpr_likely:
        raise UserError(
            "--fpr-synthetic must not exceed --fpr-likely (synthetic is the stricter band)"
        )
    reals, fakes = scores[labels == 0], scores[labels == 1]
    if len(reals) == 0 or len(fakes) == 0:
        raise UserError(
            f"calibration needs scored real and synthetic images; got {len(reals)} real and "
            f"{len(fakes)} synthetic"
        )
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    top = float(np.nextafter(reals.max(), np.inf))
    synthetic = _threshold_at_fpr(fpr, thresholds, fpr_synthetic, top)
    likely = _threshold_at_fpr(fpr, thresholds, fpr_likely, top)
    index = int(np.flatnonzero(tpr >= 1.0 - fnr_authentic - 1e-12).min())
    authentic = min(float(thresholds[index]), likely)
    warnings = [
        f"{len(reals)} real images cannot resolve a false-positive rate of {rate:g} "
        f"(needs at least {math.ceil(1 / rate)}): the threshold for {band} is conservative"
        for band, rate in (("likely_synthetic", fpr_likely), ("synthetic", fpr_synthetic))
        if len(reals) < math.ceil(1 / rate)
    ]

    def rates(threshold: float) -> dict[str, float]:
        return {
            "threshold": threshold,
            "fpr": float(np.mean(reals >= threshold)),
            "tpr": float(np.mean(fakes >= threshold)),
        }

    return {
        "thresholds": {
            "authentic_below": authentic,
            "likely_synthetic_from": likely,
            "synthetic_from": synthetic,
        },
        "targets": {
            "fpr_likely_synthetic": fpr_likely,
            "fpr_synthetic": fpr_synthetic,
            "fnr_authentic": fnr_authentic,
        },
        "achieved": {
            "authentic_below": {**rates(authentic), "fnr": float(np.mean(fakes < authentic))},
            "likely_synthetic_from": rates(likely),
            "synthetic_from": rates(synthetic),
        },
        "n_real": len(reals),
        "n_synthetic": len(fakes),
        "auc": float(roc_auc_score(labels, scores)),
        "warnings": warnings,
    }


def write_calibration(
    path: str | Path, fit: dict[str, Any], detector_id: Any, **extra: Any
) -> None:
    payload = {
        "format": FORMAT,
        "detector": detector_id,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fit,
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def labelled_paths(source: str | Path) -> list[tuple[str, int]]:
    """``(path, label)`` pairs of a labelled validation set (1 = synthetic).

    ``source`` is a CSV or JSONL manifest (``path,label[,split]``: rows of split
    ``val``, or without a split, as ``data=manifest`` reads them), or a folder
    whose images sit under ``0_real`` / ``1_fake`` (or ``real`` / ``fake``)
    folders at any depth; a folder with a ``val`` subfolder uses that subfolder.
    """
    import os

    source = Path(source)
    if source.is_file():
        from datasets.manifest import Manifest

        manifest = Manifest(str(source), default_split="val", check_files=False)
        return [(r.path, int(r.label)) for r in manifest.records("val")]
    if not source.is_dir():
        raise UserError(f"--calibrate {source} is neither a manifest file nor a folder")
    if (source / "val").is_dir():
        source = source / "val"
    names = {"0_real": 0, "real": 0, "1_fake": 1, "fake": 1}
    out = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        parts = Path(root).relative_to(source).parts
        labels = [names[p.lower()] for p in parts if p.lower() in names]
        if labels:
            out.extend((os.path.join(root, name), labels[-1]) for name in sorted(files))
    if not out:
        raise UserError(
            f"--calibrate {source}: no images under 0_real/1_fake (or real/fake) folders; "
            "pass such a folder or a CSV/JSONL manifest with path,label"
        )
    return out

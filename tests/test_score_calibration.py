"""Bands and their calibration: thresholds at chosen error rates, checked against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsift.app.score_cli import main
from deepsift.core.errors import UserError
from deepsift.scoring.calibration import (
    DEFAULT_BANDS,
    Bands,
    fit_thresholds,
    labelled_paths,
    load_calibration,
    write_calibration,
)
from tests.scoring_fixtures import (
    TINY,
    noise,
    one_thread,  # noqa: F401 - a fixture
    read_jsonl,
)


def brute_force(
    labels: np.ndarray, scores: np.ndarray, fpr: float, fnr: float
) -> tuple[float, float]:
    """The definitions of the docstring, by trying every score as a threshold."""
    reals, fakes = np.sort(scores[labels == 0]), np.sort(scores[labels == 1])
    candidates = np.unique(scores)
    reals_above = len(reals) - np.searchsorted(reals, candidates, side="left")  # #(real >= t)
    fakes_above = len(fakes) - np.searchsorted(fakes, candidates, side="left")
    at_fpr = candidates[reals_above <= fpr * len(reals) + 1e-9].min()
    authentic = candidates[fakes_above >= (1 - fnr) * len(fakes) - 1e-9].max()
    return float(at_fpr), float(min(authentic, at_fpr))


def test_thresholds_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(3000, int), np.ones(1500, int)]
    scores = np.r_[rng.beta(2, 5, 3000), rng.beta(5, 2, 1500)].round(4)  # with ties
    fit = fit_thresholds(labels, scores, fpr_likely=0.01, fpr_synthetic=0.001, fnr_authentic=0.05)
    t = fit["thresholds"]
    likely, authentic = brute_force(labels, scores, 0.01, 0.05)
    synthetic, _ = brute_force(labels, scores, 0.001, 0.05)
    assert t["likely_synthetic_from"] == likely
    assert t["synthetic_from"] == synthetic
    assert t["authentic_below"] == authentic
    achieved = fit["achieved"]
    assert achieved["likely_synthetic_from"]["fpr"] <= 0.01
    assert achieved["synthetic_from"]["fpr"] <= 0.001
    assert achieved["authentic_below"]["fnr"] <= 0.05
    assert fit["n_real"] == 3000 and fit["warnings"] == []
    assert t["authentic_below"] <= t["likely_synthetic_from"] <= t["synthetic_from"]


def test_too_few_reals_are_flagged_and_separable_sets_collapse_the_uncertain_band() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    scores = np.r_[np.linspace(0.0, 0.4, 50), np.linspace(0.6, 1.0, 50)]
    fit = fit_thresholds(labels, scores)
    assert len(fit["warnings"]) == 2 and "cannot resolve" in fit["warnings"][0]
    t = fit["thresholds"]
    assert (
        t["synthetic_from"] == t["likely_synthetic_from"] == pytest.approx(0.6)
    )  # above every real
    assert t["authentic_below"] <= t["likely_synthetic_from"]
    with pytest.raises(UserError, match="real and synthetic"):
        fit_thresholds(np.zeros(5, int), np.linspace(0, 1, 5))
    with pytest.raises(UserError, match="must not exceed"):
        fit_thresholds(labels, scores, fpr_likely=0.001, fpr_synthetic=0.01)


def test_bands() -> None:
    bands = Bands(0.3, 0.6, 0.8, calibrated=True)
    assert [bands.band(s) for s in (0.0, 0.3, 0.59, 0.6, 0.8, 1.0)] == [
        "authentic",
        "uncertain",
        "uncertain",
        "likely_synthetic",
        "synthetic",
        "synthetic",
    ]
    assert bands.band(None) is None and bands.band(float("nan")) is None
    assert DEFAULT_BANDS.thresholds() == {
        "authentic_below": 0.2,
        "likely_synthetic_from": 0.5,
        "synthetic_from": 0.9,
    }
    assert not DEFAULT_BANDS.calibrated


def test_a_calibration_only_serves_its_own_detector(tmp_path: Path) -> None:
    fit = fit_thresholds(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.9]))
    write_calibration(tmp_path / "c.json", fit, {"detector": "npr", "weights": {"sha256_16": "ab"}})
    bands = load_calibration(
        tmp_path / "c.json", {"detector": "npr", "weights": {"sha256_16": "ab"}}
    )
    assert bands.calibrated and bands.source == str(tmp_path / "c.json")
    with pytest.raises(UserError, match="fitted for detector"):
        load_calibration(tmp_path / "c.json", {"detector": "npr", "weights": {"sha256_16": "cd"}})
    with pytest.raises(UserError, match="does not exist"):
        load_calibration(tmp_path / "none.json")


def test_labelled_sets(tmp_path: Path) -> None:
    for name in (
        "val/0_real/a.png",
        "val/1_fake/gen/b.png",
        "train/0_real/c.png",
        "val/readme.txt",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    pairs = labelled_paths(tmp_path)
    assert [(Path(p).relative_to(tmp_path).as_posix(), y) for p, y in pairs] == [
        ("val/0_real/a.png", 0),
        ("val/1_fake/gen/b.png", 1),
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,split\nval/0_real/a.png,real,val\ntrain/0_real/c.png,0,train\nx.png,fake,\n",
        encoding="utf-8",
    )
    assert [(Path(p).name, y) for p, y in labelled_paths(manifest)] == [("a.png", 0), ("x.png", 1)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="0_real/1_fake"):
        labelled_paths(tmp_path / "empty")


@pytest.mark.usefixtures("one_thread")
def test_calibrate_then_score_with_the_file(tmp_path: Path) -> None:
    for label in ("0_real", "1_fake"):
        (tmp_path / "val" / label).mkdir(parents=True)
        for i in range(6):
            seed = i + (100 if label == "1_fake" else 0)
            Image.fromarray(noise(seed, 36, 36)).save(tmp_path / "val" / label / f"{i}.png")
    calib = tmp_path / "calib.json"
    fit = main(
        [
            "--calibrate",
            str(tmp_path / "val"),
            "--out",
            str(calib),
            *TINY,
            "--workers",
            "0",
            "--quiet",
        ]
    )
    data = json.loads(calib.read_text(encoding="utf-8"))
    assert data["format"] == "deepsift-calibration/1"
    assert data["n_real"] == 6 and data["n_synthetic"] == 6 and data["n_unscored"] == 0
    assert data["thresholds"] == fit["thresholds"]
    assert data["detector"]["detector"] == "timm_classifier"
    out = tmp_path / "r.jsonl"
    main(
        [
            str(tmp_path / "val"),
            "--out",
            str(out),
            *TINY,
            "--workers",
            "0",
            "--quiet",
            "--calibration",
            str(calib),
        ]
    )
    bands = load_calibration(calib)
    for record in read_jsonl(out):
        assert record["calibrated"] is True and record["band"] == bands.band(record["score"])
    summary = json.loads((tmp_path / "r.summary.json").read_text(encoding="utf-8"))
    assert summary["calibrated"] is True and summary["thresholds"] == data["thresholds"]
    with pytest.raises(SystemExit):  # a calibration made for another detector is refused
        main(
            [
                str(tmp_path / "val"),
                "--out",
                str(tmp_path / "x.jsonl"),
                "--detector",
                "meso4",
                "--calibration",
                str(calib),
            ]
        )

"""deepsift.engine.metrics against hand-computed values."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest

from deepsift.engine.metrics import (
    METRIC_KEYS,
    MetricWarning,
    aggregate_by_video,
    binary_metrics,
    calibration_bins,
    compute_metrics,
    flatten_metrics,
    metrics_table,
    to_jsonable,
    write_metrics_csv,
)

RANKING = ("auc", "ap", "eer", "tpr_at_fpr_1pct", "tpr_at_fpr_0.1pct")


def metrics_no_warning(labels, probs, **kwargs) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricWarning)
        return binary_metrics(labels, probs, **kwargs)


def test_keys_and_types() -> None:
    m = metrics_no_warning([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.6])
    assert tuple(m) == METRIC_KEYS
    assert all(type(v) is float for k, v in m.items() if not k.startswith("n"))
    assert (m["n"], m["n_real"], m["n_fake"]) == (4, 2, 2)
    assert all(type(m[k]) is int for k in ("n", "n_real", "n_fake"))


def test_perfect_separation() -> None:
    m = metrics_no_warning([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8])
    assert m["auc"] == 1.0
    assert m["ap"] == 1.0
    assert m["eer"] == 0.0
    assert m["acc"] == m["acc_real"] == m["acc_fake"] == 1.0
    assert m["tpr_at_fpr_1pct"] == m["tpr_at_fpr_0.1pct"] == 1.0


def test_fully_reversed() -> None:
    m = metrics_no_warning([1, 1, 1, 0, 0], [0.1, 0.2, 0.3, 0.7, 0.8])
    assert m["auc"] == 0.0
    assert m["eer"] == 1.0
    assert m["acc"] == m["acc_real"] == m["acc_fake"] == 0.0
    assert m["tpr_at_fpr_1pct"] == 0.0


def test_auc_with_ties_matches_mann_whitney_by_hand() -> None:
    # reals 0.1 0.4 0.6, fakes 0.35 0.4 0.8. Pairs (fake beats real = 1, tie = 1/2):
    # 0.35: beats 0.1 -> 1;  0.4: beats 0.1, ties 0.4 -> 1.5;  0.8: beats all -> 3.  5.5 / 9.
    labels = [0, 0, 1, 1, 0, 1]
    probs = [0.1, 0.4, 0.4, 0.8, 0.6, 0.35]
    assert metrics_no_warning(labels, probs)["auc"] == pytest.approx(5.5 / 9, abs=1e-12)


def test_eer_interpolates_between_roc_points() -> None:
    # reals 0.1 0.5, fakes 0.5 0.9: ROC points (FPR, TPR) (0, 0), (0, .5), (.5, 1), (1, 1).
    # On the segment (0, .5) -> (.5, 1): FPR = t/2, FNR = 1/2 - t/2, equal at t = 1/2 -> EER 1/4.
    m = metrics_no_warning([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])
    assert m["eer"] == pytest.approx(0.25, abs=1e-12)


def test_eer_at_a_roc_point() -> None:
    # reals .2 .6, fakes .4 .8: ROC (0, .5) then (.5, .5) where FNR = FPR = .5 exactly.
    m = metrics_no_warning([0, 0, 1, 1], [0.2, 0.6, 0.4, 0.8])
    assert m["eer"] == pytest.approx(0.5, abs=1e-12)
    assert m["auc"] == pytest.approx(0.75)


def test_tpr_at_fixed_fpr_is_the_conservative_roc_point() -> None:
    # 100 reals: 98 below 0.5, one at 0.9, one at 0.7. 10 fakes.
    # Descending: .95 F | .9 R (FPR .01) | .85 .8 .75 F (TPR .4) | .7 R (FPR .02) | ...
    reals = [*np.linspace(0.0, 0.45, 98), 0.9, 0.7]
    fakes = [0.95, 0.85, 0.8, 0.75, 0.6, 0.55, 0.5, 0.3, 0.2, 0.1]
    labels = [0] * len(reals) + [1] * len(fakes)
    m = metrics_no_warning(labels, reals + fakes)
    assert m["tpr_at_fpr_1pct"] == pytest.approx(0.4)  # highest TPR at FPR = 1%
    assert m["tpr_at_fpr_0.1pct"] == pytest.approx(0.1)  # only FPR = 0 qualifies
    # A tie makes a sloped ROC segment (0, .5) -> (.02, 1): no interpolation to .75 at FPR 1%.
    labels = [0] * 50 + [1, 1]
    m = metrics_no_warning(labels, [*np.linspace(0.0, 0.5, 49), 0.9, 0.95, 0.9])
    assert m["tpr_at_fpr_1pct"] == 0.5


def test_ece_by_hand() -> None:
    # 2 bins. [0, .5): probs .1 .3 (mean .2), fakes 1/2 -> |.2 - .5| = .3, weight 2/5.
    # [.5, 1]: probs .6 .8 .9 (mean 23/30), fakes 2/3 -> 0.1, weight 3/5. ECE = .12 + .06.
    m = metrics_no_warning([0, 1, 1, 0, 1], [0.1, 0.3, 0.6, 0.8, 0.9], ece_bins=2)
    assert m["ece"] == pytest.approx(0.18, abs=1e-12)
    assert metrics_no_warning([0, 1], [0.0, 1.0])["ece"] == 0.0


def test_calibration_bins_edges() -> None:
    mean_prob, frac_fake, count = calibration_bins([0, 1, 1, 1], [0.0, 0.5, 1.0, 0.99], bins=2)
    assert count.tolist() == [1, 3]  # 0.5 opens the upper bin, 1.0 falls in the last one
    assert mean_prob[0] == 0.0
    assert frac_fake.tolist() == [0.0, 1.0]
    _, frac_fake, count = calibration_bins([1], [0.95], bins=4)
    assert count.tolist() == [0, 0, 0, 1]
    assert np.isnan(frac_fake[:3]).all()


def test_accuracy_per_class_and_threshold() -> None:
    labels = [0, 0, 0, 0, 1, 1]
    probs = [0.1, 0.5, 0.6, 0.2, 0.5, 0.4]
    m = metrics_no_warning(labels, probs)
    # >= 0.5 is fake: reals .5 .6 wrong, fake .4 wrong.
    assert m["acc_real"] == pytest.approx(2 / 4)
    assert m["acc_fake"] == pytest.approx(1 / 2)
    assert m["acc"] == pytest.approx(3 / 6)
    m = metrics_no_warning(labels, probs, threshold=0.65)
    assert (m["acc_real"], m["acc_fake"]) == (1.0, 0.0)


@pytest.mark.parametrize(("label", "absent"), [(0, "acc_fake"), (1, "acc_real")])
def test_single_class_warns_once_and_returns_nan(label: int, absent: str) -> None:
    with pytest.warns(MetricWarning) as record:
        m = binary_metrics([label] * 3, [0.2, 0.7, 0.9])
    assert len(record) == 1
    message = str(record[0].message)
    assert "auc" in message and ("only fakes" if label else "only reals") in message
    assert all(math.isnan(m[k]) for k in RANKING)
    assert math.isnan(m[absent])
    present = "acc_real" if label == 0 else "acc_fake"
    assert m[present] == pytest.approx(1 / 3 if label == 0 else 2 / 3)
    assert m["acc"] == m[present]
    assert not math.isnan(m["ece"])
    assert m["n"] == 3


def test_empty_input() -> None:
    with pytest.warns(MetricWarning, match="empty"):
        m = binary_metrics([], [])
    assert m["n"] == m["n_real"] == m["n_fake"] == 0
    assert all(math.isnan(v) for k, v in m.items() if not k.startswith("n"))


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        ([0, 1], [0.2, float("nan")], "NaN"),
        ([0, 1], [0.2, 1.5], r"\[0, 1\]"),
        ([0, 1], [-0.1, 0.5], r"\[0, 1\]"),
        ([0, 1], [0.2, float("inf")], r"\[0, 1\]"),
        ([0, 2], [0.2, 0.5], "labels must be 0"),
        ([0, -1], [0.2, 0.5], "labels must be 0"),
        ([0, 0.5], [0.2, 0.5], "labels must be 0"),
        ([0, 1, 1], [0.2, 0.5], "length"),
        ([[0, 1]], [[0.2, 0.5]], "1-D"),
        (["real", "fake"], [0.2, 0.5], "labels"),
    ],
)
def test_invalid_inputs_raise(labels, probs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        binary_metrics(labels, probs)


def test_invalid_options_raise() -> None:
    with pytest.raises(ValueError, match="ece_bins"):
        binary_metrics([0, 1], [0.1, 0.9], ece_bins=0)
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics([0, 1], [0.1, 0.9], threshold=float("nan"))


def test_aggregate_by_video() -> None:
    labels = [1, 0, 1, 0, 1, 0]
    probs = [0.2, 0.1, 0.4, 0.3, 0.9, 0.8]
    videos = ["b", "a", "b", "a", "b", "c"]
    y, p, ids = aggregate_by_video(labels, probs, videos)
    assert ids == ["b", "a", "c"]  # first-appearance order
    assert y.tolist() == [1, 0, 0]
    assert p == pytest.approx([0.5, 0.2, 0.8])
    _, p, _ = aggregate_by_video(labels, probs, videos, how="median")
    assert p == pytest.approx([0.4, 0.2, 0.8])
    _, p, _ = aggregate_by_video(labels, probs, videos, how="max")
    assert p == pytest.approx([0.9, 0.3, 0.8])


def test_aggregate_by_video_errors() -> None:
    with pytest.raises(ValueError, match=r"'v2'.*both real and fake"):
        aggregate_by_video([0, 0, 1], [0.1, 0.2, 0.3], ["v1", "v2", "v2"])
    with pytest.raises(ValueError, match="no video id"):
        aggregate_by_video([0, 0], [0.1, 0.2], ["v1", None])
    with pytest.raises(ValueError, match="mean, median, max"):
        aggregate_by_video([0], [0.1], ["v"], how="min")
    with pytest.raises(ValueError, match="entries"):
        aggregate_by_video([0, 1], [0.1, 0.2], ["v"])


def test_compute_metrics_levels_and_generators() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.6, 0.9, 0.8, 0.3, 0.7, 0.4])
    generators = ["real", None, "real", "gan", "gan", "diff", "diff", "diff"]
    videos = ["r1", "r1", "r2", "g1", "g1", "d1", "d1", "d2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricWarning)
        out = compute_metrics(labels, probs, videos=videos, generators=generators)
    assert set(out) == {"frame", "video", "by_generator"}
    assert out["frame"] == binary_metrics(labels, probs)
    # Videos: r1 mean .15, r2 .6 (real); g1 .85, d1 .5, d2 .4 (fake).
    assert (out["video"]["n"], out["video"]["n_real"], out["video"]["n_fake"]) == (5, 2, 3)
    assert out["video"]["auc"] == pytest.approx(4 / 6)
    # Each generator: all 3 reals + its own fakes.
    assert list(out["by_generator"]) == ["diff", "gan"]
    gan, diff = out["by_generator"]["gan"], out["by_generator"]["diff"]
    assert (gan["n"], gan["n_real"], gan["n_fake"]) == (5, 3, 2)
    assert (diff["n"], diff["n_real"], diff["n_fake"]) == (6, 3, 3)
    assert gan["auc"] == 1.0
    # diff fakes .3 .7 .4 vs reals .1 .2 .6: wins 2 + 3 + 2 = 7 of 9.
    assert diff["auc"] == pytest.approx(7 / 9)


def test_compute_metrics_optional_parts() -> None:
    labels, probs = [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.7]
    out = compute_metrics(labels, probs)
    assert "video" not in out and out["by_generator"] == {}
    assert "video" not in compute_metrics(labels, probs, videos=[None] * 4)
    # One fake generator only: its entry would repeat "frame".
    assert (
        compute_metrics(labels, probs, generators=["real", "g", "real", "g"])["by_generator"] == {}
    )
    # Stills (video None) are left out of video-level metrics.
    out = compute_metrics(labels, probs, videos=["a", "b", None, "b"], video_aggregation="max")
    assert out["video"]["n"] == 2
    with pytest.raises(ValueError, match="median"):
        compute_metrics(labels, probs, video_aggregation="mode")
    with pytest.raises(ValueError, match="labelled fake"):
        compute_metrics(labels, probs, generators=["real", "real", "real", "g"])


def test_compute_metrics_single_class_warns_once() -> None:
    with pytest.warns(MetricWarning) as record:
        out = compute_metrics(
            [1, 1, 1], [0.2, 0.6, 0.9], videos=["a", "a", "b"], generators=["x", "y", "y"]
        )
    assert len(record) == 1
    assert math.isnan(out["frame"]["auc"]) and math.isnan(out["video"]["auc"])
    assert set(out["by_generator"]) == {"x", "y"}
    assert math.isnan(out["by_generator"]["y"]["auc"])
    assert out["by_generator"]["y"]["acc_fake"] == pytest.approx(1.0)


def test_flatten_table_and_csv(tmp_path) -> None:
    labels, probs = [0, 1, 0, 1, 1], [0.1, 0.9, 0.2, 0.7, 0.15]
    out = compute_metrics(
        labels, probs, videos=list("abcde"), generators=["real", "g1", "real", "g2", "g2"]
    )
    out["n_skipped"] = 0
    rows = flatten_metrics(out)
    assert list(rows) == ["frame", "video", "frame/g1", "frame/g2"]
    with pytest.warns(MetricWarning):
        rows["empty"] = binary_metrics([], [])
    table = metrics_table(rows, keys=("auc", "acc_real", "n"))
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["", "auc", "acc_real", "n"]
    assert set(lines[1].replace("|", "").replace(" ", "")) == {"-", ":"}
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]
    }
    assert cells["frame"] == [f"{rows['frame']['auc']:.4f}", "1.0000", "5"]
    assert cells["frame/g2"] == ["0.7500", "1.0000", "4"]  # g2 fakes .7 .15 vs reals .1 .2: 3 of 4
    assert cells["empty"] == ["n/a", "n/a", "0"]
    assert len({len(line) for line in lines}) == 1  # padded columns
    path = write_metrics_csv(rows, tmp_path / "sub" / "m.csv")
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert [r["name"] for r in read] == list(rows)
    assert float(read[0]["auc"]) == rows["frame"]["auc"]
    assert read[-1]["auc"] == "nan"


def test_to_jsonable() -> None:
    obj = {
        "a": np.float32(0.5),
        "b": np.arange(3),
        "c": (np.int64(2), np.bool_(True)),
        1: {"nan": np.float64("nan")},
    }
    out = to_jsonable(obj)
    assert out["a"] == 0.5 and type(out["a"]) is float
    assert out["b"] == [0, 1, 2] and all(type(v) is int for v in out["b"])
    assert out["c"] == [2, True] and type(out["c"][1]) is bool
    assert math.isnan(out["1"]["nan"])
    text = json.dumps(out)
    assert "NaN" in text
    with pytest.raises(TypeError):
        json.dumps(obj["b"])  # what to_jsonable is for

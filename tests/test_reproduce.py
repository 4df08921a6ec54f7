"""``evaluate.py experiment=reproduce/<id>``: a published table's protocol in one run, beside its numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from hydra import compose, initialize_config_dir
from PIL import Image

from deepsift.app.reproduce import load_published
from deepsift.core.configs import CONFIG_DIR
from deepsift.engine.reproduction import COLUMNS, compare, markdown, tolerance_fraction
from tests.conftest import make_folder_tree, run_script
from tests.test_datasets_face import make_ffpp_tree

REPRODUCE = sorted(p.stem for p in (CONFIG_DIR / "experiment" / "reproduce").glob("*.yaml"))
PUBLISHED = sorted(p.stem for p in (CONFIG_DIR / "published").glob("*.yaml"))
CPU = ["trainer=cpu", "trainer.num_workers=0", "trainer.eval_batch_size=8"]


# -- the published data and the experiments ------------------------------------------------


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_published_number_has_its_source(name: str) -> None:
    data = yaml.safe_load((CONFIG_DIR / "published" / f"{name}.yaml").read_text())
    assert data["paper"] and data["url"].startswith("https://")
    for table_id in data["tables"]:
        entry = load_published(name, table_id)
        assert entry["scale"] in (1, 100) and entry["level"] in ("frame", "video")
        assert "README" in entry["source"] or "Table" in entry["source"], table_id
        assert len(entry["source"]) > 30 and entry["checkpoint"], table_id
        for test_set, values in entry["results"].items():
            for metric, value in values.items():
                assert metric in ("acc", "ap", "auc"), (table_id, test_set)
                top = 100 if entry["scale"] == 100 else 1
                assert 0 < float(value) <= top, (table_id, test_set, metric)


@pytest.mark.parametrize("experiment", REPRODUCE)
def test_every_reproduce_experiment_composes_and_names_a_published_table(
    experiment: str, tmp_path: Path
) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", [f"experiment=reproduce/{experiment}", f"data.root={tmp_path}"])
    published = load_published(cfg.reproduce.published, cfg.reproduce.table)
    labels = set(cfg.eval_data) | set(cfg.reproduce.get("unavailable") or {})
    # every published test set is evaluated or said to be unavailable: none is dropped
    assert set(published["results"]) <= labels, experiment
    assert list(cfg.split) == []
    for label, entry in cfg.eval_data.items():
        config = entry.get("config", label)
        assert (CONFIG_DIR / "data" / f"{config}.yaml").is_file(), (experiment, label)


# -- the comparison ------------------------------------------------------------------------


def test_compare_rows_scales_tolerances_and_missing() -> None:
    published = {
        "paper": "P",
        "table": "T",
        "checkpoint": "c.pth",
        "source": "README at abc",
        "scale": 100,
        "level": "frame",
        "results": {"a": {"acc": 80.0, "ap": 90.0}, "b": {"acc": 50.0}, "c": {"ap": 70.0}},
    }
    results = {
        "a": {"frame": {"acc": 0.804, "ap": 0.89, "n": 10}},
        "c": {"frame": {"ap": math.nan, "n": 4}},
    }
    rows = compare(published, results, {"b": "no root"}, {"acc": 0.5})
    assert [r["status"] for r in rows] == ["within", "outside", "missing", "undefined"]
    assert rows[0]["ours"] == pytest.approx(80.4) and rows[0]["delta"] == pytest.approx(0.4)
    assert rows[1]["delta"] == pytest.approx(-1.0) and rows[1]["within"] is False
    assert rows[0]["tolerance"] == pytest.approx(0.5) and rows[2]["reason"] == "no root"
    assert rows[3]["ours"] is None and "NaN" in rows[3]["reason"]
    assert tolerance_fraction("auc") == 0.005 and tolerance_fraction("ap") == 0.005
    text = markdown(published, rows)
    assert "| a | acc | 80.40 | 80.00 | +0.40 | ±0.50 | yes | 10 |" in text
    assert "missing: no root" in text and "1 of 2 compared" in text


# -- end to end through evaluate.py -------------------------------------------------------


def forensynths_tree(root: Path) -> Path:
    """ForenSynths test layout: progan with LSUN class folders, biggan flat; the 11 other
    generators of the table are absent (they must come out as missing)."""
    make_folder_tree(root / "tmp", per_class=6, size=32, corrupt=False)
    test = root / "test"
    for gen, cls in (("gen_a", "progan/car"), ("gen_b", "biggan")):
        (test / cls).parent.mkdir(parents=True, exist_ok=True)
        (root / "tmp" / "test" / gen).rename(test / cls)
    return root


def cnndetection_checkpoint(path: Path) -> Path:
    """An official-layout CNNDetection file: ``{'model': resnet50(num_classes=1) state}``."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=1)
    torch.save({"model": model.state_dict()}, path)
    return path


def deepfakebench_xception(path: Path) -> Path:
    """A DeepfakeBench-layout xception_best.pth (as tests/test_xception.py builds it)."""
    from tests.test_xception import TransferModel

    torch.manual_seed(0)
    model = TransferModel()
    state = {f"module.backbone.{k}": v for k, v in model.model.state_dict().items()}
    adjust = torch.nn.Sequential(torch.nn.Conv2d(2048, 512, 1), torch.nn.BatchNorm2d(512))
    state.update({f"module.backbone.adjust_channel.{k}": v for k, v in adjust.state_dict().items()})
    torch.save(state, path)
    return path


def read_outputs(run_dir: Path) -> tuple[dict, list[dict], str]:
    for name in ("reproduction.json", "reproduction.md", "reproduction.csv", "reproduction.png"):
        assert (run_dir / name).is_file(), name
    with Image.open(run_dir / "reproduction.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    payload = json.loads((run_dir / "reproduction.json").read_text())
    with (run_dir / "reproduction.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    return payload, rows, (run_dir / "reproduction.md").read_text()


def check_compared_row(row: dict, run_dir: Path, scale: float, tolerance: float) -> None:
    """Every column of a compared row against the run's own metrics file and the YAML."""
    metrics = json.loads((run_dir / f"metrics_{row['test_set']}-test.json").read_text())
    level = metrics["metrics"][row["level"]]
    assert row["ours"] == pytest.approx(level[row["metric"]] * scale)
    assert row["delta"] == pytest.approx(row["ours"] - row["published"])
    assert row["tolerance"] == pytest.approx(tolerance * scale)
    assert row["within"] is (abs(row["delta"]) <= row["tolerance"] + 1e-9)
    assert row["status"] == ("within" if row["within"] else "outside")
    assert row["n"] == level["n"] and row["reason"] == ""


def test_cnndetection_no_crop_table(tmp_path: Path) -> None:
    root = forensynths_tree(tmp_path / "forensynths")
    weights = cnndetection_checkpoint(tmp_path / "blur_jpg_prob0.5.pth")
    run_dir = tmp_path / "run"
    result = run_script(
        "evaluate.py",
        [
            "experiment=reproduce/cnndetection_prob0.5",
            f"detector.weights={weights}",
            f"data.root={root}",
            *CPU,
            f"hydra.run.dir={run_dir}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload, csv_rows, text = read_outputs(run_dir)
    published = load_published("cnndetection", "blur_jpg_prob0.5_no_crop")
    assert (
        payload["paper"] == published["paper"] and payload["checkpoint"] == "blur_jpg_prob0.5.pth"
    )
    assert payload["source"] == published["source"] and payload["weights"] == str(weights)
    assert payload["detector"] == payload["evaluated_detector"] == "cnnspot"
    assert payload["tolerance"]["acc"] == 0.5
    rows = payload["rows"]
    # all 13 generators x (acc, ap), in the published order
    expected = [(g, m) for g, v in published["results"].items() for m in v]
    assert [(r["test_set"], r["metric"]) for r in rows] == expected
    assert len(csv_rows) == len(rows) == 26
    for row in rows:
        assert row["published"] == published["results"][row["test_set"]][row["metric"]]
        assert row["level"] == "frame" and row["source"] == published["source"]
        if row["test_set"] in ("progan", "biggan"):
            check_compared_row(row, run_dir, 100.0, 0.005)
            assert row["n"] == 12  # the folder's own 6 reals + 6 fakes: the paper's balance
        else:
            assert row["status"] == "missing" and row["ours"] is None and row["delta"] is None
            assert row["within"] is None and row["n"] == 0
            assert row["test_set"] in row["reason"]  # "data.test_generators: ... not found"
    compared = [r for r in rows if r["status"] in ("within", "outside")]
    assert payload["summary"] == {
        "rows": 26,
        "compared": 4,
        "within": sum(r["within"] for r in compared),
        "outside": sum(not r["within"] for r in compared),
        "missing": 22,
        "undefined": 0,
    }
    assert "| test set | metric | ours | published | delta | tolerance | within | n |" in text
    assert text.count("| missing:") == 22 and published["source"] in text
    assert "Reproduction (" in result.stdout
    # the whole-image protocol reached the detector
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["detector"]["preprocessing"]["crop"] == "none"


def test_deepfakebench_xception_table_with_missing_roots(tmp_path: Path) -> None:
    root = make_ffpp_tree(tmp_path / "ffpp")
    weights = deepfakebench_xception(tmp_path / "xception_best.pth")
    run_dir = tmp_path / "run"
    result = run_script(
        "evaluate.py",
        [
            "experiment=reproduce/deepfakebench_xception",
            f"detector.weights={weights}",
            f"data.root={root}",
            f"eval_data.celebdf_v2.root={tmp_path / 'not-there'}",
            "detector.preprocessing.size=64",  # the protocol's 256 px, smaller for 2 CPU cores
            "reproduce.tolerance.auc=0.6",
            *CPU,
            f"hydra.run.dir={run_dir}",
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload, csv_rows, text = read_outputs(run_dir)
    published = load_published("deepfakebench", "xception")
    rows = {r["test_set"]: r for r in payload["rows"]}
    assert list(rows) == list(published["results"])
    assert len(csv_rows) == 6 and payload["tolerance"]["auc"] == 0.6
    assert payload["detector"] == payload["evaluated_detector"] == "xception"
    ffpp = rows["ffpp_c23"]
    assert ffpp["published"] == 0.9637 and ffpp["metric"] == "auc"
    check_compared_row(ffpp, run_dir, 1.0, 0.6)
    assert ffpp["within"] is True  # |ours - 0.9637| <= 0.6 for any AUC above 0.3637
    # FF++ c23 test: 2 real videos + 4 methods x 2 fakes, 2 cached frames each
    assert ffpp["n"] == 20
    assert rows["celebdf_v1"]["reason"] == "no root: pass eval_data.celebdf_v1.root=<folder>"
    assert rows["celebdf_v2"]["reason"] == f"root {tmp_path / 'not-there'} does not exist"
    assert rows["dfd"]["status"] == "missing" and rows["dfd"]["reason"]  # no DFD videos there
    for name in ("celebdf_v1", "celebdf_v2", "dfd", "dfdc", "dfdc_preview"):
        row = rows[name]
        assert row["status"] == "missing" and row["ours"] is None and row["within"] is None
        assert row["published"] == published["results"][name]["auc"]
    assert payload["summary"]["missing"] == 5 and payload["summary"]["compared"] == 1
    assert "| ffpp_c23 | auc |" in text and "0.9637" in text


def test_sbi_video_table_with_unavailable_and_wrong_compression(tmp_path: Path) -> None:
    from tests.test_datasets_face import add_crops, make_celebdf_tree, make_dfd_tree

    root, tests = make_celebdf_tree(tmp_path / "cdf")
    add_crops(root, list(tests), frames=2)
    dfd = make_dfd_tree(tmp_path / "ffpp")  # c23 only: the protocol reads raw
    run_dir = tmp_path / "run"
    result = run_script(
        "evaluate.py",
        [
            "experiment=reproduce/sbi_ffraw",
            f"data.root={root}",
            f"eval_data.dfd.root={dfd}",
            "detector.preprocessing.size=64",
            *CPU,
            f"hydra.run.dir={run_dir}",
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload, csv_rows, text = read_outputs(run_dir)
    published = load_published("sbi", "ff_raw")
    rows = {r["test_set"]: r for r in payload["rows"]}
    assert list(rows) == list(published["results"]) and len(csv_rows) == 5
    cdf = rows["celebdf_v2"]
    assert cdf["level"] == "video" and cdf["published"] == 93.82
    # video AUC on the published percent scale; n counts the 4 test videos, not their frames
    check_compared_row(cdf, run_dir, 100.0, 0.005)
    assert cdf["n"] == 4 and cdf["tolerance"] == pytest.approx(0.5)
    assert rows["ffiw"]["reason"] == "deepsift has no FFIW (FFIW10K) loader"
    assert "raw" in rows["dfd"]["reason"] and rows["dfd"]["status"] == "missing"
    assert payload["summary"]["missing"] == 4 and payload["summary"]["compared"] == 1
    assert "level: video" in text and "- weights: none (untrained)" in text

"""report.py: mean ± std over seeds, and never an average across different configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from deepsift.app.report import write_report
from deepsift.core.errors import UserError
from tests.conftest import run_script


def fake_run(root: Path, name: str, detector: str, seed: int, auc: float, **config) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "detector": {"_target_": detector}, "trainer": {"max_epochs": 2}}
    cfg["trainer"].update(config)
    cfg["paths"] = {"log_dir": str(run)}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = {"frame": {"auc": auc, "ap": auc - 0.01, "n": 64}, "by_generator": {}}
    payload = {
        "split": "test",
        "detector": detector,
        "data": "folder",
        "seed": seed,
        "metrics": metrics,
    }
    (run / "metrics_test.json").write_text(json.dumps(payload))
    return run


def test_seeds_are_averaged_and_other_configs_are_not(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    values = {0: 0.91, 1: 0.95, 2: 0.90}
    for seed, auc in values.items():
        fake_run(runs, f"durall_{seed}", "durall", seed, auc)
    fake_run(runs, "durall_long", "durall", 0, 0.99, max_epochs=20)
    written = write_report([runs], tmp_path / "out", metrics=["auc", "ap"])
    report = json.loads(written["json"].read_text())
    assert report["differing_keys"] == ["trainer.max_epochs"]
    auc = {r["group"]: r for r in report["rows"] if r["metric"] == "auc"}
    short = auc["durall [trainer.max_epochs=2]"]
    assert short["seeds"] == ["0", "1", "2"]
    assert short["mean"] == pytest.approx(np.mean(list(values.values())))
    assert short["std"] == pytest.approx(np.std(list(values.values()), ddof=1))
    assert auc["durall [trainer.max_epochs=20]"]["n"] == 1
    md = written["md"].read_text()
    assert "0.920 ± 0.026" in md and "never averaged together" in md
    with Image.open(written["png"]) as png:
        assert png.size[0] > 100


def test_the_same_run_twice_is_refused(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", "r", "durall", 0, 0.9)
    fake_run(tmp_path / "b", "r", "durall", 0, 0.9)
    with pytest.raises(UserError, match="the same run"):
        write_report([tmp_path], tmp_path / "out")


def test_no_metrics_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no metrics_"):
        write_report([tmp_path], tmp_path / "out")


@pytest.mark.slow
def test_a_three_seed_multirun_in_two_commands(folder_tree: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    result = run_script(
        "train.py",
        [
            "-m",
            "detector=durall",
            "detector.preprocessing.size=32",
            "data=folder",
            f"data.root={folder_tree}",
            "trainer=cpu",
            "trainer.num_workers=0",
            "seed=0,1,2",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = run_script("report.py", [str(sweep), "--out", str(tmp_path / "out")])
    assert report.returncode == 0, report.stderr[-3000:]
    assert "±" in report.stdout and "0, 1, 2" in report.stdout

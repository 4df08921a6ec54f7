"""Train on one benchmark, test on several in the same command (``eval_data``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FAST, make_folder_tree, run_script

pytestmark = pytest.mark.slow


def test_train_on_one_tree_and_test_on_two_others(folder_tree: Path, tmp_path: Path) -> None:
    other = make_folder_tree(tmp_path / "other", per_class=6, seed=3, corrupt=False)
    third = make_folder_tree(tmp_path / "third", per_class=4, seed=4, corrupt=False)
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        [
            *FAST,
            "data=folder",
            f"data.root={folder_tree}",
            "trainer.max_epochs=1",
            "+eval_data.other.config=folder",
            f"+eval_data.other.root={other}",
            "+eval_data.third_val.config=folder",
            f"+eval_data.third_val.root={third}",
            "+eval_data.third_val.split=val",
            f"hydra.run.dir={run_dir}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    other_metrics = json.loads((run_dir / "metrics_other-test.json").read_text())
    third_metrics = json.loads((run_dir / "metrics_third_val-val.json").read_text())
    # per-dataset counts prove each set was read from its own root
    assert other_metrics["metrics"]["frame"]["n"] == 2 * 2 * 6  # two generators x two classes
    assert third_metrics["metrics"]["frame"]["n"] == 2 * 4
    assert set(other_metrics["metrics"]["by_generator"]) == {"gen_a", "gen_b"}
    assert other_metrics["data"] == "other" and other_metrics["split"] == "other-test"
    assert "other/test" in result.stdout and "third_val/val" in result.stdout
    assert (run_dir / "metrics_test.json").is_file()  # the training benchmark's own test


def test_a_wrong_eval_root_fails_before_training(folder_tree: Path, tmp_path: Path) -> None:
    result = run_script(
        "train.py",
        [
            *FAST,
            "data=folder",
            f"data.root={folder_tree}",
            "+eval_data.celebdf_v2.root=/nonexistent/celeb",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert result.returncode == 2
    assert "/nonexistent/celeb" in result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_unknown_eval_config_lists_the_valid_names(folder_tree: Path, tmp_path: Path) -> None:
    result = run_script(
        "train.py",
        [*FAST, "data=folder", f"data.root={folder_tree}", "+eval_data.nope.root=/x"],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "eval_data.nope" in result.stderr and "celebdf_v2" in result.stderr

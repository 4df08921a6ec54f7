"""End to end: train.py and evaluate.py as users run them, on a generated image tree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from deepsift.core.configs import compose
from tests.conftest import FAST, run_script

pytestmark = pytest.mark.slow


def data_args(tree: Path) -> list[str]:
    return ["data=folder", f"data.root={tree}"]


def compose_train(overrides: list[str], run_dir: Path):
    return compose("train", overrides, run_dir)


def load_metrics(run_dir: Path, split: str) -> dict:
    return json.loads((run_dir / f"metrics_{split}.json").read_text())


@pytest.fixture(scope="module")
def trained_run(folder_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("train_run")
    result = run_script(
        "train.py",
        [*FAST, *data_args(folder_tree), "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_train_writes_a_complete_run_directory(trained_run: Path) -> None:
    for name in (
        "last.pt",
        "best.pt",
        "metrics_val.json",
        "metrics_test.json",
        "metrics_test.csv",
        "metrics_test.md",
        "roc_test.png",
        "scores_test.png",
        "predictions_test.csv",
        "history.json",
        "train.log",
        ".hydra/config.yaml",
    ):
        assert (trained_run / name).is_file(), name
    test = load_metrics(trained_run, "test")
    # 2 generators x (16 real + 16 fake) images, one broken file skipped and counted
    assert test["metrics"]["frame"]["n"] == 64
    assert test["metrics"]["n_skipped"] == 1
    assert test["metrics"]["skipped"][0]["path"].endswith("broken.png")
    assert set(test["metrics"]["by_generator"]) == {"gen_a", "gen_b"}
    assert test["selected_on"] == "val/auc"
    assert 0.0 <= test["metrics"]["frame"]["auc"] <= 1.0


def test_closed_form_detector_runs_through_the_same_pipeline(
    folder_tree: Path, tmp_path: Path
) -> None:
    """Durall's spectrum separates the 2x2-block fakes perfectly, so any misalignment of
    scores and labels in the loops (sharding, gathering, skipping) would show here."""
    result = run_script(
        "train.py",
        [
            "detector=durall",
            "detector.preprocessing.size=32",
            "trainer=cpu",
            "trainer.num_workers=0",
            *data_args(folder_tree),
            f"hydra.run.dir={tmp_path}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    test = load_metrics(tmp_path, "test")
    assert test["best_epoch"] == 1  # one closed-form pass, whatever trainer.max_epochs says
    assert test["metrics"]["frame"]["auc"] > 0.95
    for generator in ("gen_a", "gen_b"):
        assert test["metrics"]["by_generator"][generator]["auc"] > 0.95


def test_checkpoint_is_self_contained_and_safe(trained_run: Path) -> None:
    payload = torch.load(trained_run / "best.pt", map_location="cpu", weights_only=True)
    assert payload["detector"]["name"] == "timm_classifier"
    assert payload["detector"]["config"]["_target_"] == "detectors.timm_classifier.TimmClassifier"
    assert payload["preprocessing"]["size"] == 32
    assert payload["face_crop"] is None  # folder data: no crop cache says how faces were cut
    assert payload["git"]
    last = torch.load(trained_run / "last.pt", map_location="cpu", weights_only=True)
    assert last["trainer_state"]["epoch"] == 2 and last["optimizer"] is not None


def test_evaluate_needs_only_the_checkpoint(
    trained_run: Path, folder_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    result = run_script(
        "evaluate.py",
        [
            f"checkpoint={trained_run / 'best.pt'}",
            *data_args(folder_tree),
            "trainer=cpu",
            "trainer.num_workers=0",
            f"hydra.run.dir={out}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("metrics_test.json", "metrics_test.csv", "metrics_test.md", "roc_test.png"):
        assert (out / name).is_file(), name
    evaluated = load_metrics(out, "test")["metrics"]["frame"]
    trained = load_metrics(trained_run, "test")["metrics"]["frame"]
    assert evaluated["auc"] == pytest.approx(trained["auc"], abs=1e-9)
    assert "| auc" in (out / "metrics_test.md").read_text() or "auc" in result.stdout


def test_two_processes_give_the_same_metrics_as_one(
    trained_run: Path, folder_tree: Path, tmp_path: Path
) -> None:
    args = [
        f"checkpoint={trained_run / 'best.pt'}",
        *data_args(folder_tree),
        "trainer=cpu",
        "trainer.num_workers=0",
        "trainer.eval_batch_size=7",
        "split=[val,test]",
    ]
    one = run_script("evaluate.py", [*args, f"hydra.run.dir={tmp_path / 'one'}"])
    two = run_script("evaluate.py", [*args, f"hydra.run.dir={tmp_path / 'two'}"], torchrun=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    for split in ("val", "test"):
        a = load_metrics(tmp_path / "one", split)["metrics"]
        b = load_metrics(tmp_path / "two", split)["metrics"]
        assert a["frame"]["n"] == b["frame"]["n"]
        assert a["n_skipped"] == b["n_skipped"]
        for key, value in a["frame"].items():
            if isinstance(value, float) and not math.isnan(value):
                assert b["frame"][key] == pytest.approx(value, abs=1e-6), key


def test_training_runs_under_torchrun(folder_tree: Path, tmp_path: Path) -> None:
    result = run_script(
        "train.py",
        [*FAST, *data_args(folder_tree), "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}"],
        torchrun=2,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    test = load_metrics(tmp_path, "test")["metrics"]
    assert test["frame"]["n"] == 64  # every image counted once over both ranks
    assert (tmp_path / "best.pt").is_file()


def test_resume_ends_with_the_same_weights(
    folder_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepsift.app import training

    overrides = [
        *FAST,
        *data_args(folder_tree),
        "trainer.max_epochs=3",
        "trainer.early_stopping.patience=10",
        "eval_splits=[val]",
        "metrics.plots=false",
        "detector.preprocessing.blur_prob=0.5",
    ]
    training.train(compose_train(overrides, tmp_path / "straight"))

    save = training.save_checkpoint

    def save_then_crash(path: Path, payload: dict) -> None:
        save(path, payload)
        if path.name == "last.pt" and payload["epoch"] == 2:
            raise KeyboardInterrupt("simulated kill after epoch 2")

    monkeypatch.setattr(training, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        training.train(compose_train(overrides, tmp_path / "killed"))
    monkeypatch.undo()
    training.train(
        compose_train(
            [*overrides, f"resume={tmp_path / 'killed' / 'last.pt'}"], tmp_path / "resumed"
        )
    )

    for name in ("last.pt", "best.pt"):
        straight = torch.load(tmp_path / "straight" / name, weights_only=True)
        resumed = torch.load(tmp_path / "resumed" / name, weights_only=True)
        assert straight["epoch"] == resumed["epoch"]
        for key, tensor in straight["state_dict"].items():
            assert torch.equal(tensor, resumed["state_dict"][key]), f"{name}: {key} differs"


def test_wandb_offline_needs_no_network(folder_tree: Path, tmp_path: Path) -> None:
    result = run_script(
        "train.py",
        [
            *FAST,
            *data_args(folder_tree),
            "trainer.max_epochs=1",
            "logger.mode=offline",
            "eval_splits=[val]",
            f"hydra.run.dir={tmp_path}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline wandb run written"


def test_multirun_sweeps(folder_tree: Path, tmp_path: Path) -> None:
    result = run_script(
        "train.py",
        [
            "-m",
            *FAST,
            *data_args(folder_tree),
            "trainer.max_epochs=1",
            "eval_splits=[val]",
            "metrics.plots=false",
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seeds = sorted(load_metrics(tmp_path / str(job), "val")["seed"] for job in (0, 1))
    assert seeds == [0, 1]

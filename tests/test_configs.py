"""Every detector config composes with every data config, and every object comes from _target_."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from deepsift.errors import instantiate
from deepsift.pipeline import compose as compose_run
from detectors import list_detectors
from detectors.base import Detector
from detectors.factory import CONFIG_DIR, build_detector

DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
DETECTORS = list_detectors()


def test_there_is_something_to_compose() -> None:
    assert {"timm_classifier", "durall"} <= set(DETECTORS)
    assert {"embedded", "folder"} <= set(DATA)


@pytest.mark.parametrize("data", DATA)
def test_every_detector_composes_with(data: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for detector in DETECTORS:
            overrides = [
                f"detector={detector}",
                f"data={data}",
                "trainer=cpu",
                f"data.root={tmp_path}",
            ]
            for task in ("train", "eval"):
                cfg = compose(task, overrides=overrides)
                assert cfg.detector._target_.startswith("detectors."), (detector, task)
                assert cfg.data._target_.startswith("datasets."), (data, task)
                assert cfg.data.root == str(tmp_path)


@pytest.mark.parametrize("detector", DETECTORS)
def test_detector_config_builds(detector: str, tmp_path: Path) -> None:
    cfg = compose_run("train", [f"detector={detector}"], run_dir=tmp_path)
    assert isinstance(build_detector(cfg.detector, detector), Detector)


@pytest.mark.parametrize("data", DATA)
def test_data_config_builds_lazily(data: str, tmp_path: Path) -> None:
    cfg = compose_run("train", [f"data={data}", f"data.root={tmp_path}"], run_dir=tmp_path / "run")
    source = instantiate(cfg.data, _convert_="all")  # nothing is built or read yet
    assert callable(source.records)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment: str, tmp_path: Path) -> None:
    cfg = compose_run("train", [f"experiment={experiment}"], run_dir=tmp_path)
    assert cfg.trainer.max_epochs >= 1
    build_detector(cfg.detector, "x")


def test_logger_group_defaults_to_no_network(tmp_path: Path) -> None:
    cfg = compose_run("train", [], run_dir=tmp_path)
    assert cfg.logger.mode == "disabled"
    assert compose_run("eval", [], run_dir=tmp_path).logger._target_.endswith("NullLogger")

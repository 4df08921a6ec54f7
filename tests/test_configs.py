"""Every detector config composes with every data config, and every object comes from _target_."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from deepsift.pipeline import compose
from detectors import list_detectors
from detectors.base import Detector
from detectors.factory import CONFIG_DIR, build_detector

DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_there_is_something_to_compose() -> None:
    assert {"timm_classifier", "durall"} <= set(list_detectors())
    assert {"embedded", "folder"} <= set(DATA)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("detector", list_detectors())
def test_detector_and_data_compose(detector: str, data: str, tmp_path: Path) -> None:
    overrides = [f"detector={detector}", f"data={data}", "trainer=cpu"]
    if data != "embedded":
        overrides.append(f"data.root={tmp_path}")
    for task in ("train", "eval"):
        cfg = compose(task, overrides, run_dir=tmp_path / task)
        assert cfg.detector._target_.startswith("detectors.")
        assert cfg.data._target_.startswith("datasets.")
    built = build_detector(cfg.detector, detector)
    assert isinstance(built, Detector)
    source = instantiate(cfg.data, _convert_="all")  # lazy: nothing is built or read yet
    assert callable(source.records)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment: str, tmp_path: Path) -> None:
    cfg = compose("train", [f"experiment={experiment}"], run_dir=tmp_path)
    assert cfg.trainer.max_epochs >= 1
    build_detector(cfg.detector, "x")


def test_logger_group_defaults_to_no_network(tmp_path: Path) -> None:
    cfg = compose("train", [], run_dir=tmp_path)
    assert cfg.logger.mode == "disabled"
    assert compose("eval", [], run_dir=tmp_path).logger._target_.endswith("NullLogger")

"""Every detector config composes with every data config, and every object comes from _target_."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from deepsift.core.configs import CONFIG_DIR, instantiate
from deepsift.core.configs import compose as compose_run
from detectors import list_detectors
from detectors.base import Detector
from detectors.factory import build_detector

DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
DETECTORS = list_detectors()


def test_there_is_something_to_compose() -> None:
    assert {"timm_classifier", "durall"} <= set(DETECTORS)
    assert {"embedded", "folder"} <= set(DATA)


@pytest.fixture(scope="module")
def composed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Hydra's composition of each detector (with the default data) and each data config
    (with the default detector), per task: 2 x (detectors + data) compositions."""
    root = str(tmp_path_factory.mktemp("root"))
    out: dict = {"root": root}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for task in ("train", "eval"):
            base = ["trainer=cpu", f"data.root={root}"]
            for detector in DETECTORS:
                out[task, "detector", detector] = compose(task, [*base, f"detector={detector}"])
            for data in DATA:
                out[task, "data", data] = compose(task, [*base, f"data={data}"])
            out[task, "pair"] = compose(
                task, [*base, f"detector={DETECTORS[-1]}", f"data={DATA[-1]}"]
            )
    return out


def combine(composed: dict, task: str, detector: str, data: str) -> DictConfig:
    """The config ``detector=<detector> data=<data>`` would compose to: the groups are
    independent (no config reaches into another group's defaults), so it is the data
    composition with the detector's node swapped in."""
    cfg = copy.deepcopy(composed[task, "data", data])
    with open_dict(cfg):
        cfg.detector = copy.deepcopy(composed[task, "detector", detector].detector)
    return cfg


def test_combining_equals_hydra_composition(composed: dict) -> None:
    for task in ("train", "eval"):
        combined = combine(composed, task, DETECTORS[-1], DATA[-1])
        assert OmegaConf.to_container(combined) == OmegaConf.to_container(composed[task, "pair"])


@pytest.mark.parametrize("data", DATA)
def test_every_detector_composes_with(data: str, composed: dict) -> None:
    for detector in DETECTORS:
        for task in ("train", "eval"):
            cfg = combine(composed, task, detector, data)
            resolved = OmegaConf.to_container(cfg.detector, resolve=True)  # interpolations resolve
            assert resolved["_target_"].startswith("detectors."), (detector, task)
            assert cfg.data._target_.startswith("datasets."), (data, task)
            assert cfg.data.root == composed["root"]
            OmegaConf.to_container(cfg.data, resolve=True)


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

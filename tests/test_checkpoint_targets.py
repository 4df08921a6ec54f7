"""A checkpoint's config builds only detector classes and allowed optimisers/schedulers.

Hydra imports and calls every ``_target_`` of a config, nested ones included, so
each crafted checkpoint below names something that must never run: it is
replaced by a recorder first (``builtins.exec``, which torch itself needs, is
given code that would write a marker file), so a passing test proves it was not
called.
"""

from __future__ import annotations

import collections
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

import deepsift.core.hub
from deepsift.app.training import _checkpoint
from deepsift.core.checkpoint import (
    FORMAT,
    NESTED_TARGETS,
    check_targets,
    detector_targets,
    read_checkpoint,
    save_checkpoint,
)
from deepsift.core.errors import UserError
from detectors.factory import build_detector, detector_config, list_detectors, load_detector
from tests.conftest import FAST, run_script

ROOT = Path(__file__).resolve().parents[1]
DANGEROUS = {  # target -> (module, attribute) to replace with a recorder
    "deepsift.core.hub.download": (deepsift.core.hub, "download"),
    "hydra.utils.get_method": (hydra.utils, "get_method"),
    "builtins.exec": None,  # torch runs exec itself: the marker file is the proof
    "subprocess.run": (subprocess, "run"),
    "os.system": (os, "system"),
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every dangerous target replaced by a recorder; the list of those that were called."""
    called: list[str] = []
    for target, place in DANGEROUS.items():
        if place is None:
            continue

        def record(*args: Any, _target: str = target, **kwargs: Any) -> None:
            called.append(_target)

        monkeypatch.setattr(*place, record)
    yield called


def crafted(tmp_path: Path, config: Any, name: str = "timm_classifier") -> Path:
    path = tmp_path / "best.pt"
    torch.save(
        {"format": FORMAT, "detector": {"name": name, "config": config}, "state_dict": {}}, path
    )
    return path


def shipped(name: str, **overrides: Any) -> dict[str, Any]:
    """A shipped detector config, resolved, as a checkpoint stores it."""
    return OmegaConf.to_container(detector_config(name, **overrides), resolve=True)


def assert_refused(path: Path, calls: list[str], *needles: str) -> str:
    """read_checkpoint and load_detector both refuse ``path``, naming it and ``needles``."""
    for opener in (read_checkpoint, load_detector):
        with pytest.raises(UserError) as info:
            opener(str(path))
        message = str(info.value)
        assert str(path) in message and "refusing" in message, message
        for needle in needles:
            assert needle in message, (needle, message)
        assert "\n" not in message
    assert calls == []
    return message


def arguments(target: str, marker: Path) -> dict[str, Any]:
    """What each target would be called with: each would create ``marker``."""
    return {
        "deepsift.core.hub.download": {"url": f"file://{marker}", "folder": str(marker.parent)},
        "hydra.utils.get_method": {"_args_": ["os.system"]},
        "builtins.exec": {"_args_": [f"open({str(marker)!r}, 'w').close()"]},
        "subprocess.run": {"_args_": [["touch", str(marker)]]},
        "os.system": {"command": f"touch {marker}"},
    }[target]


@pytest.mark.parametrize("target", list(DANGEROUS))
def test_top_level_target_that_is_no_detector_is_refused(
    target: str, tmp_path: Path, calls: list[str]
) -> None:
    marker = tmp_path / "called"
    path = crafted(tmp_path, {"_target_": target, **arguments(target, marker)})
    message = assert_refused(path, calls, "detector._target_", repr(target))
    assert not marker.exists()
    assert "detectors.timm_classifier.TimmClassifier" in message  # says what is allowed


@pytest.mark.parametrize("target", list(DANGEROUS))
def test_nested_target_under_an_optimizer_is_refused(
    target: str, tmp_path: Path, calls: list[str]
) -> None:
    config = shipped("timm_classifier")
    marker = tmp_path / "called"
    config["optimizer"] = {"_target_": target, **arguments(target, marker)}
    message = assert_refused(crafted(tmp_path, config), calls, "detector.optimizer._target_")
    assert not marker.exists()
    assert repr(target) in message and "torch.optim.AdamW" in message  # says what is allowed


@pytest.mark.parametrize(
    ("edit", "location"),
    [
        # inside a list (AEROBLADE's autoencoders)
        (
            lambda c: c.update(
                autoencoder=[
                    {"_target_": "detectors.reconstruction.resampling_autoencoder"},
                    {"_target_": "os.system", "command": "true"},
                ]
            ),
            "detector.autoencoder[1]._target_",
        ),
        # inside positional arguments of an allowed target
        (
            lambda c: c.update(
                optimizer={
                    "_target_": "torch.optim.SGD",
                    "_partial_": True,
                    "_args_": [{"_target_": "subprocess.run", "_args_": [["true"]]}],
                }
            ),
            "detector.optimizer._args_[0]._target_",
        ),
        # two levels down, where SBI's SAM takes its base optimiser
        (
            lambda c: c.update(
                optimizer={
                    "_target_": "detectors.layers.sam.SAM",
                    "_partial_": True,
                    "base_optimizer": {"_target_": "builtins.exec", "_args_": ["1"]},
                }
            ),
            "detector.optimizer.base_optimizer._target_",
        ),
        # under a constructor argument, and a detector class below the top
        (
            lambda c: c.update(backbone={"_target_": "deepsift.core.hub.download", "url": "x"}),
            "detector.backbone._target_",
        ),
        (lambda c: c.update(scheduler={"_target_": "detectors.sbi.SBI"}), "detector.scheduler"),
    ],
)
def test_nested_targets_anywhere_are_refused(
    edit: Any, location: str, tmp_path: Path, calls: list[str]
) -> None:
    config = shipped("aeroblade")
    edit(config)
    assert_refused(crafted(tmp_path, config, "aeroblade"), calls, location)


def test_an_optimizer_is_no_detector(tmp_path: Path, calls: list[str]) -> None:
    path = crafted(tmp_path, {"_target_": "torch.optim.SGD", "_partial_": True})
    assert_refused(path, calls, "detector._target_", "'torch.optim.SGD'")


@pytest.mark.parametrize(
    "target",
    [1, None, ["os.system"], {"_target_": "os.system"}, collections.OrderedDict],
    ids=["int", "none", "list", "dict", "callable"],
)
def test_a_target_that_is_not_a_string_is_refused(
    target: Any, tmp_path: Path, calls: list[str]
) -> None:
    """weights_only loading still hands back some classes and functions as values."""
    assert_refused(crafted(tmp_path, {"_target_": target}), calls, "detector._target_")
    config = shipped("timm_classifier")
    config["optimizer"] = {"_target_": target, "_partial_": True}
    assert_refused(crafted(tmp_path, config), calls, "detector.optimizer._target_")


def test_a_callable_value_is_refused(tmp_path: Path, calls: list[str]) -> None:
    config = shipped("timm_classifier")
    config["optimizer"] = collections.OrderedDict  # called by configure_optimizers
    assert_refused(crafted(tmp_path, config), calls, "detector.optimizer", "plain data")


@pytest.mark.parametrize(
    "value",
    [
        "${oc.create:{_target_: deepsift.core.hub.download, url: x}}",
        "\\${oc.create:{_target_: deepsift.core.hub.download, url: x}}",  # survives one resolution
        "${oc.decode:'{_target_: os.system, command: true}'}",
        "${oc.env:HOME}",
    ],
)
def test_interpolations_cannot_smuggle_a_target(
    value: str, tmp_path: Path, calls: list[str]
) -> None:
    """Hydra resolves interpolations again when it instantiates, after any check."""
    config = shipped("timm_classifier")
    config["optimizer"]["lr"] = value
    assert_refused(crafted(tmp_path, config), calls, "detector.optimizer.lr", "interpolation")


def test_an_escaped_interpolation_in_a_config_is_refused_before_building(
    calls: list[str],
) -> None:
    """build_detector resolves once, checks, then Hydra would resolve the escape away."""
    config = detector_config("timm_classifier")
    config.optimizer.lr = "\\${oc.create:{_target_: deepsift.core.hub.download, url: x}}"
    with pytest.raises(UserError, match=r"detector\.optimizer\.lr holds an interpolation"):
        build_detector(config, "timm_classifier")
    assert calls == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("_call_", True),
        ("_partial_", "os.system"),
        ("_recursive_", "yes"),
        ("_convert_", {"_target_": "os.system"}),
        ("_args_", "os.system"),
        ("_self_", "x"),
    ],
)
def test_other_hydra_instructions_are_checked(
    key: str, value: Any, tmp_path: Path, calls: list[str]
) -> None:
    config = shipped("timm_classifier")
    config["optimizer"][key] = value
    assert_refused(crafted(tmp_path, config), calls, f"detector.optimizer.{key}")


@pytest.mark.parametrize("config", [None, [], "detectors.npr.NPR", {"backbone": "resnet18"}])
def test_a_config_without_a_detector_class_is_refused(
    config: Any, tmp_path: Path, calls: list[str]
) -> None:
    assert_refused(crafted(tmp_path, config), calls, "detector")


def test_a_checkpoint_without_a_detector_entry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    torch.save({"format": FORMAT, "state_dict": {}}, path)
    with pytest.raises(UserError, match=r"the detector config is missing"):
        read_checkpoint(path)


def _nested_targets(node: Any, top: bool = True) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and not top:
                yield value
            yield from _nested_targets(value, top=False)
    elif isinstance(node, list):
        for value in node:
            yield from _nested_targets(value, top=False)


def test_every_shipped_config_is_allowed() -> None:
    """The allow-lists cover what configs/ ships: a new nested target must be added knowingly."""
    assert detector_targets() == {shipped(name)["_target_"] for name in list_detectors()}
    for name in list_detectors():
        config = shipped(name)
        assert set(_nested_targets(config)) <= NESTED_TARGETS, name
        check_targets(config, name)
    demo = OmegaConf.load(ROOT / "configs" / "experiment" / "demo.yaml")
    assert set(_nested_targets(OmegaConf.to_container(demo.detector))) <= NESTED_TARGETS
    assert not any(t.startswith("deepsift.") for t in detector_targets() | NESTED_TARGETS)


def test_detector_targets_read_the_yaml_without_importing_detectors() -> None:
    code = (
        "import sys; from deepsift.core.checkpoint import detector_targets; "
        "assert 'detectors.sbi.SBI' in detector_targets(); "
        "assert not any(m == 'detectors' or m.startswith(('detectors.', 'hydra')) "
        "for m in sys.modules), sorted(m for m in sys.modules if m.startswith('detectors'))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("sbi", {"backbone": "test_efficientnet", "preprocessing": {"size": 48}}),  # SAM, SGD, LR
        ("aeroblade", {}),  # a nested autoencoder factory
        (  # the demo's scheduler
            "timm_classifier",
            {
                "preprocessing": {"size": 32},
                "scheduler": {
                    "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
                    "_partial_": True,
                    "T_max": 3,
                },
            },
        ),
    ],
)
def test_a_checkpoint_written_by_training_loads(
    name: str, overrides: dict[str, Any], tmp_path: Path
) -> None:
    """The save path of train.py (``_checkpoint`` + ``save_checkpoint``), then load_detector."""
    torch.manual_seed(0)
    detector = build_detector(detector_config(name, **overrides), name)
    cfg = OmegaConf.create({"seed": 0, "detector": detector.config})
    path = tmp_path / "best.pt"
    save_checkpoint(path, _checkpoint(detector, name, cfg, 1, {"frame": {"auc": 0.5}}))
    loaded = load_detector(str(path))
    assert type(loaded) is type(detector) and loaded.config_name == name
    expected = detector.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    optimizer, scheduler = loaded.configure_optimizers()
    first, _ = detector.configure_optimizers()
    assert type(optimizer) is type(first)
    if "scheduler" in overrides or name == "sbi":
        assert scheduler is not None


def test_every_allowed_target_exists_and_the_readme_names_it() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in sorted(NESTED_TARGETS):
        module, _, attribute = target.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attribute)), target
        assert f"`{attribute}`" in readme, target


def nested_os_system(tmp_path: Path, marker: Path) -> Path:
    """A timm_classifier checkpoint whose optimiser would run ``touch marker``."""
    config = shipped("timm_classifier")
    config["optimizer"] = {"_target_": "os.system", "command": f"touch {marker}"}
    return crafted(tmp_path, config)


def test_score_refuses_crafted_checkpoints_alone_and_in_ensembles(
    tmp_path: Path, calls: list[str]
) -> None:
    from deepsift.scoring.models import load_ensemble

    path = nested_os_system(tmp_path, tmp_path / "called")
    spec = tmp_path / "ensemble.yaml"
    spec.write_text("members:\n  - detector: durall\n  - checkpoint: best.pt\n")
    for kwargs in (
        {"checkpoint": str(path)},
        {"ensemble": f"durall,{path}"},
        {"ensemble": str(spec)},
    ):
        with pytest.raises(
            UserError, match=r"best\.pt: detector\.optimizer\._target_ is 'os\.system'"
        ):
            load_ensemble(**kwargs)
    assert calls == [] and not (tmp_path / "called").exists()


@pytest.mark.parametrize("script", ["evaluate.py", "train.py"])
def test_evaluate_and_resume_refuse_crafted_checkpoints(
    script: str, tmp_path: Path, folder_tree: Path
) -> None:
    marker = tmp_path / "called"
    path = nested_os_system(tmp_path, marker)
    option = "checkpoint" if script == "evaluate.py" else "resume"
    result = run_script(
        script,
        [
            *FAST,
            "data=folder",
            f"data.root={folder_tree}",
            f"{option}={path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "detector.optimizer._target_ is 'os.system'" in result.stderr
    assert not marker.exists()

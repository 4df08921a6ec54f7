"""Bad input gets one clear line naming the problem and the fix, never a bare stack trace."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepsift.core.errors import UserError
from detectors import list_detectors, load_detector
from tests.conftest import FAST, run_script


def assert_one_clear_line(result, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr[-2000:])


def test_unknown_detector_name_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match=r"unknown detector 'nope'.*timm_classifier"):
        load_detector("nope")


def test_unknown_detector_on_the_command_line(tmp_path: Path) -> None:
    result = run_script("train.py", ["detector=nope", f"hydra.run.dir={tmp_path}"])
    assert_one_clear_line(result, "detector/nope", "timm_classifier")


def test_missing_dataset_path(tmp_path: Path) -> None:
    result = run_script(
        "train.py",
        [
            *FAST,
            "data=folder",
            f"data.root={tmp_path / 'absent'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert_one_clear_line(result, "error:", "absent", "data.root")


def test_missing_checkpoint(tmp_path: Path) -> None:
    result = run_script(
        "evaluate.py", [f"checkpoint={tmp_path / 'gone.pt'}", f"hydra.run.dir={tmp_path}"]
    )
    assert_one_clear_line(result, "error: checkpoint", "gone.pt", "does not exist")


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    result = run_script("evaluate.py", [f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert_one_clear_line(result, "error: checkpoint", "bad.pt", "cannot be read safely")


def test_pickled_code_is_never_unpickled(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save(
        {"format": "deepsift-checkpoint/1", "x": Path("/")}, evil
    )  # needs unpickling a class
    with pytest.raises(UserError, match="cannot be read safely"):
        load_detector(str(evil))


def test_numpy_metrics_beside_weights_load_but_numpy_objects_do_not(tmp_path: Path) -> None:
    """Training scripts save NumPy float metrics with the weights (CORE); those are data."""
    import numpy as np

    from deepsift.core.checkpoint import read_state_dict

    weights = {"w": torch.ones(2)}
    good = tmp_path / "epoch_3.pth"
    torch.save({"model": weights, "acc": np.float64(0.9), "auc": np.float32(0.8)}, good)
    assert torch.equal(read_state_dict(good)["w"], weights["w"])
    for name, payload in {
        "object_array.pth": {"model": weights, "x": np.array([None, 1], dtype=object)},
        "path.pth": {"model": weights, "x": Path("/")},
    }.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(UserError, match="cannot be read safely"):
            read_state_dict(tmp_path / name)


def test_checkpoint_target_outside_deepsift_is_refused(tmp_path: Path) -> None:
    crafted = tmp_path / "crafted.pt"
    torch.save(
        {
            "format": "deepsift-checkpoint/1",
            "detector": {"name": "x", "config": {"_target_": "os.system", "command": "true"}},
            "state_dict": {},
        },
        crafted,
    )
    with pytest.raises(UserError, match="refusing"):
        load_detector(str(crafted))


def test_foreign_weights_file_points_to_weights_option(tmp_path: Path) -> None:
    plain = tmp_path / "official.pth"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    with pytest.raises(UserError, match=r"not a deepsift checkpoint.*weights="):
        load_detector(str(plain))


def test_checkpoint_of_another_detector(tmp_path: Path) -> None:
    ckpt = tmp_path / "t.pt"
    torch.save(
        {
            "format": "deepsift-checkpoint/1",
            "detector": {
                "name": "timm_classifier",
                "config": {"_target_": "detectors.timm_classifier.TimmClassifier"},
            },
            "state_dict": {},
        },
        ckpt,
    )
    other = next(n for n in list_detectors() if n != "timm_classifier")
    result = run_script(
        "evaluate.py",
        [f"checkpoint={ckpt}", f"detector={other}", f"hydra.run.dir={tmp_path / 'run'}"],
    )
    assert_one_clear_line(result, "error:", "timm_classifier", other)


def test_weights_with_wrong_keys_name_them(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    torch.save({"module.not_a_layer.weight": torch.zeros(2)}, weights)
    with pytest.raises(UserError, match=r"missing keys: .*unexpected keys: not_a_layer\.weight"):
        load_detector("timm_classifier", weights=str(weights))

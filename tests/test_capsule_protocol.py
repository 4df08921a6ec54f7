"""DeepfakeBench's capsule checkpoints have deepsift's own key layout: what a reviewer is told.

A ``vgg_ext.* + fea_ext.* + routing_stats.*`` file may be DeepfakeBench's
``capsule_net`` checkpoint (256 px, cv2 INTER_CUBIC, mean = std = 0.5) or a deepsift
``capsule_forensics`` state dict (any preprocessing): the file cannot say which, so
``detectors.inspect`` says the protocol is not recorded and names the reproduce
experiment, loading it warns unless DeepfakeBench's input is in use, and that
experiment composes to exactly DeepfakeBench's input. The official Capsule-Forensics-v2
``capsule_<epoch>.pt`` (no VGG in it) keeps its own format and protocol.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from detectors import load_detector
from detectors.capsule_forensics import CapsuleForensics
from detectors.formats import CAPSULE_SHARED_LAYOUT
from detectors.inspect import describe, inspect_file
from detectors.preprocessing import DEEPFAKEBENCH_FACE_PREPROCESSING
from tests.official.images import reference_images
from tests.official.weights import HERE, write_official_file
from tests.test_official_parity import _logits

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENT = "experiment=reproduce/deepfakebench_capsule_forensics"


@pytest.fixture(scope="module")
def full_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("capsule") / "ckpt_best.pth"
    torch.save(CapsuleForensics().state_dict(), path)  # DeepfakeBench's save_ckpt: state_dict()
    return path


def test_inspect_says_the_protocol_is_not_recorded(full_layout: Path) -> None:
    result = inspect_file(full_layout)
    assert [f.name for f in result.formats] == [CAPSULE_SHARED_LAYOUT]
    text = describe(result)
    assert "not recorded in the file" in text
    assert EXPERIMENT in text
    assert "cv2.resize(INTER_CUBIC)" in text and "Normalize(0.5, 0.5)" in text


def test_official_capsule_file_keeps_its_own_format(full_layout: Path, tmp_path: Path) -> None:
    state = torch.load(full_layout, weights_only=True)
    official = {k: v for k, v in state.items() if not k.startswith("vgg_ext.")}
    torch.save(official, tmp_path / "capsule_21.pt")
    assert [f.name for f in inspect_file(tmp_path / "capsule_21.pt").formats] == [
        "Capsule-Forensics-v2"
    ]


def test_loading_warns_at_another_input(
    full_layout: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="detectors.capsule_forensics"):
        detector = load_detector("capsule_forensics", weights=str(full_layout))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "does not record its protocol" in message and EXPERIMENT in message
    assert "size=300" in message  # the input in use is named
    assert detector.preprocessing.size == 300  # nothing switched behind the user's back


def test_reproduce_experiment_is_deepfakebench_input(
    full_layout: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", [EXPERIMENT, f"data.root={tmp_path}"])
    preprocessing = OmegaConf.to_container(cfg.detector.preprocessing)
    with caplog.at_level(logging.INFO, logger="detectors.capsule_forensics"):
        detector = load_detector(
            "capsule_forensics", weights=str(full_layout), preprocessing=preprocessing
        )
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("the input in use is DeepfakeBench's" in r.getMessage() for r in caplog.records)
    got = detector.preprocessing.to_dict()
    for key, value in DEEPFAKEBENCH_FACE_PREPROCESSING.items():
        assert got[key] == (list(value) if isinstance(value, tuple) else value), key
    assert got["resize_to"] == 256


def test_deepfakebench_capsule_outputs_at_its_input(tmp_path: Path) -> None:
    """DeepfakeBench's CapsuleNetDetector (make_deepfakebench_capsule.py) on a file in its
    save_ckpt layout: deepsift matches it at DeepfakeBench's input and misses at the
    official Capsule-Forensics-v2 input, the one a bare file would otherwise get."""
    reference = json.loads((HERE / "deepfakebench" / "deepfakebench_capsule_net.json").read_text())
    path = write_official_file(reference, tmp_path / reference["filename"])
    images = reference_images(reference["images_seed"])
    expected = np.array(reference["outputs"]["logits"])
    dfb = dict(DEEPFAKEBENCH_FACE_PREPROCESSING)
    detector = load_detector("capsule_forensics", weights=str(path), preprocessing=dfb)
    got = _logits(detector, images, torch.float32)
    assert np.abs(got - expected).max() <= reference["tolerance"]["logit"]
    official_input = _logits(
        load_detector("capsule_forensics", weights=str(path)), images, torch.float32
    )
    assert np.abs(official_input - expected).max() > 10 * reference["tolerance"]["logit"]

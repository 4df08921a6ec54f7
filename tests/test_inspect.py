"""``python -m detectors.inspect``: the format, detector and protocol of a weights file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision

import detectors.inspect as inspect_module
from detectors.formats import FORMATS, formats_for
from detectors.inspect import inspect_file, main, verify
from tests.official.weights import load_reference, reference_names, write_official_file


def names(state: dict) -> list[str]:
    return [f.name for f in formats_for(state)]


def test_signatures_tell_the_layouts_apart() -> None:
    z = torch.zeros
    xception = {"backbone.conv1.weight": z(32, 3, 3, 3), "backbone.last_linear.weight": z(2, 8)}
    assert names(xception) == ["DeepfakeBench Xception / CORE"]
    spsl = {"backbone.conv1.weight": z(32, 4, 3, 3), "backbone.last_linear.weight": z(2, 8)}
    assert names(spsl) == ["DeepfakeBench SPSL"]
    assert names({"backbone.efficientnet._conv_stem.weight": z(1)}) == [
        "DeepfakeBench EfficientNet-B4"
    ]
    assert names({"efficientnet._conv_stem.weight": z(1)}) == ["icpr2020dfdc EfficientNetB4"]
    assert names({"weight": z(1, 768), "bias": z(1)}) == ["UnivFD linear head"]
    assert names({"weight": z(1, 1024), "bias": z(1)}) == [
        "ClipBased (Cozzolino et al.) linear head"
    ]
    assert names({"conv1.weight": z(1)}) == []
    assert len({f.name for f in FORMATS}) == len(FORMATS)


def test_a_cnndetection_file_is_found_and_loads_into_cnnspot(tmp_path: Path, capsys) -> None:
    """A CNNDetection training checkpoint ({'model': ResNet-50 with one output})."""
    net = torchvision.models.resnet50(num_classes=1)
    path = tmp_path / "blur_jpg_prob0.5.pth"
    torch.save({"model": net.state_dict(), "total_steps": 10}, path)
    result = inspect_file(path)
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.container.startswith("{'model': state dict")
    assert [f.name for f in result.formats] == ["CNNDetection ResNet-50 (also an LGrad classifier)"]
    verify(result)
    assert result.verified["cnnspot"] == "loads strictly"
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "load_detector('cnnspot'" in out and "official test-time input" in out


def test_unknown_and_unreadable_files_exit_1(tmp_path: Path, capsys) -> None:
    odd = tmp_path / "odd.pth"
    torch.save({"conv.weight": torch.zeros(1)}, odd)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file")
    assert main([str(odd), str(junk), str(tmp_path / "missing.pth")]) == 1
    out = capsys.readouterr().out
    assert "none of the known formats" in out
    assert "cannot be read safely" in out and "does not exist" in out


def test_a_deepsift_checkpoint_names_its_detector(tmp_path: Path, capsys) -> None:
    from deepsift.core.checkpoint import save_checkpoint

    path = tmp_path / "best.pt"
    save_checkpoint(path, {"detector": {"name": "durall", "config": {}}, "state_dict": {}})
    assert main([str(path)]) == 0
    assert "a deepsift checkpoint of detector 'durall'" in capsys.readouterr().out


@pytest.mark.skipif(not reference_names(), reason="no official references in tests/official")
@pytest.mark.parametrize("name", reference_names())
def test_each_official_reference_file_is_recognised(name: str, tmp_path: Path) -> None:
    reference = load_reference(name)
    path = write_official_file(reference, tmp_path / reference.get("filename", f"{name}.pth"))
    result = inspect_file(path)
    assert any(reference["detector"] in f.detectors for f in result.formats), (
        f"{name}: inspect found {[f.name for f in result.formats]}"
    )


def test_published_checksums_are_sha256_of_released_files(tmp_path: Path, monkeypatch) -> None:
    """Each published checksum is a SHA-256 named after one of its format's released files,
    and a file with that digest is reported as the released one."""
    assert any(f.sha256 for f in FORMATS)  # ClipBased's Git LFS pointers
    for fmt in FORMATS:
        for name, digest in fmt.sha256.items():
            assert len(digest) == 64 and int(digest, 16) >= 0, (fmt.name, name)
            assert Path(name).name in fmt.released, (fmt.name, name)
    head = {"weight": torch.zeros(1, 1024), "bias": torch.zeros(1)}
    path = tmp_path / "weights.pth"
    torch.save(head, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert inspect_file(path).published is None
    clipbased = next(f for f in FORMATS if f.sha256)
    pretend = type(clipbased)(**{**clipbased.__dict__, "sha256": {"weights/x/weights.pth": digest}})
    monkeypatch.setattr(inspect_module, "FORMATS", (pretend,))
    assert inspect_file(path).published == f"{clipbased.name}: weights/x/weights.pth"

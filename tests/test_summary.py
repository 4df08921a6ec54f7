"""``python -m datasets.summary``: counts per split x label x generator, and missing files."""

from __future__ import annotations

import json
import runpy
import sys
import warnings
from pathlib import Path

import pytest

from datasets.crop_cache import strip_suffix
from datasets.summary import main
from tests.test_datasets_face import make_ffpp_tree
from tests.test_datasets_synthetic import make_forensynths

GONE = "manipulated_sequences/NeuralTextures/c23/videos/007_006.mp4"


def ffpp_with_missing_video(tmp_path: Path) -> Path:
    """The small FF++ tree with one test video (and its crops) deliberately absent."""
    root = make_ffpp_tree(tmp_path / "ffpp")
    (root / GONE).unlink()
    for f in (root / "deepsift_crops" / strip_suffix(GONE)).iterdir():
        f.unlink()
    return root


def test_summary_lists_missing_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = ffpp_with_missing_video(tmp_path)
    out = tmp_path / "out"
    summary = main(["data=ffpp", f"data.root={root}", "--out", str(out)])
    written = json.loads((out / "summary.json").read_text())
    assert written == summary
    assert written["missing"] == [str(root / GONE)]
    assert written["missing_crops"] == [GONE]
    test = written["test"]
    # counts are of the videos on disk; "expected" is what the split files name
    assert (test["unit"], test["real"], test["fake"], test["missing"]) == ("videos", 2, 7, 1)
    assert test["expected"] == 10
    assert test["by_generator"] == {
        "Deepfakes": 2,
        "Face2Face": 2,
        "FaceSwap": 2,
        "NeuralTextures": 1,
        "real": 2,
    }
    assert test["expected_by_generator_label"]["NeuralTextures"] == {"real": 0, "fake": 2}
    assert test["frames"] == {
        "real": 4,
        "fake": 14,
        "by_generator": {
            "Deepfakes": 4,
            "Face2Face": 4,
            "FaceSwap": 4,
            "NeuralTextures": 2,
            "real": 4,
        },
        "by_generator_label": test["frames"]["by_generator_label"],
        "videos_without_crops": 1,
    }
    assert (written["train"]["real"], written["train"]["fake"]) == (4, 16)
    printed = capsys.readouterr().out
    assert str(root / GONE) in printed and "1 files named by the split" in printed
    assert "NeuralTextures" in printed


def test_summary_images_and_splits_option(tmp_path: Path) -> None:
    root = make_forensynths(tmp_path / "cnn")
    summary = main(
        ["data=forensynths", f"data.root={root}", "--splits", "test", "--out", str(tmp_path)]
    )
    assert set(summary) == {"test", "missing"}
    assert summary["test"]["unit"] == "images"
    assert (summary["test"]["real"], summary["test"]["fake"]) == (5, 4)
    assert summary["test"]["by_generator"] == {"biggan": 2, "progan": 2, "real": 5}
    assert str(root / "test" / "stylegan") in summary["missing"]


def test_summary_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([f"data.root={tmp_path}"])
    assert exit_info.value.code == 2
    assert "pass data=<name>" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data=ffpp", f"data.root={tmp_path / 'absent'}", "--out", str(tmp_path)])
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data=nosuchdata", f"data.root={tmp_path}"])
    assert "cannot compose the config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data=ffpp", f"data.root={tmp_path}", "data.compression=c99"])
    assert "raw (alias c0), c23 or c40" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_summary_module_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m datasets.summary`` (run in-process: a fresh interpreter costs seconds of imports)."""
    root = ffpp_with_missing_video(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["python -m datasets.summary", "data=ffpp", f"data.root={root}", "--splits=test"]
    monkeypatch.setattr(sys, "argv", argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already imported
        runpy.run_module("datasets.summary", run_name="__main__")
    assert json.loads((tmp_path / "summary.json").read_text())["missing"] == [str(root / GONE)]
    assert "wrote summary.json" in capsys.readouterr().out

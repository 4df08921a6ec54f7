"""``datasets.preprocess`` with windows of consecutive frames (``clip_len``, ``clips_per_video``,
``stride``) for clip detectors, and :func:`datasets.clips.clip_records` cutting clips inside
them. Videos are made like tests/test_preprocess.py's (real FF++ example faces, dlib)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from datasets.clips import clip_records
from datasets.crop_cache import read_crop_index
from datasets.faceforensics import FaceForensics
from datasets.preprocess import Options, format_summary
from datasets.video import window_indices
from deepsift.core.errors import UserError
from tests.test_faces import EXAMPLES, have_dlib
from tests.test_preprocess import FAKE, REAL_A, REAL_B, example_frames, run, write_video

WINDOWED = ("clip_len=3", "clips_per_video=2", "stride=2")  # windows [3, 5, 7], [13, 15, 17]


def test_windows_are_evenly_spaced_runs_of_strided_frames() -> None:
    assert window_indices(20, 3, 2, 2) == [[3, 5, 7], [13, 15, 17]]
    assert window_indices(100, 4, 1, 1) == [[48, 49, 50, 51]]  # one window: the middle
    assert window_indices(5, 3, 2, 2) == [[0, 2, 4]]  # exactly one window fits: kept once
    assert window_indices(4, 3, 2, 2) == []  # shorter than one window
    starts = [w[0] for w in window_indices(300, 8, 5, 1)]
    assert np.ptp(np.diff(starts)) <= 1 and starts[0] < 60 and starts[-1] > 240
    with pytest.raises(UserError, match="stride=0"):
        Options(clip_len=4, stride=0)
    # caches made without windows keep their settings hash (no needless redo)
    assert Options().fingerprint() == Options(clips_per_video=9).fingerprint()
    assert Options().fingerprint() != Options(clip_len=4).fingerprint()


def _tree(root: Path) -> Path:
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "test.json").write_text(json.dumps([["000", "001"]]))
    for split in ("train", "val"):
        (root / "splits" / f"{split}.json").write_text("[]")
    write_video(root / REAL_A, example_frames("ex_original", 20))
    write_video(root / REAL_B, example_frames("ex_original", 4))  # shorter than one window
    write_video(root / FAKE, example_frames("ex_deepfakes", 20))
    return root


def test_windowed_preprocessing_resumes_and_feeds_clips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not have_dlib() or not (EXAMPLES / "ex_original.png").is_file():
        pytest.skip("needs dlib and the FF++ example frames")
    root = _tree(tmp_path / "ffpp")
    with caplog.at_level(logging.WARNING, logger="datasets.preprocess"):
        summary = run(root, *WINDOWED)
    assert (summary["done"], summary["failed"], summary["too_short"]) == (2, 0, 1)
    # the short video: one clear line naming it and the fix, recorded in the summary
    short = [r.getMessage() for r in caplog.records if "shorter than one window" in r.getMessage()]
    assert len(short) == 1 and REAL_B in short[0] and "lower clip_len or stride" in short[0]
    assert summary["short"][0]["video"].endswith(REAL_B)
    assert "videos shorter than one window: 1" in format_summary(summary)
    crops = root / "deepsift_crops"
    index = read_crop_index(crops)
    assert index is not None
    assert [(x["frame"], x["status"]) for x in index[REAL_B]] == [(None, "too_short")]
    for rel in (REAL_A, FAKE):
        lines = index[rel]
        assert [x["frame"] for x in lines] == [3, 5, 7, 13, 15, 17]
        assert [x["window"] for x in lines] == [0, 0, 0, 1, 1, 1]
        assert all(x["status"] == "ok" and x["window_stride"] == 2 for x in lines)
        assert lines[0]["clip"] == {"clip_len": 3, "clips_per_video": 2, "stride": 2}
    pngs = {p: p.stat().st_mtime_ns for p in crops.rglob("*.png")}
    assert len(pngs) == 12

    # a re-run skips every finished video, the short one included, and rewrites nothing
    again = run(root, *WINDOWED)
    assert (again["done"], again["skipped"], again["too_short"]) == (0, 3, 0)
    assert {p: p.stat().st_mtime_ns for p in crops.rglob("*.png")} == pngs
    # other windows are other settings: the videos are redone
    redo = run(root, "clip_len=2", "clips_per_video=2", "stride=1")
    assert (redo["done"], redo["skipped"], redo["too_short"]) == (3, 0, 0)
    run(root, *WINDOWED)  # back to the windows above

    records = FaceForensics(str(root), methods=["Deepfakes"]).records("test")
    assert len(records) == 12
    clips, skipped = clip_records(records, clip_len=2, clip_stride=1, clips_per_video=4)
    assert skipped == [] and len(clips) == 8  # 2 videos x 2 windows x 2 clips
    for clip in clips:
        frames = [int(f) for f in clip.extra["frames"]]
        assert np.diff(frames).tolist() == [2]  # consecutive cached frames, never across windows
        assert frames[0] in (3, 5, 13, 15)
    # a clip longer than a window: skipped with the reason and the fix, not cut across windows
    clips, skipped = clip_records(records, clip_len=4, clip_stride=1, clips_per_video=4)
    assert clips == [] and len(skipped) == 2
    assert "window of consecutive frames has 3" in skipped[0][1] and "clip_len=" in skipped[0][1]

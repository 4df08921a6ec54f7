"""The face preprocessing pipeline: frame sampling, crop cache, index, resume, loaders.

Tiny mp4 videos are written on the fly from the real FaceForensics++ frames in
``../shared`` (skipped without them, or without dlib and its models).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import video as video_module
from datasets.crop_cache import read_crop_index
from datasets.faceforensics import FaceForensics
from datasets.faces import face_detector
from datasets.preprocess import (
    INDEX_NAME,
    Job,
    Options,
    _count,
    compose_config,
    main,
    options_from,
    process_video,
    workers_from,
)
from datasets.video import VideoError, frame_indices, sample_frames
from deepsift.core.errors import UserError
from deepsift.core.records import Record
from tests.test_faces import EXAMPLES, have_dlib

N_FRAMES = 12  # frames per test video
SAMPLED = 4  # frames=4: indices 1, 4, 7, 10


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """An mp4 (MPEG-4 part 2) of RGB or gray uint8 frames."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    color = frames[0].ndim == 3
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h), isColor=color)
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]) if color else frame)
    writer.release()
    return path


def example_frames(name: str, n: int = N_FRAMES) -> list[np.ndarray]:
    """``n`` 320 x 240 frames around the face of an example, sliding 2 px per frame."""
    image = np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("RGB"))[20:260, 200:520]
    return [np.roll(image, 2 * i, axis=1) for i in range(n)]


# ---------------------------------------------------------------------------------------
# frame sampling
# ---------------------------------------------------------------------------------------


def test_frame_indices_cover_the_whole_video() -> None:
    assert frame_indices(100, 4) == [12, 37, 62, 87]
    assert frame_indices(12, 4) == [1, 4, 7, 10]
    for total, n in ((300, 32), (31, 30), (1000, 7)):
        idx = frame_indices(total, n)
        assert len(idx) == n == len(set(idx)) and idx == sorted(idx)
        assert idx[0] < total / n and idx[-1] >= total - total / n  # not the first n frames
        gaps = np.diff(idx)
        assert gaps.max() - gaps.min() <= 1
    assert frame_indices(3, 5) == [0, 1, 2] and frame_indices(5, None) == list(range(5))
    assert frame_indices(0, 4) == []


def marked_video(path: Path, n: int = 30) -> Path:
    """Frame ``i`` is a flat grey of level ``8 i``, so a decoded frame tells its index."""
    return write_video(path, [np.full((48, 64, 3), 8 * i, dtype=np.uint8) for i in range(n)])


def test_sample_frames_reads_the_chosen_frames(tmp_path: Path) -> None:
    path = marked_video(tmp_path / "marked.mp4")
    got = sample_frames(str(path), 5)
    assert got.indices == got.wanted == frame_indices(30, 5) == [3, 9, 15, 21, 27]
    assert (got.total, got.announced, got.passes, got.truncated) == (30, 30, 1, False)
    levels = [float(f.mean()) for f in got.frames]
    np.testing.assert_allclose(levels, [8 * i for i in got.indices], atol=3)
    assert got.frames[0].shape == (48, 64, 3) and got.frames[0].dtype == np.uint8


@pytest.mark.parametrize("announced", [0, 18, 45])
def test_wrong_container_counts_are_corrected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, announced: int
) -> None:
    path = marked_video(tmp_path / "marked.mp4")
    monkeypatch.setattr(video_module, "_announced", lambda cap: announced)
    got = sample_frames(str(path), 5)
    assert got.indices == frame_indices(30, 5) and got.total == 30
    np.testing.assert_allclose([f.mean() for f in got.frames], [8 * i for i in got.indices], atol=3)
    assert got.passes == 2 and got.truncated == (announced == 45)


def test_unreadable_video_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all" * 20)
    with pytest.raises(VideoError, match="cannot open"):
        sample_frames(str(bad), 4)
    with pytest.raises(VideoError):
        sample_frames(str(tmp_path / "absent.mp4"), 4)


def test_options_are_checked() -> None:
    with pytest.raises(UserError, match="faces='biggest'"):
        Options(faces="biggest")
    with pytest.raises(UserError, match=r"margin=0\.5"):
        Options(margin=0.5)
    assert Options().fingerprint() == Options().fingerprint() != Options(margin=1.5).fingerprint()


VIDEO_DATA = ("ffpp", "dfd", "celebdf_v1", "celebdf_v2", "dfdc", "dfdc_preview")


def test_config_composes_with_every_video_benchmark(tmp_path: Path) -> None:
    for data in VIDEO_DATA:
        cfg = compose_config([f"data={data}", f"data.root={tmp_path}", "margin=1.5"])
        assert cfg.data.crops_root == f"{tmp_path}/deepsift_crops"
        assert options_from(cfg) == Options(margin=1.5)  # the yaml and the code agree
        assert workers_from(cfg.num_workers) >= 1 and workers_from(0) == 0


def test_command_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([f"data.root={tmp_path}"])
    assert exit_info.value.code == 2
    assert "pass data=<name>" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data=folder", f"data.root={tmp_path}"])
    assert "not a video benchmark" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data=ffpp", f"data.root={tmp_path}", "faces=every"])
    assert "faces='every'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# the pipeline on a small FF++ tree
# ---------------------------------------------------------------------------------------

REAL_A = "original_sequences/youtube/c23/videos/000.mp4"
REAL_B = "original_sequences/youtube/c23/videos/001.mp4"
FAKE = "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4"
MASK = "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4"
BROKEN = "manipulated_sequences/Deepfakes/c23/videos/001_000.mp4"
GOOD = (REAL_A, REAL_B, FAKE)


def make_tree(root: Path) -> Path:
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "test.json").write_text(json.dumps([["000", "001"]]))
    for split in ("train", "val"):
        (root / "splits" / f"{split}.json").write_text("[]")
    write_video(root / REAL_A, example_frames("ex_original"))
    blank = [np.full((240, 320, 3), 90, dtype=np.uint8)] * 3  # frame 1 of 1, 4, 7, 10: no face
    write_video(root / REAL_B, blank + example_frames("ex_original")[3:])
    write_video(root / FAKE, example_frames("ex_deepfakes"))
    masks = [f[..., 0] for f in example_frames("ex_deepfakes_mask")]
    write_video(root / MASK, masks)
    broken = write_video(root / BROKEN, example_frames("ex_neuraltextures"))
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # truncated download
    return root


def run(root: Path, *extra: str, crops: Path | None = None) -> dict:
    args = [
        "data=ffpp",
        f"data.root={root}",
        "data.methods=[Deepfakes]",
        f"frames={SAMPLED}",
        "num_workers=0",
        "--quiet",
        *extra,
    ]
    if crops is not None:
        args.append(f"data.crops_root={crops}")
    return main(args)


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.suffix in (".png", ".npy")
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    if not have_dlib() or not (EXAMPLES / "ex_original.png").is_file():
        pytest.skip("needs dlib and the FF++ example frames")
    root = make_tree(tmp_path_factory.mktemp("ffpp"))
    handler = _ListHandler()
    logging.getLogger("datasets.preprocess").addHandler(handler)
    try:
        summary = run(root, "num_workers=2")
    finally:
        logging.getLogger("datasets.preprocess").removeHandler(handler)
    return root, summary, handler.messages


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.shared
def test_first_run_writes_crops_landmarks_masks_and_index(first_run: tuple) -> None:
    root, summary, errors = first_run
    assert (summary["videos"], summary["done"], summary["failed"], summary["skipped"]) == (
        4,
        3,
        1,
        0,
    )
    assert summary["frames_with_face"] == 11 and summary["frames_without_face"] == 1
    # the truncated video: one logged error naming it, the rest went on
    assert len(errors) == 1 and BROKEN in errors[0]
    index = read_crop_index(root / "deepsift_crops")
    assert index is not None and set(index) == {*GOOD, BROKEN}
    assert [(x["frame"], x["status"]) for x in index[BROKEN]] == [(None, "error")]
    assert [(x["frame"], x["status"]) for x in index[REAL_B]] == [
        (1, "no_face"),
        (4, "ok"),
        (7, "ok"),
        (10, "ok"),
    ]
    for rel in GOOD:
        lines = index[rel]
        assert [x["frame"] for x in lines] == [1, 4, 7, 10]
        assert all(x["frames"] == SAMPLED and x["total"] == N_FRAMES for x in lines)
        for line in (x for x in lines if x["status"] == "ok"):
            assert line["detector"] == "dlib_hog" and line["margin"] == 1.3 and line["face"] == 0
            x0, y0, x1, y1 = line["box"]
            assert 60 < x0 < x1 < 260 and 20 < y0 < y1 < 200 and line["score"] > 0
            crop = np.asarray(Image.open(root / "deepsift_crops" / line["crop"]))
            assert crop.shape == (256, 256, 3)
            lm = np.load(root / "deepsift_crops" / line["landmarks"])
            assert lm.shape == (68, 2) and lm.dtype == np.float32
            assert lm.min() > 0 and lm.max() < 256
            assert line["crop"].endswith(f"/{line['frame']:06d}.png")


@pytest.mark.shared
def test_mask_crops_match_the_fake_crops(first_run: tuple) -> None:
    root, _, _ = first_run
    crops = root / "deepsift_crops"
    fake = {x["frame"]: x for x in read_crop_index(crops)[FAKE]}
    assert len(fake) == SAMPLED
    for line in fake.values():
        assert (
            line["mask"]
            == f"manipulated_sequences/Deepfakes/masks/videos/000_001/{line['frame']:06d}.png"
        )
        mask = np.asarray(Image.open(crops / line["mask"]))
        assert mask.shape == (256, 256)  # one channel, the crop's size
        lm = np.load(crops / line["landmarks"])
        # the manipulated region (the Deepfakes mask box) covers the face's landmarks
        inside = mask[lm[17:, 1].astype(int), lm[17:, 0].astype(int)]
        assert (inside > 127).mean() > 0.9
        assert (mask > 127).mean() < 0.7  # and not the whole crop


@pytest.mark.shared
def test_crops_are_stable_across_runs_and_worker_counts(first_run: tuple, tmp_path: Path) -> None:
    root, _, _ = first_run
    summary = run(root, crops=tmp_path / "again")  # 0 workers this time
    assert summary["done"] == 3
    assert digests(tmp_path / "again") == digests(root / "deepsift_crops")


@pytest.mark.shared
def test_resume_skips_what_is_done_and_completes_the_rest(first_run: tuple, tmp_path: Path) -> None:
    root, _, _ = first_run
    crops = tmp_path / "crops"
    shutil.copytree(root / "deepsift_crops", crops)
    before = digests(crops)
    mtimes = {p: p.stat().st_mtime_ns for p in crops.rglob("*.png")}
    second = run(root, crops=crops)
    assert (second["done"], second["skipped"], second["failed"]) == (
        0,
        3,
        1,
    )  # the broken one is retried
    assert {p: p.stat().st_mtime_ns for p in crops.rglob("*.png")} == mtimes

    # a run killed while writing REAL_B: its lines cut mid-way, its crops half written
    index = crops / INDEX_NAME
    kept = [x for x in index.read_text().splitlines() if json.loads(x)["video"] != REAL_B]
    partial = next(
        x for x in (root / "deepsift_crops" / INDEX_NAME).read_text().splitlines() if REAL_B in x
    )
    index.write_text("\n".join(kept) + "\n" + partial[: len(partial) // 2])
    (crops / "original_sequences/youtube/c23/videos/001/000007.png").unlink()
    third = run(root, crops=crops)
    assert (third["done"], third["skipped"]) == (1, 2)
    assert digests(crops) == before
    lines = [json.loads(x) for x in index.read_text().splitlines()]  # every line parses again
    assert sum(x["video"] == REAL_B for x in lines) == SAMPLED

    # other settings: the videos are redone and the old crops removed
    fourth = run(root, "frames=2", crops=crops)
    assert fourth["done"] == 3
    assert sorted(
        p.name for p in (crops / "original_sequences/youtube/c23/videos/000").glob("*.png")
    ) == [
        "000003.png",
        "000009.png",
    ]


@pytest.mark.shared
def test_loaders_read_the_cache(first_run: tuple, tmp_path: Path) -> None:
    root, _, _ = first_run
    source = FaceForensics(str(root), methods=["Deepfakes"])
    records = source.records("test")
    assert source.missing("test") == [BROKEN]
    assert len(records) == 4 + 3 + 4
    assert {r.video for r in records} == {"youtube/000", "youtube/001", "Deepfakes/000_001"}
    for r in records:
        assert Path(r.path).is_file() and Path(r.extra["landmarks"]).is_file()
        assert r.extra["face"] == 0 and len(r.extra["box"]) == 4
        assert ("mask" in r.extra) == (r.label == 1)
    assert [r.extra["frame"] for r in records if r.video == "youtube/001"] == [
        "000004",
        "000007",
        "000010",
    ]
    capped = FaceForensics(str(root), methods=["Deepfakes"], max_frames=2).records("test")
    assert [r.extra["frame"] for r in capped if r.video == "youtube/000"] == ["000001", "000010"]
    # without the index the folders are scanned, with the same files
    copy = tmp_path / "ffpp"
    shutil.copytree(root, copy)
    (copy / "deepsift_crops" / INDEX_NAME).unlink()
    scanned = FaceForensics(str(copy), methods=["Deepfakes"]).records("test")
    assert [files(r, copy) for r in scanned] == [files(r, root) for r in records]


def files(record: Record, root: Path) -> tuple[str, ...]:
    """A record's crop, landmarks and mask paths, relative to ``root``."""
    paths = (record.path, record.extra["landmarks"], record.extra.get("mask"))
    return tuple(Path(p).relative_to(root).as_posix() if p else "" for p in paths)


@pytest.mark.shared
def test_every_face_on_request(tmp_path: Path) -> None:
    if not have_dlib() or not (EXAMPLES / "ex_original.png").is_file():
        pytest.skip("needs dlib and the FF++ example frames")
    face = example_frames("ex_original", 1)[0]
    small = np.asarray(Image.fromarray(face).resize((192, 144), Image.BILINEAR))
    frame = np.full((240, 512, 3), 128, dtype=np.uint8)
    frame[:, :320], frame[48:192, 320:] = face, small
    path = write_video(tmp_path / "two.mp4", [frame] * 3)
    detector = face_detector()
    result = process_video(
        Job("two.mp4", str(path)), Options(frames=1, faces="all"), tmp_path / "c", detector
    )
    assert [(x["frame"], x["face"]) for x in result.lines] == [(1, 0), (1, 1)]
    assert sorted(p.name for p in (tmp_path / "c" / "two").iterdir()) == [
        "000001.npy", "000001.png", "000001_1.npy", "000001_1.png",
    ]  # fmt: skip
    largest = process_video(Job("two.mp4", str(path)), Options(frames=1), tmp_path / "d", detector)
    assert [x["face"] for x in largest.lines] == [0] and largest.lines[0]["box"] == result.lines[0][
        "box"
    ]


@pytest.mark.shared
def test_a_video_shorter_than_announced_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not have_dlib() or not (EXAMPLES / "ex_original.png").is_file():
        pytest.skip("needs dlib and the FF++ example frames")
    path = write_video(tmp_path / "short.mp4", example_frames("ex_original", 6))
    monkeypatch.setattr(video_module, "_announced", lambda cap: 40)  # as a cut-off file says
    result = process_video(
        Job("short.mp4", str(path)), Options(frames=2), tmp_path / "c", face_detector()
    )
    assert result.error is None and "decoded 6 of the 40 frames" in (result.truncated or "")
    assert [(x["frame"], x["status"], x["truncated"]) for x in result.lines] == [
        (1, "ok", True),
        (4, "ok", True),
    ]
    summary = {
        k: 0
        for k in (
            "done",
            "truncated",
            "faces",
            "frames_with_face",
            "frames_without_face",
            "frame_errors",
            "failed",
        )
    }
    summary["errors"] = []
    with caplog.at_level(logging.ERROR, logger="datasets.preprocess"):
        _count(summary, result)
    assert summary["truncated"] == 1 and str(path) in caplog.text

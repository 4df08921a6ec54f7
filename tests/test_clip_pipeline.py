"""Clip detectors through datasets.preprocess, train, evaluate and score.py.

Two caches in Celeb-DF's layout (``<crops_root>/<folder>/<video>/<frame>.png`` plus
``index.jsonl``):

* ``celeb_cache`` is written here line by line, as ``datasets.preprocess`` writes it (the
  videos absent, as after preprocessing), for the exact-frame checks and the clip_mean run
  of train.py / evaluate.py as scripts; one video is shorter than one clip (skipped and
  listed), one has a crop file deleted (that clip skipped and listed, never fatal);
* ``preprocessed_cache`` is a tree of videos of a drawn face run through
  ``datasets.preprocess`` (windows and mouth crops; the face detector a stub returning the
  drawn face's box and landmarks), one video shorter than one window, then one crop and
  one mouth crop deleted; every clip detector of ``tests/video_detectors.py`` trains on
  it, is evaluated and scores videos with score.py from its checkpoint.

``windowed_cache`` has windows shorter than a detector's clip in some videos.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.celebdf import CelebDF
from datasets.clips import clip_records, face_tracks
from datasets.crop_cache import MOUTH_DIR
from datasets.splits import bucket
from deepsift.core.records import CLIP_FRAMES, Record, RecordDataset
from tests.conftest import run_script

pytestmark = pytest.mark.slow

CLIP = ["detector.clip_len=3", "detector.clip_stride=2"]  # one clip spans 5 cached frames
TINY = [
    "detector=clip_mean",
    "detector.backbone=resnet10t",
    "detector.size=32",
    *CLIP,
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.batch_size=4",
    "trainer.eval_batch_size=8",
    "trainer.num_workers=0",
    "logger=none",
    "metrics.plots=false",
    "metrics.clips_per_video=2",
]
FRAMES = 8
VAL = 0.5


def _ids(in_val: bool, n: int) -> list[int]:
    return [k for k in range(100) if (bucket(f"id{k}") < VAL) == in_val][:n]


def _write_video(
    crops: Path, rel: str, frames: int, label: int, rng, index: list, window_len: int = 0
) -> None:
    """``frames`` cached crops 10 video frames apart, in one window (or windows of
    ``window_len``, 100 frames between windows), as ``datasets.preprocess`` writes them."""
    folder = crops / rel
    folder.mkdir(parents=True)
    for f in range(frames):
        window = f // window_len if window_len else 0
        number = 10 * f + 100 * window
        tone = 170 if label else 80
        pixels = np.clip(rng.normal(tone, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{number:06d}.png")
        # the mouth crop (datasets.preprocess mouths=true): 96 x 96 grayscale, in _mouth/
        (folder / MOUTH_DIR).mkdir(exist_ok=True)
        mouth = np.clip(rng.normal(tone, 30, (96, 96)), 0, 255).astype(np.uint8)
        Image.fromarray(mouth).save(folder / MOUTH_DIR / f"{number:06d}.png")
        box = [10.0 + f, 10.0, 60.0 + f, 60.0]
        index.append(
            {"video": f"{rel}.mp4", "run": "r1", "status": "ok", "frame": number, "face": 0,
             "crop": f"{rel}/{number:06d}.png", "box": box, "window": window,
             "window_stride": 10, "mouth": f"{rel}/{MOUTH_DIR}/{number:06d}.png"}
        )  # fmt: skip


@pytest.fixture(scope="module")
def celeb_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("celebdf")
    crops = root / "deepsift_crops"
    rng = np.random.default_rng(0)
    index: list[dict] = []
    tests = []
    for k in _ids(False, 3) + _ids(True, 2):  # train, then val identities
        _write_video(crops, f"Celeb-real/id{k}_0000", FRAMES, 0, rng, index)
        _write_video(crops, f"Celeb-synthesis/id{k}_id{k + 1}_0000", FRAMES, 1, rng, index)
    for k in range(200, 203):
        for rel, label in ((f"Celeb-real/id{k}_0001", 0), (f"Celeb-synthesis/id{k}_id1_0001", 1)):
            _write_video(crops, rel, FRAMES, label, rng, index)
            tests.append(f"{1 - label} {rel}.mp4")
    _write_video(crops, "Celeb-real/id203_0001", 2, 0, rng, index)  # shorter than one clip
    tests.append("1 Celeb-real/id203_0001.mp4")
    (crops / "Celeb-synthesis/id200_id1_0001/000000.png").unlink()  # a crop lost from the cache
    (crops / f"Celeb-synthesis/id201_id1_0001/{MOUTH_DIR}/000070.png").unlink()  # and a mouth
    (crops / "index.jsonl").write_text("".join(json.dumps(line) + "\n" for line in index))
    (root / "YouTube-real").mkdir()  # a folder without videos (the others: only cached)
    (root / "List_of_testing_videos.txt").write_text("\n".join(tests) + "\n")
    return root


def data_args(root: Path) -> list[str]:
    return ["data=celebdf_v2", f"data.root={root}", f"data.val_fraction={VAL}"]


def test_clip_records_follow_one_track_evenly_spaced(celeb_cache: Path) -> None:
    data = CelebDF(str(celeb_cache), val_fraction=VAL)
    frames = data.records("test")
    clips, skipped = clip_records(frames, clip_len=3, clip_stride=2, clips_per_video=2)
    assert [v for v, _ in skipped] == ["Celeb-real/id203_0001"]
    assert "datasets.preprocess" in skipped[0][1] and "detector.clip_len" in skipped[0][1]
    by_video: dict[str, list[Record]] = {}
    for clip in clips:
        by_video.setdefault(clip.video, []).append(clip)
    assert len(by_video) == 6 and all(len(c) == 2 for c in by_video.values())
    first, last = by_video["Celeb-real/id200_0001"]
    # 8 cached frames (0, 10, ..., 70), 3 frames 2 apart: the first and the last window
    assert first.extra["frames"] == ["000000", "000020", "000040"]
    assert last.extra["frames"] == ["000030", "000050", "000070"]
    assert first.label == 0 and len(first.extra[CLIP_FRAMES]) == 3


def test_videos_without_crops_are_listed_with_why_and_the_fix(tmp_path: Path) -> None:
    crops = tmp_path / "deepsift_crops"
    index: list[dict] = []
    _write_video(crops, "Celeb-real/id300_0001", 3, 0, np.random.default_rng(0), index)
    for rel, status in (
        ("Celeb-real/id301_0001", "too_short"),
        ("Celeb-real/id302_0001", "no_face"),
    ):
        index.append({"video": f"{rel}.mp4", "run": "r1", "status": status, "frame": None})
    (crops / "index.jsonl").write_text("".join(json.dumps(line) + "\n" for line in index))
    (tmp_path / "List_of_testing_videos.txt").write_text(
        "".join(f"1 Celeb-real/id{k}_0001.mp4\n" for k in (300, 301, 302, 303))
    )
    why = dict(CelebDF(str(tmp_path), val_fraction=VAL).uncached("test"))
    assert set(why) == {f"Celeb-real/id{k}_0001" for k in (301, 302, 303)}
    assert "shorter than one preprocessing window" in why["Celeb-real/id301_0001"]
    assert "lower clip_len or stride" in why["Celeb-real/id301_0001"]
    assert "index status no_face" in why["Celeb-real/id302_0001"]
    assert "datasets.summary" in why["Celeb-real/id302_0001"]
    assert (
        "not in the face-crop cache; run python -m datasets.preprocess"
        in why["Celeb-real/id303_0001"]
    )


def test_face_tracks_split_two_faces_by_box_not_by_file_order() -> None:
    def crop(frame: int, face: int, x: float) -> Record:
        extra = {"frame": f"{frame:06d}_{face}", "face": face, "box": [x, 0.0, x + 10, 10.0]}
        return Record(f"{frame}_{face}.png", 0, video="v", extra=extra)

    # the detector lists the faces in a different order in every other frame
    records = [crop(f, (f + i) % 2, 100.0 * i + f) for f in range(4) for i in range(2)]
    tracks = face_tracks(records)
    assert len(tracks) == 2
    for track in tracks:
        xs = [r.extra["box"][0] for r in track]
        assert xs == sorted(xs) and max(xs) - min(xs) < 10  # one face, moving slowly


def test_missing_crop_skips_the_clip_with_the_fix(celeb_cache: Path) -> None:
    data = CelebDF(str(celeb_cache), val_fraction=VAL)
    clips, _ = clip_records(data.records("test"), 3, 2, 2)
    broken = next(c for c in clips if c.video == "Celeb-synthesis/id200_id1_0001")
    sample = RecordDataset([broken], lambda s: {"n": len(s["frames"])})[0]
    assert "error" in sample
    assert "Celeb-synthesis/id200_id1_0001" in sample["error"]
    assert "datasets.preprocess" in sample["error"]


def test_clip_detector_trains_and_evaluates(celeb_cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "train"
    result = run_script(
        "train.py",
        [*TINY, *data_args(celeb_cache), "eval_splits=[test]", f"hydra.run.dir={run_dir}"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "metrics_test.json").read_text())["metrics"]
    assert report["unit"] == "clip"
    # 6 long-enough videos x 2 clips, minus the clip with the deleted crop
    assert report["frame"]["n"] == 11
    assert report["video"]["n"] == 6
    skipped = {s["path"]: s["error"] for s in report["skipped"]}
    assert "Celeb-real/id203_0001" in skipped and "clip_len" in skipped["Celeb-real/id203_0001"]
    assert any("id200_id1_0001" in e and "missing" in e for e in skipped.values())
    listed = json.loads((run_dir / "clips_skipped_test.json").read_text())
    assert [v["video"] for v in listed] == ["Celeb-real/id203_0001"]
    assert "too short for one clip" in result.stderr + result.stdout

    eval_dir = tmp_path / "eval"
    result = run_script(
        "evaluate.py",
        [f"checkpoint={run_dir / 'best.pt'}", *data_args(celeb_cache), "logger=none",
         "trainer=cpu", "trainer.num_workers=0", "metrics.plots=false",
         "metrics.clips_per_video=2", f"hydra.run.dir={eval_dir}"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((eval_dir / "metrics_test.json").read_text())["metrics"]
    assert evaluated["unit"] == "clip" and evaluated["video"]["n"] == 6
    assert evaluated["frame"]["auc"] == pytest.approx(report["frame"]["auc"], abs=1e-6)

    # score.py with the checkpoint on a video: clips spaced as training saw them (the cache's
    # windows are 10 video frames a step, clip_stride 2: 20 video frames between clip frames)
    import torch

    from deepsift.app.score_cli import main as score_main
    from tests.test_score_clips import write_video

    assert torch.load(run_dir / "best.pt", weights_only=True)["window_stride"] == 10
    video = write_video(tmp_path / "v.avi", 60)
    out = tmp_path / "scores.jsonl"
    score_main([str(video), "--checkpoint", str(run_dir / "best.pt"), "--faces", "off",
                "--clips", "2", "--out", str(out), "--workers", "0", "--quiet"])  # fmt: skip
    *clips, record = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["clip"]["frames"] for c in clips] == [[0, 20, 40], [19, 39, 59]]
    assert record["kind"] == "video" and record["score"] is not None


def test_score_takes_a_clip_detector_on_tracked_faces() -> None:
    from deepsift.scoring.models import build_member

    overrides = {"backbone": "resnet10t", "size": 32, "clip_len": 2}
    member = build_member(detector="clip_mean", overrides=overrides)
    assert member.faces and member.face_crop is not None  # --faces auto: tracked face crops
    assert build_member(detector="clip_mean", overrides=overrides, faces="off").faces is False


def _hydra(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _flat(overrides: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys, so an override edits a config's mapping, not replaces it."""
    out = {}
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _clip_detectors() -> list[str]:
    from benchmarks.clip_cost import clip_detectors

    return clip_detectors()


WINDOW_STRIDE = 5  # preprocessed_cache's crops are 5 video frames apart


def _face_frames(frames: int, tone: int = 150) -> list[np.ndarray]:
    """``frames`` RGB 320 x 240 frames holding the face :class:`DrawnFace` finds."""
    import cv2

    from benchmarks.clip_cost import DrawnFace, H, W

    rng = np.random.default_rng(tone)
    outline = DrawnFace().face.landmarks[:17].astype(np.int32)
    out = []
    for _ in range(frames):
        frame = rng.integers(60, 120, (H, W, 3), dtype=np.uint8)
        cv2.fillConvexPoly(frame, outline, (tone + 30, tone, tone - 20))
        out.append(frame)
    return out


class _DrawnFaces:
    """datasets.preprocess's face detector here: the drawn face, with its 68 landmarks."""

    name = "drawn_face"

    def load(self) -> _DrawnFaces:
        return self

    def settings(self) -> dict:
        return {"detector": self.name}

    def detect(self, image: np.ndarray) -> list:
        from benchmarks.clip_cost import DrawnFace

        return [DrawnFace().face]


PREPROCESS = ["clip_len=8", "clips_per_video=1", f"stride={WINDOW_STRIDE}", "mouths=true",
              "size=64", "num_workers=0", "--quiet"]  # fmt: skip
VIDEO_FRAMES = 7 * WINDOW_STRIDE + 1  # one window of 8 frames WINDOW_STRIDE apart


@pytest.fixture(scope="module")
def preprocessed_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Celeb-DF video tree (videos of a drawn face, brighter in the fakes) through
    ``python -m datasets.preprocess`` with windows and mouth crops, the face detector a stub;
    then, as in :func:`celeb_cache`, one crop and one mouth crop lost from the cache."""
    from datasets import preprocess
    from tests.test_preprocess import write_video

    root = tmp_path_factory.mktemp("celebdf_videos")
    tests = []
    for k in [*_ids(False, 3), *_ids(True, 2), 200, 201, 202]:
        n = 1 if k >= 200 else 0
        for rel, label in (
            (f"Celeb-real/id{k}_000{n}", 0),
            (f"Celeb-synthesis/id{k}_id1_000{n}", 1),
        ):
            write_video(root / f"{rel}.mp4", _face_frames(VIDEO_FRAMES, 170 if label else 120))
            if k >= 200:
                tests.append(f"{1 - label} {rel}.mp4")
    short = "Celeb-real/id203_0001"  # shorter than one window: preprocess lists it, no crops
    write_video(root / f"{short}.mp4", _face_frames(20, 120))
    tests.append(f"1 {short}.mp4")
    (root / "YouTube-real").mkdir()
    (root / "List_of_testing_videos.txt").write_text("\n".join(tests) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preprocess, "face_detector", lambda **options: _DrawnFaces())
        summary = preprocess.main(["data=celebdf_v2", f"data.root={root}", *PREPROCESS])
    assert (summary["done"], summary["failed"], summary["too_short"]) == (16, 0, 1), summary
    crops = root / "deepsift_crops"
    sorted((crops / "Celeb-synthesis/id200_id1_0001").glob("*.png"))[0].unlink()
    sorted((crops / f"Celeb-synthesis/id201_id1_0001/{MOUTH_DIR}").glob("*.png"))[-1].unlink()
    return root


@pytest.fixture(scope="module")
def score_videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a video long enough for every tiny clip detector's clip, one too short for any)."""
    from tests.test_preprocess import write_video

    folder = tmp_path_factory.mktemp("score_videos")
    return (
        write_video(folder / "long.mp4", _face_frames(61)),
        write_video(folder / "short.mp4", _face_frames(9)),
    )


def _clip_args(name: str, overrides: dict) -> list[str]:
    return [
        f"detector={name}",
        *(f"++detector.{k}={_hydra(v)}" for k, v in _flat(overrides).items()),
        *[a for a in TINY if not a.startswith("detector")],
    ]


@pytest.mark.parametrize("name", _clip_detectors())
def test_every_clip_detector_trains_evaluates_and_scores(
    name: str,
    preprocessed_cache: Path,
    score_videos: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """train -> evaluate -> score.py on the trained checkpoint, in this process (the entry
    points' configs composed as Hydra composes them: train.py and evaluate.py add only
    ``hydra.main`` and the one-line errors, run as scripts by the clip_mean test above)."""
    from benchmarks.clip_cost import DrawnFace
    from deepsift.app import score_cli
    from deepsift.app.evaluation import evaluate
    from deepsift.app.training import train
    from deepsift.core.configs import compose
    from deepsift.scoring.faces import Fixed
    from detectors import detector_config, load_detector
    from tests.video_detectors import TINY as OVERRIDES

    if name not in OVERRIDES:
        pytest.fail(f"{name}: add CPU-small overrides to tests/video_detectors.py TINY")
    overrides = OVERRIDES[name]
    config = {**detector_config(name), **overrides}
    assert clip_span_of(config) <= FRAMES, f"{name}: a clip spans more than {FRAMES} frames"
    run_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    train(compose("train", [*_clip_args(name, overrides), *data_args(preprocessed_cache),
                            "eval_splits=[test]"], run_dir))  # fmt: skip
    report = json.loads((run_dir / "metrics_test.json").read_text())["metrics"]
    assert report["unit"] == "clip" and report["video"]["n"] == 6
    mouths = load_detector(name, **overrides).needs_mouth  # LipForensics read the mouth crops
    # 6 long-enough videos x 2 clips, minus the clip with the deleted crop (and the deleted
    # mouth crop's clip for a mouth reader)
    assert report["frame"]["n"] == (10 if mouths else 11)
    skipped = {s["path"]: s["error"] for s in report["skipped"]}
    assert any("id200_id1_0001" in e and "missing" in e for e in skipped.values()), skipped
    # the video preprocessing found shorter than one window: no crops, recorded with the fix
    assert "shorter than one preprocessing window" in skipped["Celeb-real/id203_0001"]
    assert "lower clip_len or stride" in skipped["Celeb-real/id203_0001"]
    if mouths:
        assert any(
            f"id201_id1_0001/{MOUTH_DIR}/{7 * WINDOW_STRIDE:06d}.png" in e for e in skipped.values()
        )

    evaluate(compose("eval", [f"checkpoint={run_dir / 'best.pt'}", *data_args(preprocessed_cache),
                              "logger=none", "trainer=cpu", "trainer.num_workers=0",
                              "metrics.plots=false", "metrics.clips_per_video=2"], eval_dir))  # fmt: skip
    evaluated = json.loads((eval_dir / "metrics_test.json").read_text())["metrics"]
    assert evaluated["unit"] == "clip" and evaluated["video"]["n"] == 6
    assert evaluated["frame"]["n"] == report["frame"]["n"]
    assert evaluated["frame"]["auc"] == pytest.approx(report["frame"]["auc"], abs=1e-6)
    listed = json.loads((eval_dir / "clips_skipped_test.json").read_text())
    assert [v["video"] for v in listed] == ["Celeb-real/id203_0001"]

    # score.py on videos with the checkpoint; the face detector is the drawn face's stub
    monkeypatch.setattr(score_cli, "face_factory", lambda *a, **k: Fixed(DrawnFace()))
    long, short = score_videos
    out = tmp_path / "scores.jsonl"
    summary = score_cli.main([str(long), str(short), "--checkpoint", str(run_dir / "best.pt"),
                              "--clips", "2", "--out", str(out), "--workers", "0", "--quiet",
                              "--no-provenance", "--no-pdq"])  # fmt: skip
    assert summary["items"] == 2
    records = [json.loads(line) for line in out.read_text().splitlines()]
    clips = [r for r in records if r["kind"] == "clip"]
    videos = {Path(r["path"]).name: r for r in records if r["kind"] == "video"}
    clip_len, clip_stride = int(config["clip_len"]), int(config.get("clip_stride", 1))
    assert len(clips) == 2 and all(Path(c["path"]).name == "long.mp4" for c in clips)
    for clip in clips:  # clip_len frames, spaced as training saw them, of the tracked face
        frames = clip["clip"]["frames"]
        assert len(frames) == clip_len
        assert set(np.diff(frames).tolist()) == {clip_stride * WINDOW_STRIDE}
        assert len(clip["clip"]["boxes"]) == clip_len and 0 <= clip["score"] <= 1
    video = videos["long.mp4"]
    assert video["error"] is None and video["n_frames"] == 61
    assert [c["frames"] for c in video["clips"]] == [c["clip"]["frames"] for c in clips]
    assert video["score"] == pytest.approx(np.mean([c["score"] for c in clips]), abs=1e-5)
    # a video too short for the checkpoint's clip: recorded, with the fix, not fatal
    too_short = videos["short.mp4"]
    assert too_short["score"] is None and too_short["error"] is None
    assert f"window stride {WINDOW_STRIDE}" in too_short["not_applicable"]
    assert "score videos of" in too_short["not_applicable"]


def clip_span_of(config: dict) -> int:
    from datasets.clips import clip_span

    return clip_span(int(config.get("clip_len", 1)), int(config.get("clip_stride", 1)))


@pytest.fixture(scope="module")
def windowed_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Celeb-DF cache in windows: per split one real and one fake video with windows of 5
    cached frames, and one of each with windows of 3 (cut for a shorter clip_len)."""
    root = tmp_path_factory.mktemp("celebdf_windows")
    crops = root / "deepsift_crops"
    rng = np.random.default_rng(2)
    index: list[dict] = []
    tests = []
    (train_long, train_short), (val_long, val_short) = _ids(False, 2), _ids(True, 2)
    for k, window in ((train_long, 5), (train_short, 3), (val_long, 5), (val_short, 3),
                      (300, 5), (301, 3)):  # fmt: skip
        for rel, label in ((f"Celeb-real/id{k}_0000", 0), (f"Celeb-synthesis/id{k}_id1_0000", 1)):
            _write_video(crops, rel, 2 * window, label, rng, index, window_len=window)
            if k >= 300:
                tests.append(f"{1 - label} {rel}.mp4")
    (crops / "index.jsonl").write_text("".join(json.dumps(line) + "\n" for line in index))
    (root / "YouTube-real").mkdir()
    (root / "List_of_testing_videos.txt").write_text("\n".join(tests) + "\n")
    return root


def test_a_clip_longer_than_the_cache_windows_skips_those_videos_with_the_fix(
    windowed_cache: Path, tmp_path: Path
) -> None:
    """A detector asked for 4 frames on a cache whose windows hold fewer: in train, val and
    test each such video is recorded (clips_skipped_<split>.json, the report) with the fix
    and skipped; the run goes on with the others. Only when no video is long enough is it
    one line naming the fix."""
    from deepsift.app.evaluation import evaluate
    from deepsift.app.training import train
    from deepsift.core.configs import compose
    from deepsift.core.errors import UserError

    clip4 = [a for a in TINY if not a.startswith("detector.clip")]
    clip4 += ["detector.clip_len=4", "detector.clip_stride=1"]
    run_dir = tmp_path / "train"
    train(compose("train", [*clip4, *data_args(windowed_cache), "eval_splits=[test]"], run_dir))

    def check(listing: Path, short: set[str]) -> None:
        got = {v["video"]: v["reason"] for v in json.loads(listing.read_text())}
        assert set(got) == short, got
        for reason in got.values():
            assert "longest window of consecutive frames has 3 cached frames" in reason
            assert "clip_len=4 x clip_stride=1 needs 4" in reason
            assert "python -m datasets.preprocess with longer windows" in reason
            assert "detector.clip_len" in reason

    def short_of(k: int) -> set[str]:
        return {f"Celeb-real/id{k}_0000", f"Celeb-synthesis/id{k}_id1_0000"}

    check(run_dir / "clips_skipped_train.json", short_of(_ids(False, 2)[1]))
    check(run_dir / "clips_skipped_val.json", short_of(_ids(True, 2)[1]))
    check(run_dir / "clips_skipped_test.json", short_of(301))
    report = json.loads((run_dir / "metrics_test.json").read_text())["metrics"]
    assert report["video"]["n"] == 2 and report["frame"]["n"] == 4  # 2 long videos x 2 clips
    assert {s["path"] for s in report["skipped"]} == short_of(301)

    eval_dir = tmp_path / "eval"
    evaluate(compose("eval", [f"checkpoint={run_dir / 'best.pt'}", *data_args(windowed_cache),
                              "logger=none", "trainer=cpu", "trainer.num_workers=0",
                              "metrics.plots=false", "metrics.clips_per_video=2"], eval_dir))  # fmt: skip
    check(eval_dir / "clips_skipped_test.json", short_of(301))
    evaluated = json.loads((eval_dir / "metrics_test.json").read_text())["metrics"]
    assert evaluated["video"]["n"] == 2
    assert {s["path"] for s in evaluated["skipped"]} == short_of(301)

    # 6 frames: longer than every window of the cache, nothing to evaluate: one line, the fix
    clip6 = ["detector=clip_mean", "detector.backbone=resnet10t", "detector.size=32",
             "detector.clip_len=6", "detector.clip_stride=1", "logger=none", "trainer=cpu",
             "trainer.num_workers=0", "metrics.plots=false", *data_args(windowed_cache)]  # fmt: skip
    with pytest.raises(UserError) as refused:
        evaluate(compose("eval", clip6, tmp_path / "eval6"))
    message = str(refused.value)
    assert "\n" not in message and "no video has a face track as long as one clip" in message
    assert "has 5 cached frames" in message and "detector.clip_len" in message
    assert "python -m datasets.preprocess with longer windows" in message


def test_a_mouth_clip_detector_on_a_cache_without_mouths_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from deepsift.app.pipeline import detector_records
    from deepsift.core.errors import UserError

    detector = SimpleNamespace(input_kind="clip", clip_len=2, clip_stride=1, needs_mouth=True)
    cfg = OmegaConf.create({"metrics": {"clips_per_video": 2}})
    ctx = SimpleNamespace(run_dir=tmp_path)
    with pytest.raises(UserError, match=r"no mouth crops.*mouths=true"):
        detector_records(detector, [Record("a.png", 0, video="v")], cfg, ctx, "test")


def test_image_data_gives_a_clip_detector_one_clear_error(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from deepsift.app.pipeline import detector_records
    from deepsift.core.errors import UserError

    detector = SimpleNamespace(input_kind="clip", clip_len=2, clip_stride=1, needs_mouth=False)
    cfg = OmegaConf.create({"metrics": {"clips_per_video": 2}})
    ctx = SimpleNamespace(run_dir=tmp_path)
    stills = [Record(f"{i}.png", i % 2) for i in range(4)]
    with pytest.raises(UserError, match="face-crop cache"):
        detector_records(detector, stills, cfg, ctx, "test")
    assert (tmp_path / "clips_skipped_test.json").is_file()

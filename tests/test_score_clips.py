"""score.py on videos with clip detectors: ``--clips`` windows, tracked faces, per-clip and
per-video records, bad videos recorded and skipped.

The fixture videos are drawn here with OpenCV (MJPG AVI): two "faces" (a red and a green
square) cross the frame in opposite directions; a stub face detector finds each square
by its colour and lists them in a different order in every other frame, so only the box
tracking (:func:`datasets.tracks.link_tracks`) keeps identities apart. A stub clip
detector scores ``20 * (mean red - mean green)`` over the clip: a clip of the red face
scores ~1, of the green face ~0, and a clip that mixed them would land in between.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepsift.app.score_cli import main
from deepsift.core.errors import UserError
from deepsift.scoring.calibration import DEFAULT_BANDS
from deepsift.scoring.faces import Fixed
from deepsift.scoring.models import Ensemble, Member, load_ensemble
from deepsift.scoring.output import FIELDS, decode_csv_row, iter_jsonl_records
from deepsift.scoring.prepare import PrepareOptions
from deepsift.scoring.runner import MemorySink, RunOptions, Scorer
from detectors.base import Detector
from tests.scoring_fixtures import one_thread  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("one_thread")
W, H, SIDE = 160, 96, 28
RED, GREEN = (220, 30, 30), (30, 220, 30)
QUICK = ["--workers", "0", "--quiet", "--no-provenance", "--no-pdq"]


def _x(face: int, i: int, n: int) -> int:
    """Left edge of face 0 (left to right) or face 1 (right to left) in frame i of n."""
    left, right = 4, W - SIDE - 4
    t = i / max(n - 1, 1)
    return round(left + (right - left) * (t if face == 0 else 1 - t))


def write_video(path: Path, n: int, faces: int = 2) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for i in range(n):
        frame = np.zeros((H, W, 3), np.uint8)
        for face, colour in list(enumerate((RED, GREEN)))[:faces]:
            x, y = _x(face, i, n), 30 + 6 * face  # offset rows: boxes overlap when crossing
            frame[y : y + SIDE, x : x + SIDE] = colour
        writer.write(frame[..., ::-1].copy())  # RGB -> BGR
    writer.release()
    return path


class ColourFaces:
    """Finds the red and the green square; every other call lists them in the other order."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[dict[str, Any]]:
        self.calls += 1
        found = []
        for channel in (0, 1):
            other = image[..., 1 - channel].astype(int)
            mask = (image[..., channel].astype(int) > 150) & (other < 100)
            ys, xs = np.nonzero(mask)
            if len(xs) > 20:
                box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
                found.append({"box": box, "score": 0.99, "landmarks": None})
        return found[::-1] if self.calls % 2 else found


class StubClip(Detector):
    """A clip detector whose logit is 20 x (mean red - mean green) of its T frames."""

    input_kind = "clip"

    def __init__(self, clip_len: int = 4, clip_stride: int = 2) -> None:
        super().__init__()
        self.clip_len, self.clip_stride = clip_len, clip_stride
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        frames = sample["frames"]
        assert len(frames) == self.clip_len
        arrays = [np.asarray(f.convert("RGB").resize((16, 16)), np.float32) / 255 for f in frames]
        return {"clip": torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = batch["clip"]
        logits = 20 * (clip[:, :, 0].mean(dim=(1, 2, 3)) - clip[:, :, 1].mean(dim=(1, 2, 3)))
        return {"logits": logits + self.anchor}


def score(inputs: list[Path], clips: int = 3, faces: bool = True, **kw: Any) -> list[dict]:
    member = Member("stub_clip", StubClip(**kw), faces, {"detector": "stub_clip"})
    options = RunOptions(
        inputs=[str(p) for p in inputs],
        workers=0,
        progress=False,
        prepare_options=PrepareOptions(clips=clips, min_face=8, provenance=False, pdq=False),
    )
    sink = MemorySink()
    Scorer(Ensemble([member]), DEFAULT_BANDS, options, sink, Fixed(ColourFaces())).run()
    return sink.records


def test_crossing_faces_give_one_identity_per_clip(tmp_path: Path) -> None:
    video = write_video(tmp_path / "two.avi", 40)
    records = score([video], clips=5)
    *clips, record = records
    assert [r["kind"] for r in clips] == ["clip"] * len(clips) and record["kind"] == "video"
    assert record["n_frames"] == 40 and record["error"] is None
    # every clip follows one face: its boxes lie on that face's path (the detector swaps
    # the order of the faces every other frame; the track follows the boxes, not the order)
    for clip in clips:
        frames = clip["clip"]["frames"]
        assert len(frames) == 4 and np.all(np.diff(frames) == 2)
        xs = [box[0] for box in clip["clip"]["boxes"]]
        paths = [[_x(face, f, 40) for f in frames] for face in (0, 1)]
        face = 0 if np.allclose(xs, paths[0], atol=2) else 1
        assert np.allclose(xs, paths[face], atol=2), (xs, paths)
        apart = min(abs(a - b) for a, b in zip(*paths, strict=True)) > 2 * SIDE
        if apart:  # a crop of one face alone: ~1 for the red one, ~0 for the green one
            assert clip["score"] > 0.99 if face == 0 else clip["score"] < 0.01
        assert clip["frame"] == frames[0] and clip["path"] == str(video)
    # both identities are tracked in the windows away from the crossing
    windows: dict[int, list[dict]] = {}
    for clip in clips:
        windows.setdefault(clip["clip"]["window"], []).append(clip)
    assert len(windows) == 5 and all(len(c) == 2 for c in windows.values())
    # the video: mean over windows of the most suspect track of each window
    expected = np.mean([max(c["score"] for c in cs) for cs in windows.values()])
    assert record["score"] == pytest.approx(expected, abs=1e-5)
    assert [c["clip"] for c in record["clips"]] == [c["clip"]["clip"] for c in clips]
    assert record["scores"]["stub_clip"] == pytest.approx(expected, abs=1e-5)


def test_bad_videos_are_recorded_and_skipped(tmp_path: Path) -> None:
    short = write_video(tmp_path / "a_short.avi", 5)  # one clip spans 7 frames
    faceless = write_video(tmp_path / "b_faceless.avi", 20, faces=0)
    good = write_video(tmp_path / "c_good.avi", 20)
    broken = tmp_path / "d_broken.avi"
    broken.write_bytes(good.read_bytes()[:300])  # an AVI header and no frame
    still = tmp_path / "e_still.png"
    from PIL import Image

    Image.new("RGB", (32, 32), RED).save(still)
    records = score([short, faceless, good, broken, still])
    items = {Path(r["path"]).name: r for r in records if r["kind"] != "clip"}
    assert len(items) == 5
    assert "too short for one clip" in items["a_short.avi"]["not_applicable"]
    assert "clip_len=4 x clip_stride=2" in items["a_short.avi"]["not_applicable"]
    assert items["b_faceless.avi"]["not_applicable"] == "no face found in every clip window"
    assert items["c_good.avi"]["score"] is not None and items["c_good.avi"]["band"]
    assert "video" in (items["d_broken.avi"]["error"] or "")
    assert "scores videos only" in items["e_still.png"]["not_applicable"]
    assert all(r["score"] is None for n, r in items.items() if n != "c_good.avi")


def test_whole_frame_clips_with_faces_off(tmp_path: Path) -> None:
    *clips, record = score([write_video(tmp_path / "v.avi", 30)], clips=2, faces=False)
    assert len(clips) == 2 and all(c["clip"]["boxes"] is None for c in clips)
    # red and green are alike in a whole frame: the stub scores ~0.5
    assert all(abs(c["score"] - 0.5) < 0.05 for c in clips)
    assert record["score"] == pytest.approx(np.mean([c["score"] for c in clips]), abs=1e-6)


CLIP_MEAN = ["--detector", "clip_mean", "--set", "backbone=resnet10t", "--set", "size=32"]


def test_score_py_with_clip_mean_writes_jsonl_csv_parquet(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    video = write_video(tmp_path / "in" / "v.avi", 24)
    from detectors import load_detector

    torch.manual_seed(0)
    model = load_detector("clip_mean", backbone="resnet10t", size=32, clip_len=3).eval()
    weights = tmp_path / "clip_mean.pt"
    torch.save(model.state_dict(), weights)
    args = [str(video), *CLIP_MEAN, "--set", "clip_len=3", "--weights", str(weights)]
    args += ["--faces", "off", "--clips", "2"]
    rows: dict[str, list[dict]] = {}
    for suffix in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"r.{suffix}"
        summary = main([*args, "--out", str(out), *QUICK])
        assert summary["items"] == 1 and summary["kinds"] == {"video": 1}
        if suffix == "jsonl":
            rows[suffix] = [json.loads(line) for line in out.read_text().splitlines()]
        elif suffix == "csv":
            import csv

            with open(out, newline="") as handle:
                table = list(csv.reader(handle))
            assert table[0] == list(FIELDS) and table[0][-2:] == ["clip", "clips"]
            rows[suffix] = [decode_csv_row(row) for row in table[1:]]
        else:
            from deepsift.scoring.output import read_parquet_records

            rows[suffix] = list(read_parquet_records(out))
    assert [r["kind"] for r in rows["jsonl"]] == ["clip", "clip", "video"]
    assert rows["csv"] == rows["jsonl"] == rows["parquet"]
    video_record = rows["jsonl"][-1]
    assert 0 <= video_record["score"] <= 1 and len(video_record["clips"]) == 2
    assert video_record["score"] == pytest.approx(
        np.mean([r["score"] for r in rows["jsonl"][:2]]), abs=1e-5
    )
    assert video_record["clips"][0]["frames"] == rows["jsonl"][0]["clip"]["frames"]
    # each clip's score is the detector's own forward on those frames, decoded here
    from PIL import Image

    from datasets.video import read_frames

    for row in rows["jsonl"][:2]:
        got = read_frames(str(video), row["clip"]["frames"])
        frames = [Image.fromarray(got[i]) for i in row["clip"]["frames"]]
        clip = model.eval_transform({"frames": frames, "record": None})["clip"][None]
        with torch.no_grad():
            expected = torch.sigmoid(model({"clip": clip})["logits"]).item()
        assert row["score"] == pytest.approx(expected, abs=1e-5)


def test_clip_detector_refusals_are_one_line(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", 12)
    out = str(tmp_path / "r.jsonl")
    with pytest.raises(UserError, match="--engine ray does not score clips"):
        from deepsift.app.score_cli import build_parser, score_on_ray

        score_on_ray(build_parser().parse_args([str(video), *CLIP_MEAN, "--out", out]), [])
    with pytest.raises(UserError, match=r"clip detector.*alone"):
        load_ensemble(ensemble="clip_mean,timm_classifier")
    with pytest.raises(SystemExit) as exit_:
        main([str(video), *CLIP_MEAN, "--stability", "--out", out, *QUICK])
    assert exit_.value.code != 0
    with pytest.raises(UserError, match=r"mouth crops.*drop --faces off"):
        load_ensemble(detector="lipforensics", faces="off")


def test_a_jsonl_output_from_before_clips_resumes(tmp_path: Path) -> None:
    old = {name: None for name in FIELDS if name not in ("clip", "clips")}
    old.update(path="x.png", kind="image", score=0.3)
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n")
    with open(path, "rb") as handle:
        (_, _, record), *_ = list(iter_jsonl_records(handle))
    assert record is not None and record["clip"] is None and record["score"] == 0.3


def test_lipforensics_scores_mouth_crops_of_the_tracked_face(tmp_path: Path) -> None:
    """The mouth crops score.py cuts (from the tracked face's landmarks, datasets.mouths) are
    those the preprocessing writes: the clip's score is LipForensics' forward on them."""
    from PIL import Image

    from datasets.mouths import mouth_crops
    from detectors import load_detector
    from tests.official.make_lipforensics_mouths import mouth_inputs
    from tests.test_mouths import KnownFaces, _lossless_video
    from tests.video_detectors import TINY

    frames, landmarks = mouth_inputs()
    video = _lossless_video(tmp_path / "talk.avi", frames)
    torch.manual_seed(0)
    model = load_detector("lipforensics", **TINY["lipforensics"]).eval()
    member = Member("lipforensics", model, True, {"detector": "lipforensics"})
    options = RunOptions(
        inputs=[str(video)],
        workers=0,
        progress=False,
        prepare_options=PrepareOptions(clips=2, min_face=8, provenance=False, pdq=False),
    )
    sink = MemorySink()
    factory = Fixed(KnownFaces(frames, landmarks))
    Scorer(Ensemble([member]), DEFAULT_BANDS, options, sink, factory).run()
    *clips, record = sink.records
    assert len(clips) == 2 and record["score"] is not None
    for clip in clips:
        idx = clip["clip"]["frames"]
        mouths = mouth_crops([frames[i] for i in idx], [landmarks[i] for i in idx])
        sample = {
            "frames": [Image.fromarray(frames[i]) for i in idx],
            "mouth_frames": [Image.fromarray(m) for m in mouths],
            "record": None,
        }
        batch = {"clip": model.eval_transform(sample)["clip"][None]}
        with torch.no_grad():
            expected = torch.sigmoid(model(batch)["logits"]).item()
        assert clip["score"] == pytest.approx(expected, abs=1e-5)


def test_score_py_tracks_real_faces_with_dlib(tmp_path: Path) -> None:
    """The real face detector (dlib, --faces auto) on an FF++ example face sliding across a
    video: every clip is cut from the tracked face, aligned as the config's face_crop says."""
    from tests.test_faces import EXAMPLES, have_dlib
    from tests.test_preprocess import example_frames
    from tests.test_preprocess import write_video as write_mp4

    if not have_dlib() or not (EXAMPLES / "ex_original.png").is_file():
        pytest.skip("needs dlib and the FF++ example frames")
    video = write_mp4(tmp_path / "face.mp4", example_frames("ex_original", 16))
    out = tmp_path / "r.jsonl"
    main([str(video), *CLIP_MEAN, "--set", "clip_len=3", "--clips", "2", "--out", str(out), *QUICK])
    *clips, record = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["kind"] for c in clips] == ["clip", "clip"] and record["kind"] == "video"
    for clip in clips:
        boxes = np.array(clip["clip"]["boxes"])
        assert boxes.shape == (3, 4) and np.ptp(boxes[:, 1]) < 8  # one face, moving sideways
        assert clip["score"] is not None
    assert record["score"] == pytest.approx(np.mean([c["score"] for c in clips]), abs=1e-5)


def test_resume_after_a_kill_between_clip_records_and_the_video_record(tmp_path: Path) -> None:
    """Clip records whose video record was never written (a kill in between) are dropped by
    --resume and the video is scored again: each record exactly once."""
    (tmp_path / "in").mkdir()
    videos = [write_video(tmp_path / "in" / f"{k}.avi", 12 + k) for k in range(2)]
    out = tmp_path / "r.jsonl"
    args = [str(tmp_path / "in"), *CLIP_MEAN, "--set", "clip_len=3", "--faces", "off"]
    args += ["--clips", "2", "--out", str(out), *QUICK]
    main(args)
    lines = out.read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["clip", "clip", "video"] * 2
    out.write_text("\n".join(lines[:5]) + "\n")  # killed before the second video's record
    summary = main([*args, "--resume"])
    again = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["kind"] for r in again] == ["clip", "clip", "video"] * 2
    assert [r["path"] for r in again if r["kind"] == "video"] == [str(v) for v in videos]
    assert summary["items"] == 2 and summary["resumed"]["items_already_done"] == 1

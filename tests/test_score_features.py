"""score.py analyses with stub models: stability, faces, videos, ensembles, worker isolation."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from datasets.faces import CropSettings, Face, apply_crop
from datasets.video import frame_indices
from deepsift.scoring import prepare as prepare_module
from deepsift.scoring.calibration import DEFAULT_BANDS
from deepsift.scoring.faces import DEFAULT_CROP, crop_region
from deepsift.scoring.models import Ensemble
from deepsift.scoring.prepare import PrepareOptions
from deepsift.scoring.runner import MemorySink, RunOptions, Scorer
from tests.scoring_fixtures import (
    BoxFaces,
    one_thread,  # noqa: F401 - a fixture
    stub_ensemble,
    stub_probability,
    write_video,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def run(
    ensemble: Ensemble, inputs: list[Path], faces: BoxFaces | None = None, **kwargs: Any
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    prepare_options = PrepareOptions(provenance=False, pdq=False, **kwargs.pop("prepare", {}))
    options = RunOptions(
        inputs=[str(p) for p in inputs],
        batch_size=kwargs.pop("batch_size", 3),
        workers=kwargs.pop("workers", 0),
        progress=False,
        prepare_options=prepare_options,
        **kwargs,
    )
    sink = MemorySink()
    summary = Scorer(
        ensemble, DEFAULT_BANDS, options, sink, (lambda: faces) if faces else None
    ).run()
    top = {
        Path(r["path"]).name + (f"!{r['member']}" if r["member"] else ""): r
        for r in sink.records
        if r["kind"] != "frame"
    }
    return top, sink.records, summary


def gray(path: Path, width: int, height: int, level: int = 200) -> Path:
    Image.new("RGB", (width, height), (level,) * 3).save(path)
    return path


def test_unstable_when_light_laundering_flips_the_band(tmp_path: Path) -> None:
    fragile = gray(tmp_path / "fragile.png", 48, 20)  # 0.75x -> 36 px: logit 8 -> -4
    sturdy = gray(tmp_path / "sturdy.png", 100, 20)  # 0.75x -> 75 px: still synthetic
    records, _, summary = run(
        stub_ensemble("width"), [fragile, sturdy], prepare={"stability": True}
    )
    f, s = records["fragile.png"], records["sturdy.png"]
    assert f["band"] == "synthetic" and f["score"] == pytest.approx(
        stub_probability(Image.new("RGB", (48, 1)), "width"), abs=1e-6
    )
    assert f["stability"]["resize0.75"] == pytest.approx(
        stub_probability(Image.new("RGB", (36, 1)), "width"), abs=1e-6
    )
    assert f["stability"]["jpeg90"] == pytest.approx(f["score"], abs=1e-6)
    assert f["unstable"] is True and s["unstable"] is False
    assert summary["unstable"] == 1
    plain, _, _ = run(stub_ensemble("width"), [fragile])
    assert plain["fragile.png"]["unstable"] is None and plain["fragile.png"]["stability"] is None


def test_faces_scored_one_by_one_image_takes_the_maximum(tmp_path: Path) -> None:
    canvas = np.full((160, 200, 3), 128, np.uint8)
    canvas[20:100, 20:100] = 250  # a bright "face"
    canvas[110:150, 130:170] = 5  # a dark one
    Image.fromarray(canvas).save(tmp_path / "two.png")
    gray(tmp_path / "none.png", 201, 50)
    gray(tmp_path / "tiny.png", 202, 50)
    faces = BoxFaces({200: [(130, 110, 170, 150), (20, 20, 100, 100)], 202: [(5, 5, 15, 15)]})
    ensemble = stub_ensemble("brightness", faces=(True,))
    records, _, summary = run(
        ensemble, sorted(tmp_path.glob("*.png")), faces, prepare={"min_face": 32}
    )
    two = records["two.png"]
    expected = []
    for box in ((20, 20, 100, 100), (130, 110, 170, 150)):  # largest first
        # no landmarks: the square 1.3x the box, cut by the preprocessing's crop functions
        matrix, side = DEFAULT_CROP.transform(Face(box, 0.99))
        expected.append(stub_probability(Image.fromarray(apply_crop(canvas, matrix, side))))
        crop = crop_region(matrix, side, 200, 160)
        assert crop in [tuple(f["crop"]) for f in two["faces"]]
    assert [tuple(f["crop"]) for f in two["faces"]] == [(8, 8, 112, 112), (124, 104, 176, 156)]
    assert [f["score"] for f in two["faces"]] == pytest.approx(expected, abs=1e-6)
    assert two["score"] == pytest.approx(max(expected), abs=1e-6)
    assert (
        two["faces"][0]["box"] == [20.0, 20.0, 100.0, 100.0]
        and two["faces"][0]["confidence"] == 0.99
    )
    assert (
        records["none.png"]["not_applicable"] == "no face found"
        and records["none.png"]["score"] is None
    )
    assert records["tiny.png"]["not_applicable"] == "face too small (< 32 px)"
    assert records["none.png"]["band"] is None and records["none.png"]["error"] is None
    assert summary["not_applicable"] == 2

    mixed = stub_ensemble("brightness", "width", faces=(True, False))
    records, _, _ = run(
        mixed, [tmp_path / "two.png", tmp_path / "none.png"], faces, prepare={"min_face": 32}
    )
    whole = stub_probability(Image.new("RGB", (200, 1)), "width")
    assert records["two.png"]["scores"] == pytest.approx(
        {"stub_brightness": max(expected), "stub_width": whole}, abs=1e-6
    )
    assert records["two.png"]["score"] == pytest.approx((max(expected) + whole) / 2, abs=1e-6)
    # no face: the whole-image member still scores, the face member says nothing
    assert records["none.png"]["scores"]["stub_brightness"] is None
    assert records["none.png"]["score"] == pytest.approx(
        stub_probability(Image.new("RGB", (201, 1)), "width"), abs=1e-6
    )


def test_members_that_cut_faces_differently_each_score_their_own_crop(tmp_path: Path) -> None:
    canvas = np.full((160, 200, 3), 128, np.uint8)
    Image.fromarray(canvas).save(tmp_path / "face.png")
    faces = BoxFaces({200: [(70, 50, 110, 90)]})  # 40 px, no landmarks
    ensemble = stub_ensemble("width", "brightness", faces=(True, True))
    wide = CropSettings(align=False, margin=2.0, size=None)
    ensemble.members[1].face_crop = wide
    records, _, _ = run(ensemble, [tmp_path / "face.png"], faces, prepare={"min_face": 32})
    (face,) = records["face.png"]["faces"]
    # the width rule sees its own 1.3x crop (52 px), the other member's 2x crop is 80 px wide
    assert face["scores"]["stub_width"] == pytest.approx(
        stub_probability(Image.new("RGB", (52, 1)), "width"), abs=1e-6
    )
    assert face["crop"] == [64, 44, 116, 96]
    assert face["crops"] == {"stub_width": [64, 44, 116, 96], "stub_brightness": [50, 30, 130, 110]}
    matrix, side = wide.transform(Face((70, 50, 110, 90), 0.99))
    assert side == 80 and crop_region(matrix, side, 200, 160) == (50, 30, 130, 110)


def test_video_frames_sampled_evenly_with_aggregate_and_frame_records(tmp_path: Path) -> None:
    if not write_video(tmp_path / "clip.avi", n_frames=20):
        pytest.skip("opencv-python is not installed")
    import cv2

    capture = cv2.VideoCapture(str(tmp_path / "clip.avi"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    wanted = frame_indices(20, 4)  # the training sampler's positions
    assert wanted == [2, 7, 12, 17]
    expected = [stub_probability(frames[i]) for i in wanted]
    write_video(tmp_path / "other.avi", n_frames=5)
    with zipfile.ZipFile(tmp_path / "clips.zip", "w") as archive:
        archive.write(tmp_path / "other.avi", "inside.avi")
        archive.write(tmp_path / "clip.avi", "same.avi")
    records, everything, _ = run(
        stub_ensemble("brightness"),
        [tmp_path / "clip.avi", tmp_path / "clips.zip"],
        prepare={"video_frames": 4},
        frame_records=True,
    )
    video = records["clip.avi"]
    assert (
        video["kind"] == "video"
        and video["n_frames"] == 20
        and (video["width"], video["height"]) == (64, 48)
    )
    assert [f["frame"] for f in video["frames"]] == wanted
    assert [f["score"] for f in video["frames"]] == pytest.approx(expected, abs=1e-6)
    assert video["score"] == pytest.approx(np.mean(expected), abs=1e-6)
    frame_records = [r for r in everything if r["kind"] == "frame"]
    assert [r["frame"] for r in frame_records] == wanted
    assert [r["score"] for r in frame_records] == pytest.approx(expected, abs=1e-6)
    assert everything.index(video) > everything.index(frame_records[-1])  # frames first, video last
    assert "video inside an archive" in records["clips.zip!inside.avi"]["error"]
    # the same bytes as clip.avi: not decoded again, marked as its duplicate
    assert records["clips.zip!same.avi"]["duplicate_of"]["path"] == str(tmp_path / "clip.avi")
    assert records["clips.zip!same.avi"]["score"] == video["score"]
    by_max, _, _ = run(
        stub_ensemble("brightness"),
        [tmp_path / "clip.avi"],
        prepare={"video_frames": 4},
        aggregation="max",
    )
    assert by_max["clip.avi"]["score"] == pytest.approx(max(expected), abs=1e-6)


def test_animated_frames_mode_scores_like_a_video(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), (v,) * 3) for v in (20, 120, 240)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    first, _, _ = run(stub_ensemble("brightness"), [tmp_path / "a.gif"])
    assert first["a.gif"]["score"] == pytest.approx(stub_probability(frames[0]), abs=1e-6)
    every, _, _ = run(
        stub_ensemble("brightness"), [tmp_path / "a.gif"], prepare={"animated": "frames"}
    )
    expected = [stub_probability(f) for f in frames]
    assert [f["score"] for f in every["a.gif"]["frames"]] == pytest.approx(expected, abs=1e-6)
    assert every["a.gif"]["score"] == pytest.approx(np.mean(expected), abs=1e-6)


def test_variable_sizes_batch_together_by_shape(tmp_path: Path) -> None:
    inputs = [gray(tmp_path / f"{w}.png", w, 10) for w in (30, 50, 30, 50, 70)]
    records, _, summary = run(stub_ensemble("width"), inputs, batch_size=2)
    for path in inputs:
        assert records[path.name]["score"] == pytest.approx(
            stub_probability(Image.open(path), "width"), abs=1e-6
        )
    assert summary["this_run"]["pictures_scored"] == 3  # 30 and 50 px twice: duplicates


def test_a_crashing_or_hanging_decoder_costs_one_record(tmp_path: Path) -> None:
    inputs = [gray(tmp_path / f"{w}.png", w, 10, level=w) for w in (20, 13, 21, 14, 22)]
    ensemble = stub_ensemble("brightness", crash_width=13, hang_width=14)
    records, _, summary = run(ensemble, inputs, workers=1, item_timeout=3.0)
    assert "worker died" in records["13.png"]["error"]
    assert "timed out after 3 s" in records["14.png"]["error"]
    for width in (20, 21, 22):
        assert (
            records[f"{width}.png"]["error"] is None
            and records[f"{width}.png"]["score"] is not None
        )
    assert summary["this_run"]["worker_crashes"] == 2 and len(records) == 5


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = gray(tmp_path / "locked.png", 10, 10)
    real_open = open

    def deny(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "open", deny, raising=False)
    records, _, _ = run(stub_ensemble("brightness"), [locked])
    assert records["locked.png"]["error"] == "permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_for_real(tmp_path: Path) -> None:
    locked = gray(tmp_path / "locked.png", 10, 10)
    locked.chmod(0)
    records, _, _ = run(stub_ensemble("brightness"), [locked])
    assert records["locked.png"]["error"] == "permission denied"


def test_skip_non_images(tmp_path: Path) -> None:
    gray(tmp_path / "a.png", 10, 10)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 40)
    records, _, summary = run(stub_ensemble("brightness"), [tmp_path], skip_non_images=True)
    assert set(records) == {"a.png", "broken.png"}  # a broken image is still reported
    assert summary["this_run"]["skipped_non_images"] == 1


def test_queues_are_bounded_in_items_and_bytes() -> None:
    import threading

    from deepsift.scoring.runner import _ByteQueue

    q = _ByteQueue(max_items=2, max_bytes=100)
    assert q.put("a", 80) and q.put("b", 10)
    blocked = threading.Thread(target=q.put, args=("c", 50))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # full: the producer waits
    assert q.get(0.1) == "a"
    blocked.join(2)
    assert not blocked.is_alive() and q.bytes == 60
    assert q.get(0.1) == "b" and q.get(0.1) == "c"
    assert q.put("huge", 10_000)  # one oversize item passes when the queue is empty
    q.close()
    assert not q.put("late", 1)


def test_pipeline_state_stays_small_for_many_inputs(tmp_path: Path) -> None:
    for i in range(120):
        gray(tmp_path / f"{i:03d}.png", 8 + i, 4)

    class Watched(Scorer):
        peak = 0

        def _accept(self, prepared):
            super()._accept(prepared)
            Watched.peak = max(Watched.peak, sum(self.row_counts.values()), self.pending_items)

    options = RunOptions(
        inputs=[str(tmp_path)],
        batch_size=4,
        workers=1,
        in_flight=2,
        progress=False,
        prepare_options=PrepareOptions(provenance=False, pdq=False),
    )
    sink = MemorySink()
    summary = Watched(stub_ensemble("width"), DEFAULT_BANDS, options, sink).run()
    assert summary["items"] == 120
    assert Watched.peak <= 4  # never more than one batch waiting for the model

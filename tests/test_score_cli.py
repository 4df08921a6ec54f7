"""score.py's command line: help, one-line errors, ensembles, list files, CSV, summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from deepsift.app.score_cli import main, summary_path
from deepsift.core.errors import UserError
from deepsift.scoring.models import parse_ensemble
from deepsift.scoring.output import FIELDS, decode_csv_row
from tests.scoring_fixtures import (
    TINY,
    noise,
    one_thread,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--workers", "0", "--quiet", "--no-provenance", "--no-pdq"]


def images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(noise(i, 36, 36)).save(paths[-1])
    return paths


def test_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--checkpoint",
        "--ensemble",
        "--resume",
        "--calibrate",
        "--stability",
        "--faces",
        "--format",
    ):
        assert option in text


def test_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images(tmp_path / "in", 1)
    cases = [
        ([str(tmp_path / "in"), "--out", str(tmp_path / "a.jsonl")], "pass a detector"),
        (["--out", str(tmp_path / "a.jsonl"), *TINY], "nothing to score"),
        (
            [str(tmp_path / "in"), "--out", str(tmp_path / "a.jsonl"), "--detector", "nope"],
            "unknown detector 'nope'",
        ),
        (
            [str(tmp_path / "in"), "--out", str(tmp_path / "a.jsonl"), *TINY, "--device", "tpu"],
            "--device 'tpu'",
        ),
        (
            [str(tmp_path / "in"), "--out", str(tmp_path / "a.jsonl"), "--ensemble", "nope:x"],
            "neither NAME[:WEIGHTS]",
        ),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
    (tmp_path / "exists.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(SystemExit):
        main([str(tmp_path / "in"), "--out", str(tmp_path / "exists.jsonl"), *TINY, *QUICK])
    assert "--resume" in capsys.readouterr().err


def test_ensemble_yaml_list_file_csv_and_summary(tmp_path: Path) -> None:
    paths = images(tmp_path / "in", 3)
    listed = tmp_path / "list.txt"
    listed.write_text(f"{paths[0]}\n{paths[1]}\n", encoding="utf-8")
    spec = tmp_path / "ens.yaml"
    tiny = "{backbone: resnet18, preprocessing: {size: 32}}"
    spec.write_text(
        "combine: mean\nmembers:\n"
        f"  - {{detector: timm_classifier, label: first, set: {tiny}}}\n"
        f"  - {{detector: timm_classifier, label: second, set: {tiny}}}\n",
        encoding="utf-8",
    )
    out = tmp_path / "r.csv"
    summary = main(
        [f"@{listed}", str(paths[2]), "--out", str(out), "--ensemble", str(spec), *QUICK]
    )
    with open(out, newline="", encoding="utf-8") as handle:
        rows = [decode_csv_row(r) for r in list(csv.reader(handle))[1:]]
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    for record in rows:
        assert set(record["scores"]) == {"first", "second"}
        assert record["score"] == pytest.approx(sum(record["scores"].values()) / 2, abs=2e-6)
    assert summary_path(out) == tmp_path / "r.summary.json"
    written = json.loads(summary_path(out).read_text(encoding="utf-8"))
    assert written["items"] == 3 and written["format"] == "csv" and written["combine"] == "mean"
    assert set(written["members"]) == {"first", "second"}
    assert summary["this_run"]["items"] == 3


def test_resume_in_process_after_a_torn_line(tmp_path: Path) -> None:
    images(tmp_path / "in", 6)
    out = tmp_path / "in" / "r.jsonl"  # inside the scored folder: never scored itself
    main([str(tmp_path / "in"), "--out", str(out), *TINY, *QUICK])
    lines = out.read_bytes().split(b"\n")
    out.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:20])  # 3 records + a torn one
    summary = main([str(tmp_path / "in"), "--out", str(out), *TINY, *QUICK, "--resume"])
    assert summary["resumed"]["items_already_done"] == 3 and summary["this_run"]["items"] == 3
    paths = [json.loads(line)["path"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert (tmp_path / "in" / "r.summary.json").is_file()
    assert sorted(paths) == sorted(str(p) for p in (tmp_path / "in").glob("*.png"))
    assert len(paths) == len(set(paths))
    again = main([str(tmp_path / "in"), "--out", str(out), *TINY, *QUICK, "--resume"])
    assert again["this_run"]["items"] == 0 and again["items"] == 6


def test_ensemble_spec_parsing(tmp_path: Path) -> None:
    members, combine = parse_ensemble("meso4:w.h5,npr")
    assert members == [
        {"detector": "meso4", "weights": "w.h5", "faces": "auto"},
        {"detector": "npr", "weights": None, "faces": "auto"},
    ]
    assert combine is None
    members, _ = parse_ensemble(str(tmp_path / "best.pt"))
    assert members == [{"checkpoint": str(tmp_path / "best.pt"), "faces": "auto"}]
    (tmp_path / "bad.yaml").write_text("members: [{detector: npr, colour: red}]", encoding="utf-8")
    with pytest.raises(UserError, match="keys among"):
        parse_ensemble(str(tmp_path / "bad.yaml"))
    (tmp_path / "rel.yaml").write_text(
        "members: [{detector: npr, weights: NPR.pth}]", encoding="utf-8"
    )
    assert parse_ensemble(str(tmp_path / "rel.yaml"))[0][0]["weights"] == str(tmp_path / "NPR.pth")


def test_every_field_is_documented() -> None:
    from deepsift.scoring import output

    documented = [
        line.split("``")[1] for line in output.__doc__.splitlines() if line.startswith("``")
    ]
    assert documented == list(FIELDS)


def test_faces_on_with_the_real_face_detector(tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    out = tmp_path / "r.jsonl"
    main(
        [
            str(tmp_path),
            "--out",
            str(out),
            "--detector",
            "meso4",
            "--faces",
            "on",
            *QUICK[2:],
            "--workers",
            "1",
        ]
    )
    records = {
        Path(r["path"]).name: r
        for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())
    }
    astronaut = records["astronaut.png"]
    x0, y0, x1, y1 = astronaut["faces"][0]["box"]  # Eileen Collins' face, the largest
    assert 150 < (x0 + x1) / 2 < 290 and 60 < (y0 + y1) / 2 < 190
    assert astronaut["score"] == max(f["score"] for f in astronaut["faces"])
    assert records["coffee.png"]["not_applicable"] == "no face found"


def test_faces_auto_follows_the_detector_config() -> None:
    from deepsift.scoring.models import _face_mode
    from detectors import load_detector

    detector = load_detector("timm_classifier", backbone="resnet18")
    assert not _face_mode(detector, "auto") and _face_mode(detector, "on")
    detector.config["input"] = "face"  # the proposed config key (configs/detector/*.yaml)
    assert _face_mode(detector, "auto") and not _face_mode(detector, "off")

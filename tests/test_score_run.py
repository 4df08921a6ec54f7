"""score.py end to end on the zoo of hard inputs: one correct record per item, whatever the input."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepsift.scoring.calibration import BANDS, DEFAULT_BANDS
from deepsift.scoring.inputs import InputOptions
from deepsift.scoring.models import Ensemble
from deepsift.scoring.output import FIELDS, OutputFile, decode_csv_row
from deepsift.scoring.runner import RunOptions, Scorer
from tests.scoring_fixtures import (
    BAD,
    GOOD,
    expected_rgb,
    make_zoo,
    one_thread,  # noqa: F401 - a fixture
    read_jsonl,
    tiny_ensemble,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_zoo(tmp_path_factory.mktemp("zoo") / "in")


@pytest.fixture(scope="module")
def tiny() -> Ensemble:
    return tiny_ensemble()


def score(
    ensemble: Ensemble, inputs: list[str], out: Path, fmt: str = "jsonl", **kwargs: Any
) -> dict:
    options = RunOptions(
        inputs=inputs,
        batch_size=kwargs.pop("batch_size", 4),
        workers=kwargs.pop("workers", 0),
        progress=False,
        input_options=InputOptions(max_member_bytes=1_000_000),
        **kwargs,
    )
    sink = OutputFile(out, fmt, overwrite=True)
    try:
        return Scorer(ensemble, DEFAULT_BANDS, options, sink).run()
    finally:
        sink.close()


@pytest.fixture(scope="module")
def zoo_run(zoo: dict[str, Any], tiny: Ensemble, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The zoo scored once by one worker process (JSONL), once in-process (CSV)."""
    out = tmp_path_factory.mktemp("out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = score(tiny, [str(zoo["root"])], out / "r.jsonl", workers=1)
        inline = score(tiny, [str(zoo["root"])], out / "r.csv", fmt="csv", workers=0)
    finally:
        torch.set_num_threads(threads)
    return {"jsonl": out / "r.jsonl", "csv": out / "r.csv", "summary": summary, "inline": inline}


def by_key(records: list[dict[str, Any]], root: Path) -> dict[tuple, dict[str, Any]]:
    out = {}
    for record in records:
        path = os.path.relpath(record["path"], root).encode("utf-8", "backslashreplace").decode()
        key = (path, record["member"], record["member_index"])
        assert key not in out, f"{key} written twice"
        out[key] = record
    return out


def test_every_item_exactly_once(zoo: dict[str, Any], zoo_run: dict) -> None:
    root = zoo["root"]
    records = by_key(read_jsonl(zoo_run["jsonl"]), root)
    expected = {(name, None, None) for name in [*GOOD, *BAD, "zz_duplicate.png", "loop"]}
    expected.add(
        (
            os.path.relpath(zoo["non_utf8"], root).encode("utf-8", "backslashreplace").decode(),
            None,
            None,
        )
    )
    expected |= {("archive.zip", m, i) for m, i in zoo["zip"]}
    expected |= {("archive.tar.gz", m, i) for m, i in zoo["tar"]}
    assert set(records) == expected
    assert zoo_run["summary"]["items"] == len(expected)
    assert all(set(r) == set(FIELDS) for r in records.values())


def test_good_images_scored_like_the_detector_itself(
    zoo: dict[str, Any], zoo_run: dict, tiny: Ensemble
) -> None:
    root = zoo["root"]
    records = by_key(read_jsonl(zoo_run["jsonl"]), root)
    detector = tiny.members[0].detector
    names = [*GOOD, "zz_duplicate.png"]
    reference = detector.predict([expected_rgb(n, root / n) for n in names], device="cpu")
    for name, prob in zip(names, reference, strict=True):
        record = records[(name, None, None)]
        assert record["error"] is None, (name, record["error"])
        assert record["score"] == pytest.approx(float(prob), abs=2e-6), name
        assert record["scores"] == {"tiny": record["score"]}
        assert record["band"] in BANDS and record["calibrated"] is False
        assert record["sha256"] == hashlib.sha256((root / name).read_bytes()).hexdigest()
    assert records[("lying.png", None, None)]["format"] == "JPEG"
    assert records[("gray16.png", None, None)]["format"] == "PNG"
    rotated = records[("rotated.jpg", None, None)]
    assert (rotated["width"], rotated["height"]) == (24, 40)
    gif = records[("animated.gif", None, None)]
    assert gif["kind"] == "animation" and gif["n_frames"] == 3 and gif["frames"] is None


def test_bad_inputs_get_an_error_and_never_stop_the_run(zoo: dict[str, Any], zoo_run: dict) -> None:
    records = by_key(read_jsonl(zoo_run["jsonl"]), zoo["root"])
    for name, reason in BAD.items():
        record = records[(name, None, None)]
        assert record["error"] and reason in record["error"], (name, record["error"])
        assert record["score"] is None and record["band"] is None
    assert "already visited" in records[("loop", None, None)]["error"]
    assert records[("empty.jpg", None, None)]["sha256"] == hashlib.sha256(b"").hexdigest()
    summary = zoo_run["summary"]
    assert summary["errors"] == sum(1 for r in records.values() if r["error"])
    assert summary["this_run"]["worker_crashes"] == 0


def test_archive_members(zoo: dict[str, Any], zoo_run: dict) -> None:
    records = by_key(read_jsonl(zoo_run["jsonl"]), zoo["root"])
    for archive, members in (("archive.zip", zoo["zip"]), ("archive.tar.gz", zoo["tar"])):
        for (member, index), reason in members.items():
            record = records[(archive, member, index)]
            if reason is None:
                assert record["error"] is None and record["score"] is not None, (
                    member,
                    record["error"],
                )
            else:
                assert reason in record["error"], (member, record["error"])
    assert (
        records[("archive.zip", "a.png", 0)]["sha256"]
        != records[("archive.zip", "a.png", 7)]["sha256"]
    )
    top = zoo["root"].parent
    assert not list(top.parent.rglob("escape.png")) and not list(top.parent.rglob("evil.png"))


def test_duplicates_scored_once_and_marked(zoo: dict[str, Any], zoo_run: dict) -> None:
    records = by_key(read_jsonl(zoo_run["jsonl"]), zoo["root"])
    original = records[("plain.png", None, None)]
    duplicate = records[("zz_duplicate.png", None, None)]
    assert original["duplicate_of"] is None
    assert duplicate["duplicate_of"] == {"path": original["path"], "member": None}
    assert duplicate["score"] == original["score"] and duplicate["sha256"] == original["sha256"]
    assert zoo_run["summary"]["duplicates"] == 1
    # 'plain' and its copy share one forward pass
    scored = len(records) - zoo_run["summary"]["errors"] - 1
    assert zoo_run["summary"]["this_run"]["pictures_scored"] == scored


def test_csv_in_process_equals_jsonl_from_workers(zoo: dict[str, Any], zoo_run: dict) -> None:
    jsonl = by_key(read_jsonl(zoo_run["jsonl"]), zoo["root"])
    with open(zoo_run["csv"], newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == FIELDS
    from_csv = by_key([decode_csv_row(row) for row in rows[1:]], zoo["root"])
    assert from_csv.keys() == jsonl.keys()
    for key, record in jsonl.items():
        other = from_csv[key]
        assert other["path"] == record["path"].encode("utf-8", "backslashreplace").decode("utf-8")
        for name in FIELDS:
            if name != "path":
                assert other[name] == record[name], (key, name)
    newline = [r for r in rows[1:] if r[0].endswith("new\nline.png")]
    assert len(newline) == 1  # one quoted field, not two broken rows


def test_odd_names_keep_jsonl_valid(zoo: dict[str, Any], zoo_run: dict) -> None:
    raw = zoo_run["jsonl"].read_bytes()
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == zoo_run["summary"]["items"]
    raw.decode("utf-8")  # valid UTF-8 even with a name that is not
    paths = {r["path"] for r in read_jsonl(zoo_run["jsonl"])}
    assert zoo["non_utf8"] in paths  # \udcff escape reads back as the same name
    assert str(zoo["root"] / "név ünicode.png") in paths and "név ünicode" in raw.decode("utf-8")


def test_stubs_give_exact_scores(tmp_path: Path) -> None:
    from PIL import Image

    from tests.scoring_fixtures import stub_ensemble, stub_probability

    images = {"dark.png": 30, "mid.png": 115, "bright.png": 240}
    for name, level in images.items():
        Image.new("RGB", (20, 10), (level,) * 3).save(tmp_path / name)
    summary = score(stub_ensemble("brightness"), [str(tmp_path)], tmp_path / "o.jsonl")
    records = {Path(r["path"]).name: r for r in read_jsonl(tmp_path / "o.jsonl")}
    for name, level in images.items():
        expected = stub_probability(Image.new("RGB", (20, 10), (level,) * 3))
        assert records[name]["score"] == pytest.approx(expected, abs=1e-6)
    assert [records[n]["band"] for n in images] == ["authentic", "uncertain", "synthetic"]
    assert summary["bands"] == {
        "authentic": 1,
        "uncertain": 1,
        "likely_synthetic": 0,
        "synthetic": 1,
    }
    assert np.isclose(
        records["bright.png"]["score"], 1 / (1 + np.exp(-20 * (240 / 255 - 0.5))), atol=1e-6
    )

"""score.py output: valid JSONL/CSV for any name, and the exactly-once bookkeeping of --resume."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from deepsift.core.errors import UserError
from deepsift.scoring.inputs import item_key
from deepsift.scoring.output import FIELDS, OutputFile, decode_csv_row, new_record


def records() -> list[dict]:
    odd = os.fsdecode(b"/data/caf\xc3\xa9 \xff\nx\r.png")  # UTF-8, a stray byte, CR and LF
    out = [
        new_record(
            path="/data/a.png",
            kind="image",
            sha256="ab" * 32,
            score=0.25,
            band="uncertain",
            calibrated=False,
            scores={"m": 0.25},
        ),
        new_record(path=odd, kind="image", sha256="cd" * 32, error='quote " and, comma'),
        new_record(path="/v.mp4", frame=3, kind="frame", score=0.5),
        new_record(
            path="/v.mp4",
            kind="video",
            sha256="ef" * 32,
            score=0.5,
            frames=[{"frame": 3, "score": 0.5}],
            unstable=True,
        ),
        new_record(
            path="/z.zip",
            member="../x\n.png",
            member_index=2,
            kind="image",
            provenance={"a": [1, None]},
        ),
    ]
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_round_trip_of_awkward_records(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"o.{fmt}"
    sink = OutputFile(path, fmt)
    written = records()
    offsets = sink.write(written)
    for offset, record in zip(offsets, written, strict=True):
        back = sink.read_at(offset)
        assert item_key(
            back["path"], back["member"], back["member_index"], back["frame"]
        ) == item_key(record["path"], record["member"], record["member_index"], record["frame"])
        for name in FIELDS:
            if name != "path":
                assert back[name] == record[name], name
    sink.close()
    raw = path.read_bytes()
    raw.decode("utf-8")  # strict UTF-8 although one name is not
    if fmt == "jsonl":
        lines = raw.split(b"\n")
        assert len(lines) == len(written) + 1 and lines[-1] == b""
        assert json.loads(lines[0])["path"] == "/data/a.png"
        assert json.loads(lines[1])["path"] == written[1]["path"]  # \udcff escape reads back as is
    else:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        assert tuple(rows[0]) == FIELDS and len(rows) == len(written) + 1
        assert decode_csv_row(rows[5])["member"] == "../x\n.png"


def test_existing_output_needs_resume_or_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    OutputFile(path).write(records()[:1])
    with pytest.raises(UserError, match="--resume"):
        OutputFile(path)
    assert OutputFile(path, overwrite=True).state.done == set()
    assert path.read_bytes() == b""


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_drops_a_torn_line_and_orphan_frames(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"o.{fmt}"
    sink = OutputFile(path, fmt)
    sink.write(records()[:2])
    complete = path.stat().st_size
    sink.write(records()[2:3])  # a frame record whose video record was never written
    sink.write(records()[4:5])
    sink.close()
    torn = path.read_bytes()[:-7]  # killed in the middle of the last record
    path.write_bytes(torn)
    resumed = OutputFile(path, fmt, resume=True)
    assert path.stat().st_size == complete  # frame + torn line dropped, complete records kept
    assert resumed.state.truncated_bytes == len(torn) - complete
    assert resumed.state.done == {
        item_key(r["path"], r["member"], r["member_index"], r["frame"]) for r in records()[:2]
    }
    assert resumed.state.n_items == 2
    assert set(resumed.state.sha_index) == {bytes.fromhex("ab" * 32), bytes.fromhex("cd" * 32)}
    resumed.write(records()[2:])
    resumed.close()
    again = OutputFile(path, fmt, resume=True)
    assert again.state.n_items == 4 and again.state.truncated_bytes == 0


def test_a_bad_line_in_the_middle_is_not_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    sink = OutputFile(path)
    sink.write(records()[:1])
    sink.handle.write(b"{not json}\n")
    sink.write(records()[1:2])
    sink.close()
    with pytest.raises(UserError, match="not a complete JSONL record and is not the last"):
        OutputFile(path, resume=True)


def test_csv_with_other_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_text("path,label\na.png,1\n", encoding="utf-8")
    with pytest.raises(UserError, match="other columns"):
        OutputFile(path, resume=True)


def test_nan_and_infinity_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    sink = OutputFile(path)
    sink.write([new_record(path="a", score=float("nan"), scores={"m": float("inf")})])
    sink.close()
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["score"] is None and record["scores"] == {"m": None}


def test_csv_never_hands_a_spreadsheet_a_formula(tmp_path: Path) -> None:
    names = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3+cmd", "@SUM(A1)", "\tx", "'quoted", "ok"]
    written = [
        new_record(path="/in.zip", member=name, member_index=i, kind="image", error=name)
        for i, name in enumerate(names)
    ]
    path = tmp_path / "o.csv"
    sink = OutputFile(path, "csv")
    offsets = sink.write(written)
    sink.close()
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row, name in zip(rows, names, strict=True):
        for column in ("member", "error"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t")), row[column]
            assert row[column] == (name if name == "ok" else "'" + name)
    resumed = OutputFile(path, "csv", resume=True)
    for offset, record in zip(offsets, written, strict=True):
        back = resumed.read_at(offset)
        assert (back["member"], back["error"]) == (record["member"], record["error"])
    assert resumed.state.n_items == len(names)

"""score.py killed with SIGKILL at any moment and resumed: every item exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from deepsift.app.score_cli import main
from tests.conftest import ROOT
from tests.scoring_fixtures import (
    TINY,
    noise,
    one_thread,  # noqa: F401 - a fixture
    read_jsonl,
)


def _command(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "score.py"),
        str(folder),
        "--out",
        str(out),
        *TINY,
        "--workers",
        "1",
        "--batch-size",
        "2",
        "--no-provenance",
        "--no-pdq",
        "--quiet",
        *extra,
    ]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _orphans(marker: str) -> list[int]:
    """Processes still running with ``marker`` on their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.usefixtures("one_thread")
def test_sigkill_then_resume_writes_every_item_exactly_once(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(60):
        Image.fromarray(noise(i, 36, 36)).save(folder / f"{i:03d}.png")
    for i in range(5):  # duplicates: their originals may be written before or after the kill
        shutil.copy(folder / f"{i * 12:03d}.png", folder / f"dup_{i}.png")
    total = 65
    out = tmp_path / "scores.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        _command(folder, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while _lines(out) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    written = _lines(out)
    assert 5 <= written < total, "the run must be killed in the middle"
    with open(out, "ab") as handle:  # as if the kill had landed in the middle of a write
        handle.write(b'{"path": "' + str(folder).encode() + b'/torn.png", "member"')

    time.sleep(2.5)  # workers notice their parent is gone within about a second
    assert _orphans(str(out)) == []

    # resumed in this process (only the kill needed a separate one)
    resumed = main(_command(folder, out, "--resume")[2:])
    assert resumed["this_run"]["interrupted"] is False
    records = read_jsonl(out)
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)) == total
    assert set(paths) == {str(p) for p in folder.iterdir()}
    assert all(r["error"] is None and r["score"] is not None for r in records)
    duplicates = [r for r in records if r["duplicate_of"]]
    assert len(duplicates) == 5
    for record in duplicates:  # a copy of its original's verdict, wherever the kill fell
        original = next(r for r in records if r["path"] == record["duplicate_of"]["path"])
        assert (record["sha256"], record["score"]) == (original["sha256"], original["score"])
    summary = json.loads((tmp_path / "scores.summary.json").read_text(encoding="utf-8"))
    assert summary["items"] == total
    assert summary["resumed"]["items_already_done"] == written
    assert summary["resumed"]["torn_bytes_dropped"] > 0
    assert summary["this_run"]["items"] == total - written

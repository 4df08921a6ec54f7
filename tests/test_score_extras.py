"""score.py provenance and PDQ fields, through adapters that survive a missing or failing reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from deepsift.scoring import prepare as prepare_module
from deepsift.scoring.calibration import DEFAULT_BANDS
from deepsift.scoring.extras import jsonable, load_optional, safe_pdq, safe_provenance
from deepsift.scoring.prepare import PrepareOptions
from deepsift.scoring.runner import MemorySink, RunOptions, Scorer
from tests.scoring_fixtures import noise, stub_ensemble

A1111 = (
    "a photo of a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
    "Seed: 1, Size: 512x512, Model: sd15"
)


def score(paths: list[Path], **prepare: bool) -> dict[str, dict]:
    options = RunOptions(
        inputs=[str(p) for p in paths],
        workers=0,
        progress=False,
        prepare_options=PrepareOptions(**prepare),
    )
    sink = MemorySink()
    Scorer(stub_ensemble("brightness"), DEFAULT_BANDS, options, sink).run()
    return {Path(r["path"]).name: r for r in sink.records}


def test_generator_metadata_and_pdq_reach_the_record(tmp_path: Path) -> None:
    pytest.importorskip("deepsift.scoring.provenance")
    from deepsift.scoring.pdq import pdq_hash

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    image = Image.fromarray(noise(0, 64, 64))
    image.save(tmp_path / "a1111.png", pnginfo=info)
    image.save(tmp_path / "plain.png")
    records = score([tmp_path / "a1111.png", tmp_path / "plain.png"])
    tagged, plain = records["a1111.png"], records["plain.png"]
    assert tagged["provenance"]["indicators"], tagged["provenance"]
    assert plain["provenance"]["indicators"] == []
    assert tagged["pdq"] == pdq_hash(image) and len(tagged["pdq"]["hash"]) == 64
    assert tagged["pdq"] == plain["pdq"]  # same pixels, same perceptual hash
    assert tagged["sha256"] != plain["sha256"]


def test_switched_off_or_missing_readers_leave_null_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.fromarray(noise(1)).save(tmp_path / "a.png")
    off = score([tmp_path / "a.png"], provenance=False, pdq=False)["a.png"]
    assert off["provenance"] is None and off["pdq"] is None and off["score"] is not None
    monkeypatch.setattr(
        prepare_module, "load_optional", lambda module, function: (None, f"{module} missing")
    )
    missing = score([tmp_path / "a.png"])["a.png"]
    assert (
        missing["provenance"] is None
        and missing["pdq"] is None
        and missing["score"] == off["score"]
    )


def test_a_failing_reader_costs_one_field_not_the_run() -> None:
    def broken(*args):
        raise RuntimeError("boom")

    assert safe_provenance(broken, b"", None, None) == {"error": "RuntimeError: boom"}
    assert safe_pdq(broken, Image.new("RGB", (4, 4))) == {"error": "RuntimeError: boom"}
    found, why = load_optional("deepsift.no_such_module", "f")
    assert found is None and "no_such_module" in why
    found, why = load_optional("json", "no_such_function")
    assert found is None and "no_such_function" in why


def test_jsonable() -> None:
    value = jsonable({"a": np.float32(0.5), "b": b"\x01\xff", "c": (1, math.nan), 2: np.int64(3)})
    assert value == {"a": 0.5, "b": "01ff", "c": [1, None], "2": 3}

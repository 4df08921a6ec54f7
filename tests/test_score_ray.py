"""score.py --engine ray: the same records as the local engine, and bad engine settings in one line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from deepsift.app.score_cli import main
from deepsift.scoring.calibration import DEFAULT_BANDS
from deepsift.scoring.inputs import InputOptions
from deepsift.scoring.output import OutputFile
from deepsift.scoring.runner import RunOptions, Scorer
from tests.scoring_fixtures import BAD, make_zoo, read_jsonl, stub_ensemble

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Any:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()


def _key(record: dict[str, Any]) -> tuple:
    return (record["path"], record["member"], record["member_index"], record["kind"])


def _same(a: Any, b: Any, tol: float = 1e-5) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0, abs_tol=tol)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b, strict=True))
    return a == b


def test_ray_engine_writes_the_local_engines_records(cluster: Any, tmp_path: Path) -> None:
    """The bad-input zoo plus a picture with two faces, scored by a face member and a
    whole-image member (the faces found by a stub face detector, in the decode tasks)."""
    import functools

    import numpy as np
    from PIL import Image

    from deepsift.scoring.faces import Fixed
    from deepsift.scoring.ray_engine import score_ray
    from tests.scoring_fixtures import BoxFaces

    zoo = make_zoo(tmp_path / "in")
    canvas = np.full((160, 200, 3), 128, np.uint8)
    canvas[20:100, 20:100] = 250  # a bright "face"
    canvas[110:150, 130:170] = 5  # a dark one
    Image.fromarray(canvas).save(zoo["root"] / "two_faces.png")
    faces = Fixed(BoxFaces({200: [(130, 110, 170, 150), (20, 20, 100, 100)]}))
    load = functools.partial(stub_ensemble, "brightness", "width", faces=(True, False))
    options = RunOptions(
        inputs=[str(zoo["root"])],
        batch_size=4,
        workers=0,
        progress=False,
        input_options=InputOptions(max_member_bytes=1_000_000),
    )
    sink = OutputFile(tmp_path / "local.jsonl", overwrite=True)
    Scorer(load(), DEFAULT_BANDS, options, sink, faces).run()
    sink.close()
    sink = OutputFile(tmp_path / "ray.jsonl", overwrite=True)
    # blocks of 12 items: several shards, so duplicates are resolved across shards too
    run = score_ray(
        load,
        DEFAULT_BANDS,
        options,
        sink,
        shard_dir=tmp_path / "shards",
        items_per_shard=12,
        face_factory=faces,
    )
    sink.close()
    local = {_key(r): r for r in read_jsonl(tmp_path / "local.jsonl")}
    remote = read_jsonl(tmp_path / "ray.jsonl")
    assert run["shards"] > 1
    assert len(remote) == len({_key(r) for r in remote}) == len(local)  # no duplicate, no loss
    for record in remote:
        expected = local[_key(record)]
        assert _same(record, expected), (record, expected)
    errors = {Path(r["path"]).name: r["error"] for r in remote if r["error"]}
    for name, reason in BAD.items():
        assert reason in errors[name]
    assert sum(r["score"] is not None for r in remote) > 10
    assert any(r.get("duplicate_of") for r in remote)
    assert not (tmp_path / "shards").exists()  # merged shards are cleaned up
    (two,) = [r for r in remote if Path(r["path"]).name == "two_faces.png"]
    # the 80-px face is scored, the 40-px one is below the default --min-face 64
    assert [f["box"] for f in two["faces"]] == [[20.0, 20.0, 100.0, 100.0]]
    assert two["scores"]["stub_brightness"] == two["faces"][0]["score"]
    assert sum(r["scores"]["stub_brightness"] is None for r in remote if r["scores"]) > 10


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray-address", "127.0.0.1:9"], "--ray-address 127.0.0.1:9: no Ray cluster answers"),
        (["--gpus-per-worker", "1"], "--gpus-per-worker 1.0 but the Ray cluster has 0 GPU(s)"),
        (["--model-workers", "0"], "--model-workers must be positive"),
        (["--precision", "fp16"], "--precision fp16 needs a CUDA device (scoring on cpu)"),
        (
            ["--decode-device", "cuda", "--no-pdq", "--no-provenance"],
            "--decode-device cuda needs GPUs for the Ray engine's model actors",
        ),
        (  # GPU actors asked for on a cluster without GPUs: start_ray's line
            ["--decode-device", "cuda", "--gpus-per-worker", "1", "--no-pdq", "--no-provenance"],
            "--gpus-per-worker 1.0 but the Ray cluster has 0 GPU(s)",
        ),
    ],
)
def test_bad_engine_settings_fail_in_one_line(
    cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"not really")
    out = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as exc:
        main([str(image), "--out", str(out), "--detector", "durall", "--engine", "ray", *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert not out.exists()


def test_resume_keeps_committed_shards_and_scores_the_rest(cluster: Any, tmp_path: Path) -> None:
    """A killed run left one committed shard (the first 10 listed items) and a torn tmp file:
    --resume neither lists nor scores those items again, and writes every item once."""
    from deepsift.scoring.inputs import item_key, iter_items
    from deepsift.scoring.output import encode_jsonl
    from deepsift.scoring.ray_engine import score_ray, shard_name

    root = make_zoo(tmp_path / "in")["root"]
    options = RunOptions(
        inputs=[str(root)],
        workers=0,
        batch_size=4,
        progress=False,
        input_options=InputOptions(max_member_bytes=1_000_000),
    )
    sink = OutputFile(tmp_path / "local.jsonl", overwrite=True)
    Scorer(stub_ensemble(), DEFAULT_BANDS, options, sink).run()
    sink.close()
    local = read_jsonl(tmp_path / "local.jsonl")
    listed = [item.key() for item in iter_items(options.inputs, options.input_options)]
    first = set(listed[:10])
    committed = [r for r in local if item_key(r["path"], r["member"], r["member_index"]) in first]
    marked = next(r for r in committed if r["score"] is not None and not r["duplicate_of"])
    marked["score"] = 0.123456  # proves the committed record is kept, not scored again
    shards = tmp_path / "r.jsonl.shards"
    shards.mkdir()
    (shards / shard_name(0, 9)).write_bytes(b"".join(encode_jsonl(r) for r in committed))
    (shards / (shard_name(10, 17) + ".tmp-999")).write_bytes(b'{"path": "torn')
    sink = OutputFile(tmp_path / "r.jsonl", overwrite=True)
    run = score_ray(
        stub_ensemble,
        DEFAULT_BANDS,
        options,
        sink,
        shard_dir=shards,
        items_per_shard=8,
        resume=True,
    )
    sink.close()
    remote = read_jsonl(tmp_path / "r.jsonl")
    assert run["shards_resumed"] == 1 and run["items_listed"] == len(listed) - 10
    assert sorted(map(_key, remote)) == sorted(map(_key, local))  # each item exactly once
    kept = next(r for r in remote if _key(r) == _key(marked))
    assert kept["score"] == 0.123456


def test_a_killed_model_actor_is_restarted_and_every_item_written_once(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One model actor os._exit()s mid-run, after committing a shard but before returning
    it: Ray restarts the actor and retries the block, which rewrites the same shard.
    And ``gray.png`` kills the model actor every time it is scored (a poison item): after
    two deaths it gets one error record naming it, and every other item is scored once.
    Only the driver and the model actors (once per start) build the ensemble, not the
    decode tasks."""
    from deepsift.scoring.output import ParquetOutput
    from deepsift.scoring.ray_engine import KILL_ENV, POISON_ENV, score_ray

    root = make_zoo(tmp_path / "in")["root"]
    options = RunOptions(
        inputs=[str(root)],
        workers=0,
        batch_size=4,
        progress=False,
        input_options=InputOptions(max_member_bytes=1_000_000),
    )
    sink = OutputFile(tmp_path / "local.jsonl", overwrite=True)
    Scorer(stub_ensemble(), DEFAULT_BANDS, options, sink).run()
    sink.close()
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ENV, str(marker))
    monkeypatch.setenv(POISON_ENV, "score:gray.png")
    log = tmp_path / "loads.txt"
    jsonl = OutputFile(tmp_path / "r.jsonl", overwrite=True)
    parquet = ParquetOutput(tmp_path / "r.parquet")  # --format parquet of the same run
    run = score_ray(
        _CountingLoad(log),
        DEFAULT_BANDS,
        options,
        _Tee(jsonl, parquet),
        shard_dir=tmp_path / "s",
        items_per_shard=16,
    )
    jsonl.close()
    parquet.finish()
    _check_parquet(tmp_path / "r.parquet", tmp_path / "r.jsonl")
    assert marker.exists()  # the actor did die
    remote = read_jsonl(tmp_path / "r.jsonl")
    local = read_jsonl(tmp_path / "local.jsonl")
    assert run["shards"] > 1
    assert len(remote) == len({_key(r) for r in remote})  # no duplicate
    assert sorted(map(_key, remote)) == sorted(map(_key, local))  # no loss
    gray = str(root / "gray.png")
    (poisoned,) = [r for r in remote if r["path"] == gray]
    assert poisoned["error"] == (
        f"the model worker died while scoring it ({gray}) on a retry of its chunk; not scored again"
    )
    by_key = {_key(r): r for r in local}
    for record in remote:
        if record["path"] != gray:
            assert _same(record, by_key[_key(record)]), record
    # the driver once, the model actor four times (started, then after each of 3 deaths)
    assert len(log.read_text().split()) == 5


def _escaped(value: Any) -> Any:
    return value.encode("utf-8", "backslashreplace").decode() if value else value


class _Tee:
    """Both sinks get every record the Ray engine writes."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def write(self, records: list[dict[str, Any]]) -> None:
        for sink in self.sinks:
            sink.write(records)

    def sync(self) -> None:
        for sink in self.sinks:
            sink.sync()


def _check_parquet(parquet_path: Path, jsonl_path: Path) -> None:
    """The Parquet file has the schema of output.FIELDS and the JSONL file's rows."""
    import pyarrow.parquet as pq

    from deepsift.scoring.output import FIELDS, parquet_schema, read_parquet_records

    table = pq.read_table(parquet_path)
    assert table.schema.equals(parquet_schema()) and table.column_names == list(FIELDS)
    rows = list(read_parquet_records(parquet_path))
    # Parquet strings are UTF-8: a name's undecodable bytes are \\udcXX text, as in CSV
    expected = [
        {k: _escaped(v) if k in ("path", "member") else v for k, v in r.items()}
        for r in read_jsonl(jsonl_path)
    ]
    assert len(rows) == len(expected) > 20
    by_key = {_key(r): r for r in expected}
    assert len({_key(r) for r in rows}) == len(rows) and by_key.keys() == set(map(_key, rows))
    for row in rows:
        assert _same(row, by_key[_key(row)]), (row, by_key[_key(row)])
    assert any(r["duplicate_of"] for r in rows) and any(r["error"] for r in rows)


def test_local_engine_parquet_output_holds_its_jsonl_rows(tmp_path: Path) -> None:
    """(The Ray engine's Parquet output is checked in the killed-actor test.)"""
    from deepsift.scoring.output import ParquetOutput

    root = make_zoo(tmp_path / "in")["root"]
    options = RunOptions(
        inputs=[str(root)],
        workers=0,
        batch_size=4,
        progress=False,
        input_options=InputOptions(max_member_bytes=1_000_000),
    )
    jsonl = OutputFile(tmp_path / "local.jsonl", overwrite=True)
    Scorer(stub_ensemble(), DEFAULT_BANDS, options, jsonl).run()
    jsonl.close()
    parquet = ParquetOutput(tmp_path / "local.parquet")
    Scorer(stub_ensemble(), DEFAULT_BANDS, options, parquet).run()
    assert not (tmp_path / "local.parquet").exists()  # written only when the run is complete
    parquet.finish()
    assert not parquet.staging.exists()
    _check_parquet(tmp_path / "local.parquet", tmp_path / "local.jsonl")


def test_score_cli_writes_parquet_from_the_out_suffix(tmp_path: Path) -> None:
    """``--out r.parquet`` (local engine, a real tiny detector): the same rows as JSONL, the
    summary says parquet, and the staging file is gone."""
    import json

    import torch
    from PIL import Image

    from deepsift.scoring.output import read_parquet_records
    from tests.scoring_fixtures import TINY

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40 + i, 32), (i, 9, 99)).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not an image")
    quick = ["--workers", "0", "--quiet", "--no-provenance", "--no-pdq"]
    torch.manual_seed(0)  # the same random weights in both runs
    main([str(folder), "--out", str(tmp_path / "a.jsonl"), *TINY, *quick])
    torch.manual_seed(0)
    main([str(folder), "--out", str(tmp_path / "b.parquet"), *TINY, *quick])
    summary = json.loads((tmp_path / "b.summary.json").read_text())
    assert summary["format"] == "parquet"
    assert not (tmp_path / "b.parquet.part.jsonl").exists()
    rows = {_key(r): r for r in read_parquet_records(tmp_path / "b.parquet")}
    expected = {_key(r): r for r in read_jsonl(tmp_path / "a.jsonl")}
    assert rows.keys() == expected.keys() and len(rows) == 4
    for key, row in rows.items():
        assert _same(row, expected[key]), (row, expected[key])


# -- streaming listing, driver SIGKILL, engine errors -----------------------------------------
def test_100k_path_manifest_is_listed_in_a_ray_task_not_by_the_driver(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing of a 100,000-path manifest runs in a Ray task and streams out chunk by
    chunk: the driver never calls iter_items, and its Python heap stays far below what the
    listing alone takes (the earlier engine held every row: ~45 MB for these paths)."""
    import pickle
    import tracemalloc

    from deepsift.scoring import ray_engine

    def count(batch: Any) -> dict[str, list[int]]:
        return {"n": [len(pickle.loads(blob)) for blob in batch["items"]]}

    def listed(manifest: Path) -> tuple[int, int]:
        options = RunOptions(inputs=[f"@{manifest}"], workers=0, progress=False)
        ds = ray_engine.listing_dataset(options, tmp_path / "shards", [], 5000)
        ds = ds.map_batches(count, batch_size=1, batch_format="numpy", num_cpus=1)
        counts = [int(row["n"]) for row in ds.iter_rows()]
        return sum(counts), len(counts)

    def write(manifest: Path, n: int) -> None:
        with manifest.open("w") as handle:
            handle.write("path\n")
            for i in range(n):
                handle.write(f"{tmp_path}/missing/{i:06d}-{'x' * 60}.jpg\n")

    def no_driver_listing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the driver listed the inputs")

    monkeypatch.setattr(ray_engine, "iter_items", no_driver_listing)
    (tmp_path / "shards").mkdir()
    write(tmp_path / "warm.csv", 10)
    assert listed(tmp_path / "warm.csv")[0] == 10  # Ray Data's lazy imports happen here
    n = 100_000
    write(tmp_path / "big.csv", n)
    tracemalloc.start()
    try:
        total, chunks = listed(tmp_path / "big.csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == n and chunks == n // 5000  # streamed out as 20 chunks of 5,000
    assert peak < 4 * 2**20, f"driver's peak Python heap {peak / 2**20:.1f} MiB while listing"


def _pngs(folder: Path, n: int) -> list[str]:
    from PIL import Image

    from tests.scoring_fixtures import noise

    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(str(folder / f"{i:03d}.png"))
        Image.fromarray(noise(i, 24, 24)).save(paths[-1])
    return paths


@pytest.mark.slow  # a score.py subprocess: imports and Ray job start-up
def test_driver_sigkill_then_resume_writes_each_item_once(cluster: Any, tmp_path: Path) -> None:
    """score.py --engine ray in a subprocess, SIGKILLed once a shard is committed; the
    rerun with --resume keeps those shards, scores the rest and writes every item once."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from deepsift.scoring.ray_engine import DELAY_ENV
    from tests.scoring_fixtures import TINY

    paths = _pngs(tmp_path / "in", 12)
    out = tmp_path / "r.jsonl"
    shards = tmp_path / "r.jsonl.shards"
    address = ray.get_runtime_context().gcs_address
    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        str(root / "score.py"),
        str(tmp_path / "in"),
        "--out",
        str(out),
        *TINY,
        *("--engine", "ray", "--ray-address", address, "--items-per-shard", "2"),
        *("--quiet", "--no-provenance", "--no-pdq"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        command, cwd=root, env={**env, DELAY_ENV: "1.0"}, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not any(shards.glob("shard-*.jsonl")):
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no shard committed in 120 s"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    committed = {p.name for p in shards.glob("shard-*.jsonl")}
    assert 1 <= len(committed) < 6  # killed mid-run: 12 items make 6 shards
    # the rerun in this process (the same CLI, on the fixture's cluster): one subprocess
    # start-up less than a second score.py
    main([*command[2:], "--resume"])
    records = read_jsonl(out)
    assert sorted(r["path"] for r in records) == sorted(paths)  # each item exactly once
    assert all(r["error"] is None and r["score"] is not None for r in records)
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["decode_device"] == {  # CPU actors: auto decodes in the decode tasks
        "requested": "auto",
        "decode_device": "cpu",
        "reason": "the model actors get no GPU (--gpus-per-worker 0)",
        "tensor_path": False,
        "jpegs_on_device": 0,
        "device_decode_fallbacks": 0,
    }
    assert summary["this_run"]["shards_resumed"] >= len(committed)
    assert (
        summary["this_run"]["items_listed"]
        == len(paths) - 2 * summary["this_run"]["shards_resumed"]
    )
    assert not shards.exists()


_MISMATCH = (
    "Version mismatch: The cluster was started with:\n"
    "    Ray: 2.9.3\n"
    "    Python: 3.10.12\n"
    "This process on node 10.0.0.5 was started with:\n"
    "    Ray: 2.60.0\n"
    "    Python: 3.11.7\n"
)


@pytest.mark.parametrize(
    ("address", "raised", "message"),
    [
        (
            "auto",
            RuntimeError(_MISMATCH),
            "Ray version mismatch: the cluster runs Ray 2.9.3 on Python 3.10.12, "
            "this client Ray 2.60.0 on Python 3.11.7",
        ),
        (
            "auto",
            ConnectionError(
                "Could not find any running Ray instance. Please specify the one to connect "
                "to by setting `--address` flag or `RAY_ADDRESS` environment variable."
            ),
            "--ray-address auto: cannot connect to a Ray cluster (Could not find any running",
        ),
        (
            "ray://10.0.0.5:10001",
            ConnectionError("ray client connection timeout"),
            "--ray-address ray://10.0.0.5:10001: cannot connect to a Ray cluster "
            "(ray client connection timeout)",
        ),
    ],
)
def test_ray_init_failures_are_one_line_and_write_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    address: str,
    raised: Exception,
    message: str,
) -> None:
    """ray.init raising what Ray raises (version mismatch, no cluster, Ray Client timeout)."""
    from deepsift.scoring import ray_engine

    def init(**kwargs: Any) -> None:
        raise raised

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray_engine, "_check_reachable", lambda address: None)
    image = tmp_path / "a.png"
    image.write_bytes(b"not really")
    out = tmp_path / "r.jsonl"
    argv = [str(image), "--out", str(out), "--detector", "durall", "--engine", "ray"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--ray-address", address])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists() and not (tmp_path / "r.jsonl.shards").exists()


# -- poison items, decode tasks without the network ------------------------------------------
class _CountingLoad:
    """A picklable ensemble loader that appends a line to ``log`` each time it builds one."""

    def __init__(self, log: Path, **kwargs: Any) -> None:
        self.log = str(log)
        self.kwargs = kwargs

    def __call__(self) -> Any:
        import os

        with open(self.log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return stub_ensemble(**self.kwargs)


def test_decode_tasks_get_the_transform_without_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """member_specs pickles each member's eval_transform bound to a copy of the detector
    with no parameters, buffers or submodules: unpickling it runs no Module.__init__, and
    it preprocesses as the detector does."""
    import pickle

    import torch
    from PIL import Image

    from deepsift.scoring.models import Ensemble, Member
    from deepsift.scoring.ray_engine import member_specs
    from tests.scoring_fixtures import StubDetector, noise

    ensemble = stub_ensemble()
    detector = ensemble.members[0].detector
    detector.extra = torch.nn.Linear(512, 512)  # a submodule the decode side must not get
    blob = pickle.dumps(member_specs(ensemble))
    assert len(blob) < 0.1 * len(pickle.dumps(detector))
    built = []
    monkeypatch.setattr(StubDetector, "__init__", lambda *a, **k: built.append(a))
    real_init = torch.nn.Module.__init__
    monkeypatch.setattr(
        torch.nn.Module, "__init__", lambda self, *a, **k: built.append(self) or real_init(self)
    )
    (spec,) = pickle.loads(blob)
    assert built == []  # no network constructed
    shell = spec.transform.__self__
    assert list(shell.parameters()) == [] and list(shell.children()) == []
    image = Image.fromarray(noise(3, 20, 28))
    got = spec.transform({"image": image, "record": None})["image"]
    want = detector.eval_transform({"image": image, "record": None})["image"]
    assert torch.equal(got, want)

    class NeedsItsNetwork(StubDetector):  # a transform that runs a submodule
        def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
            out = super().transform(sample, train)
            return {"image": out["image"] * self.scale.weight}

    monkeypatch.undo()
    needy = NeedsItsNetwork("brightness")
    needy.scale = torch.nn.Linear(1, 1)
    (spec,) = member_specs(Ensemble([Member("needy", needy, False, {})]))
    assert spec.transform.__self__ is needy  # falls back to the whole detector


def test_a_decode_task_that_dies_twice_on_an_item_writes_its_error_record(tmp_path: Path) -> None:
    """Ray retries a dead decode task with the same chunk: two forked attempts die on
    ``wide.png`` (the stub's transform exits on width 30; the second attempt logs each
    item before it starts), the third writes that item's error record and prepares the
    rest. (The model actors' side runs on Ray in the killed-actor test.)"""
    import os
    import pickle

    import pyarrow as pa
    from PIL import Image

    from deepsift.scoring.inputs import iter_items
    from deepsift.scoring.prepare import PrepareOptions
    from deepsift.scoring.ray_engine import _chunk_row, _prepare_chunk, member_specs
    from tests.scoring_fixtures import noise

    paths = _pngs(tmp_path / "in", 3)
    wide = tmp_path / "in" / "wide.png"
    Image.fromarray(noise(99, 24, 30)).save(wide)
    items = list(enumerate(iter_items([str(tmp_path / "in")], InputOptions())))
    batch = pa.Table.from_pylist([_chunk_row(items)])
    specs = pickle.dumps((member_specs(stub_ensemble(crash_width=30)), None))
    shards = tmp_path / "s"
    shards.mkdir()

    def attempt() -> Any:
        options = PrepareOptions(provenance=False, pdq=False)
        return _prepare_chunk(batch, specs, options, str(shards), "t")

    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child exits
            try:
                attempt()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3  # died on wide.png
    prepared = pickle.loads(attempt().column("prepared")[0].as_py())
    errors = {Path(p.item.path).name: p.record["error"] for _, p in prepared}
    assert errors == {
        **{Path(p).name: None for p in paths},
        "wide.png": f"the decoding worker died while scoring it ({wide}) on a retry of its chunk; not scored again",
    }
    assert all(p.stacks for _, p in prepared if p.record["error"] is None)


# -- --decode-device on the Ray engine ------------------------------------------------------
#: a JPEG comment: the model actors' decoder (patched by _RejectingLoad) refuses such a file
_REJECT = b"deepsift test: the device decoder refuses this file"


def _decode_ensemble() -> Any:
    """Two brightness stubs with tensor transforms: no resize, and Pillow's square bilinear
    resize to 24 px (pillow_resize in the model actors)."""
    from deepsift.scoring.models import Ensemble, Member
    from detectors.preprocessing import Preprocessing
    from tests.scoring_fixtures import StubDetector

    plain, resized = StubDetector("brightness"), StubDetector("brightness")
    resized.preprocessing = Preprocessing(
        size=24, resize="square", crop="none", mean=(0, 0, 0), std=(1, 1, 1)
    )
    return Ensemble(
        [
            Member("plain", plain, False, {"detector": "plain"}),
            Member("resized", resized, False, {"detector": "resized"}),
        ]
    )


class _RejectingLoad:
    """The model actors' loader: also makes the device decoder of the actor's process refuse
    (None) every JPEG holding :data:`_REJECT`, as nvJPEG refuses a file Pillow reads, so the
    actor's per-item fallback runs. Only the actors call it (the driver gets ``ensemble``)."""

    def __call__(self) -> Any:
        from deepsift.scoring import runner

        real = runner.decode_batch

        def refusing(datas: list[bytes], device: Any) -> list[Any]:
            out = real(datas, device)
            return [None if _REJECT in d else t for d, t in zip(datas, out, strict=True)]

        if not getattr(real, "refusing", False):
            refusing.refusing = True  # type: ignore[attr-defined]
            runner.decode_batch = refusing
        return _decode_ensemble()


def test_decode_on_device_on_the_ray_engine_gives_the_cpu_paths_records(
    cluster: Any, tmp_path: Path
) -> None:
    """``--decode-device``'s tensor path on the Ray engine, run on the CPU device as the local
    tests run it (``RunOptions.decode_on_device``; torchvision's CPU decoder, the code the GPU
    runs): the decode tasks ship the plain JPEGs undecoded, the model actor decodes and
    preprocesses them; the bad-input zoo gets the records of the CPU path (the local engine,
    ``--decode-device cpu``) with scores within 1e-6, across several shards; a JPEG the
    actor's decoder refuses is prepared again there on the CPU path (the same record); the
    counts are summed over the chunks."""
    from dataclasses import replace

    from PIL import Image

    from deepsift.scoring.prepare import PrepareOptions
    from deepsift.scoring.ray_engine import score_ray
    from tests.scoring_fixtures import encode, noise

    root = make_zoo(tmp_path / "in")["root"]
    for i, (height, width) in enumerate([(60, 90), (47, 31)]):  # up- and downscaled to 24
        image = Image.fromarray(noise(40 + i, height, width))
        (root / f"extra{i}.jpg").write_bytes(encode(image, "JPEG", quality=90))
    refused = encode(Image.fromarray(noise(50)), "JPEG", quality=90, comment=_REJECT)
    (root / "refused.jpg").write_bytes(refused)
    options = RunOptions(
        inputs=[str(root)],
        batch_size=4,
        workers=0,
        progress=False,
        input_options=InputOptions(max_member_bytes=1_000_000),
        prepare_options=PrepareOptions(pdq=False, provenance=False),
    )
    sink = OutputFile(tmp_path / "cpu.jsonl", overwrite=True)
    Scorer(_decode_ensemble(), DEFAULT_BANDS, options, sink).run()
    sink.close()
    sink = OutputFile(tmp_path / "ray.jsonl", overwrite=True)
    run = score_ray(
        _RejectingLoad(),
        DEFAULT_BANDS,
        replace(options, decode_on_device=True),
        sink,
        shard_dir=tmp_path / "shards",
        items_per_shard=10,
        ensemble=_decode_ensemble(),
    )
    sink.close()
    cpu = {_key(r): r for r in read_jsonl(tmp_path / "cpu.jsonl")}
    remote = read_jsonl(tmp_path / "ray.jsonl")
    assert run["shards"] > 1
    assert len(remote) == len({_key(r) for r in remote}) == len(cpu)
    for record in remote:
        assert _same(record, cpu[_key(record)], 1e-6), (record, cpu[_key(record)])
    # photo.jpg, lying.png, dir/b.jpg, extra0.jpg, extra1.jpg decoded in the actor;
    # CMYK, EXIF-rotated and truncated JPEGs took the CPU path in the decode tasks
    assert run["decode_device"] == {
        "decode_device": "cpu",  # the CPU device: the test hook
        "tensor_path": True,
        "jpegs_on_device": 5,
        "device_decode_fallbacks": 1,  # refused.jpg
    }
    (fallback,) = [r for r in remote if Path(r["path"]).name == "refused.jpg"]
    assert fallback["error"] is None and fallback["score"] is not None
    scored = [r for r in remote if Path(r["path"]).name in ("extra0.jpg", "extra1.jpg")]
    assert all(r["scores"]["plain"] != r["scores"]["resized"] for r in scored)  # resized


def test_a_retried_chunk_decodes_on_the_device_item_by_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model actor's retry of a chunk (an earlier attempt died on item 1) with
    ``decode_on_device``, run in this process: the decode task (in a process that ran the
    same members without it before) left the JPEGs undecoded,
    the retry decodes and scores them one at a time (so a death names its item), item 1
    gets its error record, and the others the CPU path's records."""
    import os
    import pickle
    from dataclasses import replace

    import pyarrow as pa
    import torch
    from PIL import Image

    from deepsift.scoring import runner
    from deepsift.scoring.inputs import iter_items
    from deepsift.scoring.prepare import PrepareOptions
    from deepsift.scoring.ray_engine import (
        _chunk_row,
        _prepare_chunk,
        _ScoreShard,
        member_specs,
        shard_name,
    )
    from deepsift.scoring.runner import MemorySink
    from tests.scoring_fixtures import encode, noise

    folder = tmp_path / "in"
    folder.mkdir()
    for i, (height, width) in enumerate([(40, 48), (33, 60), (50, 41), (40, 48)]):
        image = Image.fromarray(noise(60 + i, height, width))
        (folder / f"{i}.jpg").write_bytes(encode(image, "JPEG", quality=90))
    no_extras = PrepareOptions(pdq=False, provenance=False)
    options = RunOptions(
        inputs=[str(folder)], batch_size=4, workers=0, progress=False, prepare_options=no_extras
    )
    sink = MemorySink()
    Scorer(_decode_ensemble(), DEFAULT_BANDS, options, sink).run()
    cpu = {r["path"]: r for r in sink.records}
    items = list(enumerate(iter_items([str(folder)], InputOptions())))
    shards = tmp_path / "s"
    shards.mkdir()
    deferred = PrepareOptions(pdq=False, provenance=False, defer_jpeg=True)
    specs = pickle.dumps((member_specs(_decode_ensemble()), None))
    table = pa.Table.from_pylist([_chunk_row(items)])
    chunk = pickle.loads(_prepare_chunk(table, specs, no_extras).column("prepared")[0].as_py())
    assert all(p.jpeg is None and p.stacks for _, p in chunk)  # decoded in the task
    prepared = _prepare_chunk(table, specs, deferred)  # the same process, other options
    chunk = pickle.loads(prepared.column("prepared")[0].as_py())
    assert all(p.jpeg is not None and not p.stacks for _, p in chunk)  # left undecoded
    prefix = shards / ".attempt-score-000000000000-t"
    (shards / f"{prefix.name}-0").write_bytes(b"")  # the first attempt
    (shards / f"{prefix.name}-1").write_bytes(b"0\n1\n")  # a retry that died on item 1
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    batches: list[int] = []
    real = runner.decode_batch

    def counted(datas: list[bytes], device: Any) -> list[Any]:
        batches.append(len(datas))
        return real(datas, device)

    monkeypatch.setattr(runner, "decode_batch", counted)
    threads = torch.get_num_threads()
    try:
        actor = _ScoreShard(
            _decode_ensemble,
            DEFAULT_BANDS,
            replace(options, decode_on_device=True),
            str(shards),
            use_gpu=False,
            tag="t",
        )
        out = actor(prepared).to_pylist()
    finally:
        torch.set_num_threads(threads)
    assert out[0]["jpegs_on_device"] == 3 and out[0]["device_decode_fallbacks"] == 0
    assert out[0]["device"] == "cpu" and batches == [1, 1, 1]  # one item at a time
    records = read_jsonl(shards / shard_name(0, 3, "t"))
    died = items[1][1].path
    for record in records:
        if record["path"] == str(died):
            assert record["error"].startswith("the model worker died while scoring it")
        else:
            assert _same(record, cpu[record["path"]], 1e-6), record
    assert len(records) == 4 and os.path.exists(f"{prefix}-2")


def test_a_cpu_model_actor_runs_the_threads_it_is_given(tmp_path: Path) -> None:
    """score_ray gives CPU actors the cluster's CPUs per actor (one thread held Ray at 0.59x the
    local engine on 2 cores); GPU actors and the default keep one CPU thread."""
    import torch

    from deepsift.scoring.ray_engine import _ScoreShard

    threads = torch.get_num_threads()
    try:
        for given, expected in ((3, 3), (0, 1)):
            _ScoreShard(
                _decode_ensemble,
                DEFAULT_BANDS,
                RunOptions(inputs=[], workers=0, progress=False),
                str(tmp_path),
                use_gpu=False,
                cpu_threads=given,
            )
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(threads)

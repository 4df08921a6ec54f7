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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_ray_engine_writes_the_local_engines_records(cluster: Any, tmp_path: Path) -> None:
    from deepsift.scoring.ray_engine import score_ray

    zoo = make_zoo(tmp_path / "in")
    options = RunOptions(
        inputs=[str(zoo["root"])],
        batch_size=4,
        workers=0,
        progress=False,
        input_options=InputOptions(max_member_bytes=1_000_000),
    )
    sink = OutputFile(tmp_path / "local.jsonl", overwrite=True)
    Scorer(stub_ensemble(), DEFAULT_BANDS, options, sink).run()
    sink.close()
    sink = OutputFile(tmp_path / "ray.jsonl", overwrite=True)
    # blocks of 12 items: several shards, so duplicates are resolved across shards too
    run = score_ray(
        stub_ensemble,
        DEFAULT_BANDS,
        options,
        sink,
        shard_dir=tmp_path / "shards",
        items_per_shard=12,
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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray-address", "127.0.0.1:9"], "--ray-address 127.0.0.1:9: no Ray cluster answers"),
        (["--gpus-per-worker", "1"], "--gpus-per-worker 1.0 but the Ray cluster has 0 GPU(s)"),
        (["--model-workers", "0"], "--model-workers must be positive"),
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
    it: Ray restarts the actor and retries the block, which rewrites the same shard."""
    from deepsift.scoring.output import ParquetOutput
    from deepsift.scoring.ray_engine import KILL_ENV, score_ray

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
    jsonl = OutputFile(tmp_path / "r.jsonl", overwrite=True)
    parquet = ParquetOutput(tmp_path / "r.parquet")  # --format parquet of the same run
    run = score_ray(
        stub_ensemble,
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

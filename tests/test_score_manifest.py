"""--from-file manifests (CSV, JSONL, Parquet with a ``path`` column), read lazily."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepsift.core.errors import UserError
from deepsift.scoring.inputs import iter_items, read_manifest


def _images(tmp_path: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
        paths.append(str(p))
    return paths


def test_csv_jsonl_parquet_manifests_list_the_path_column(tmp_path: Path) -> None:
    paths = _images(tmp_path, 5)
    csv = tmp_path / "m.csv"
    csv.write_text("id,path\n" + "".join(f"{i},{p}\n" for i, p in enumerate(paths)))
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"path": p, "id": i}) + "\n" for i, p in enumerate(paths)))
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": paths, "id": list(range(5))}), parquet, row_group_size=2)
    for manifest in (csv, jsonl, parquet):
        assert list(read_manifest(str(manifest), batch_rows=2)) == paths
        items = list(iter_items([f"@{manifest}"]))
        assert [item.path for item in items] == paths
        assert all(item.error is None for item in items)


def test_manifest_missing_path_and_missing_column(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(f"path\n{tmp_path / 'gone.png'}\n")
    (item,) = iter_items([f"@{csv}"])
    assert item.error == "no such file or directory (listed in a list file)"
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.png\n")
    with pytest.raises(UserError, match=r"bad\.csv.*'path' column"):
        list(read_manifest(str(bad)))
    nopath = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"file": ["x.png"]}), nopath)
    with pytest.raises(UserError, match="no 'path' column"):
        list(read_manifest(str(nopath)))
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"file": "x.png"}\n')
    with pytest.raises(UserError, match="line 1 has no string 'path'"):
        list(read_manifest(str(jsonl)))


def test_manifest_is_streamed_not_loaded(tmp_path: Path) -> None:
    parquet = tmp_path / "big.parquet"
    pq.write_table(
        pa.table({"path": [f"/x/{i}.jpg" for i in range(20000)]}), parquet, row_group_size=1000
    )
    stream = read_manifest(str(parquet), batch_rows=100)
    assert next(stream) == "/x/0.jpg"  # a generator: the first row comes before the rest is read
    assert sum(1 for _ in stream) == 19999


def test_score_cli_scores_a_parquet_manifest_and_rejects_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    from deepsift.app.score_cli import main
    from tests.scoring_fixtures import TINY, noise

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(noise(i, 36, 36)).save(paths[-1])
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": paths}), manifest)
    quick = ["--workers", "0", "--quiet", "--no-provenance", "--no-pdq"]
    out = tmp_path / "out.jsonl"
    main(["--from-file", str(manifest), "--out", str(out), *TINY, *quick])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(paths)
    assert all(r.get("error") is None for r in records)
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.png\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--from-file", str(bad), "--out", str(tmp_path / "b.jsonl"), *TINY, *quick])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "'path' column" in err and "Traceback" not in err, err
    assert not (tmp_path / "b.jsonl").exists()


def test_100k_path_manifest_is_listed_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    n = 100_000
    manifest = tmp_path / "big.csv"
    with manifest.open("w") as handle:
        handle.write("path\n")
        for i in range(n):
            handle.write(f"{tmp_path}/missing/{i:06d}-{'x' * 60}.jpg\n")
    tracemalloc.start()
    try:
        count = sum(1 for item in iter_items([f"@{manifest}"]) if item.error)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    # Holding the 100,000 paths (~150 B each as str) alone would take ~15 MB of Python heap.
    assert peak < 4 * 2**20, f"peak Python heap {peak / 2**20:.1f} MiB while listing"


def test_manifest_uri_goes_through_pyarrow_filesystems(tmp_path: Path) -> None:
    paths = _images(tmp_path, 3)
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": paths}), parquet)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"path": p}) + "\n" for p in paths))
    csv = tmp_path / "m.csv"
    csv.write_text("path\n" + "\n".join(paths) + "\n")
    for manifest in (parquet, jsonl, csv):
        assert list(read_manifest(manifest.as_uri())) == paths
        assert [i.path for i in iter_items([f"@{manifest.as_uri()}"])] == paths

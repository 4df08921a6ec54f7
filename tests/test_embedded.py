"""The embedded benchmark v1 (``data.version=1``), on tiny builds (4 photos, a few crops, a few
generator steps). v2, the default, is tested in tests/test_embedded_v2.py."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets.embedded.build as build_module
from datasets.embedded import (
    FAMILIES,
    BuildSettings,
    EmbeddedBenchmark,
    benchmark_dir,
    build_embedded_benchmark,
)
from datasets.embedded.build import assign_splits
from datasets.embedded.generators import GeneratorAE
from datasets.embedded.photos import CATALOGUE
from deepsift.core.errors import UserError

TINY = {
    "photos": ["astronaut", "chelsea", "coffee", "rocket"],
    "crops_per_photo": 3,
    "stride": 32,
    "ae_steps": 2,
    "ae_batch": 4,
    "ae_patch": 16,
    "threads": 1,
}


def tiny(root: Path, **overrides) -> Path:
    return build_embedded_benchmark(root, progress=False, version=1, **{**TINY, **overrides})


def read_index(folder: Path) -> list[dict[str, str]]:
    with open(folder / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny(tmp_path_factory.mktemp("cache"))


def test_layout_and_manifest(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    rows = read_index(built)
    assert built.parent.name == "embedded" and built.name.startswith("v1-")
    assert list(rows[0]) == ["path", "label", "split", "source", "generator", "x", "y"]
    assert len(rows) == 4 * 3 * (1 + len(FAMILIES))
    for row in rows:
        generator, photo, _ = row["path"].split("/")[1:]
        assert (generator, photo) == (row["generator"], row["source"])
        assert int(row["label"]) == (row["generator"] != "real")
        with Image.open(built / row["path"]) as img:
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (64, 64)
    counts = Counter((r["split"], r["generator"]) for r in rows)
    assert manifest["counts"] == {
        s: {g: counts[(s, g)] for g in ("real", *FAMILIES)} for s in ("train", "val", "test")
    }
    assert manifest["seed"] == 0 and "scikit-image" in manifest["versions"]


def test_split_by_photo_and_pairing(built: Path) -> None:
    rows = read_index(built)
    split_of: dict[str, set[str]] = {}
    for row in rows:
        split_of.setdefault(row["source"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert {next(iter(s)) for s in split_of.values()} == {"train", "val", "test"}
    reals = {
        (r["split"], r["source"], Path(r["path"]).name) for r in rows if r["generator"] == "real"
    }
    for family in FAMILIES:
        fakes = {
            (r["split"], r["source"], Path(r["path"]).name)
            for r in rows
            if r["generator"] == family
        }
        assert fakes == reals


def test_splits_follow_fractions_and_keep_scenes_together() -> None:
    sizes = {p.name: 300 for p in CATALOGUE}
    scenes = {p.name: p.scene for p in CATALOGUE}
    for seed in range(10):
        splits = assign_splits(sizes, scenes, (0.6, 0.2, 0.2), seed)
        assert splits["motorcycle_left"] == splits["motorcycle_right"]
        share = Counter(splits.values())
        assert 6 <= share["train"] <= 8 and 2 <= share["val"] <= 3 and 2 <= share["test"] <= 3
    assert assign_splits(sizes, scenes, (0.6, 0.2, 0.2), 0) == assign_splits(
        sizes, scenes, (0.6, 0.2, 0.2), 0
    )


def test_determinism(built: Path, tmp_path: Path) -> None:
    def digest(folder: Path) -> str:
        return json.loads((folder / "manifest.json").read_text())["content_sha256"]

    again = tiny(tmp_path / "a")
    assert again.name == built.name
    assert digest(again) == digest(built)
    assert (again / "index.csv").read_bytes() == (built / "index.csv").read_bytes()
    other = tiny(tmp_path / "b", seed=1)
    assert other.name != built.name
    assert digest(other) != digest(built)


def test_cache_is_reused(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mtime = (built / "manifest.json").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a cached benchmark")

    monkeypatch.setattr(build_module, "_build_into", fail)
    assert tiny(built.parents[1]) == built
    assert (built / "manifest.json").stat().st_mtime_ns == mtime


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = benchmark_dir(BuildSettings(**{**TINY, "photos": tuple(TINY["photos"])}), tmp_path)
    threads = torch.get_num_threads()

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during the build")

    monkeypatch.setattr(build_module, "synthesise", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        tiny(tmp_path)
    assert torch.get_num_threads() == threads
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [f"{target.name}.lock"]

    # a build killed outright leaves its temporary folder; the next build removes it
    killed = target.parent / f".{target.name}.tmp-killed"
    (killed / "images").mkdir(parents=True)
    monkeypatch.undo()
    assert tiny(tmp_path) == target
    assert (target / "manifest.json").is_file() and not killed.exists()


def test_source_is_lazy_and_uses_env_cache(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPSIFT_CACHE_DIR", str(built.parents[1]))
    data = EmbeddedBenchmark(progress=False, version=1, **TINY)
    assert data.name == "embedded" and data._path is None
    train = data.records("train")
    assert data.path == built
    assert {r.generator for r in train} == {"real", "tconv"}
    assert {r.generator for r in data.records("val")} == {"real", "tconv"}
    test = data.records("test")
    assert {r.generator for r in test} == {"real", *FAMILIES}
    for record in train + test:
        assert Path(record.path).is_absolute() and Path(record.path).is_file()
        assert record.label == (record.generator != "real")
        assert record.source in TINY["photos"]
    assert not {r.source for r in train} & {r.source for r in test}
    real, fake = Counter(r.label for r in train).values()
    assert real == fake

    monkeypatch.setenv("DEEPSIFT_CACHE_DIR", str(tmp_path))
    EmbeddedBenchmark(progress=False, version=1, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_generator_choice(built: Path) -> None:
    data = EmbeddedBenchmark(
        str(built.parents[1]),
        progress=False,
        train_generators=["nearest", "bilinear"],
        test_generators=["pixelshuffle"],
        version=1,
        **TINY,
    )
    assert {r.generator for r in data.records("train")} == {"real", "nearest", "bilinear"}
    assert {r.generator for r in data.records("test")} == {"real", "pixelshuffle"}


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(
        UserError,
        match=r"valid generators of data\.version=1: tconv, nearest, bilinear, pixelshuffle$",
    ):
        EmbeddedBenchmark(str(tmp_path), train_generators=["stylegan"], version=1)
    with pytest.raises(UserError, match="valid generators"):
        EmbeddedBenchmark(str(tmp_path), test_generators=["tconv", "dalle"], version=1)
    with pytest.raises(UserError, match=r"valid generators of data\.version=1"):
        EmbeddedBenchmark(str(tmp_path), train_generators=["diffusion"], version=1)
    with pytest.raises(UserError, match="split"):
        EmbeddedBenchmark(str(tmp_path)).records("holdout")
    with pytest.raises(UserError, match="unknown embedded photo"):
        build_embedded_benchmark(tmp_path, photos=["lena"])
    with pytest.raises(UserError, match="at least 3 scenes"):
        tiny(tmp_path, photos=["motorcycle_left", "motorcycle_right", "rocket"])
    assert not any(
        p.is_dir() and not p.name.startswith(".") for p in (tmp_path / "embedded").iterdir()
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_generators_keep_the_shape(family: str) -> None:
    x = torch.rand(2, 3, 64, 64)
    assert GeneratorAE(family, width=8)(x).shape == x.shape


def test_crops_are_real_pixels(built: Path) -> None:
    from datasets.embedded.photos import load_photo

    rows = [r for r in read_index(built) if r["generator"] == "real"][:3]
    for row in rows:
        photo = next(p for p in CATALOGUE if p.name == row["source"])
        image = load_photo(photo)
        x, y = int(row["x"]), int(row["y"])
        crop = np.asarray(Image.open(built / row["path"]))
        assert np.array_equal(crop, image[y : y + 64, x : x + 64])


# v1 as built before the v2 work (#17 part 2): the cache key, the split/crop index and a real
# crop's decoded pixels of the tiny build. These depend only on the settings and the photos
# (pixels, not PNG bytes: another zlib may compress the same pixels differently), so any
# change means v1 no longer rebuilds as it did. Generator outputs are
# left out: their float rounding may differ across CPUs (see datasets/embedded/build.py).
V1_TINY_KEY = "v1-7772e52205"
V1_TINY_INDEX_SHA256 = "f5f4eea9995db080735cdc91eed33043e9d50fcc41fe46bc0d3b92d9630a80c9"
V1_TINY_REAL_CROP = (
    "images/real/astronaut/0000.png",
    "bfb0e4d519c5435cb15d76f981739bb57a99bebd350f8ef1f036bb234c85a3f4",
)


def test_v1_is_pinned(built: Path) -> None:
    assert built.name == V1_TINY_KEY
    assert hashlib.sha256((built / "index.csv").read_bytes()).hexdigest() == V1_TINY_INDEX_SHA256
    path, sha = V1_TINY_REAL_CROP
    pixels = np.asarray(Image.open(built / path).convert("RGB"))
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == sha, pixels.shape

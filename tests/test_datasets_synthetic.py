"""Synthetic-image benchmarks and the manifest source, on generated fixture trees."""

from __future__ import annotations

import functools
import io
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.manifest import Manifest
from datasets.synthetic import (
    AIGCDETECT_TEST,
    FORENSYNTHS_TEST,
    GENIMAGE_GENERATORS,
    LSUN_CLASSES,
    AIGCDetectBenchmark,
    DiffusionForensics,
    ForenSynths,
    GenImage,
    Synthbuster,
    UnivFDDiffusion,
)
from deepsift.core.errors import UserError
from deepsift.core.images import load_rgb
from deepsift.core.records import FAKE, REAL
from deepsift.core.reencode import parse_reencode, reencode


@functools.lru_cache(maxsize=4)
def encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def images(folder: Path, n: int, suffix: str = ".png", names: Iterable[str] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if suffix in (".jpg", ".jpeg", ".JPEG") else "PNG"
    for name in names or (f"{i:03d}" for i in range(n)):
        (folder / f"{name}{suffix}").write_bytes(encoded(fmt))


# ---------------------------------------------------------------------------------------
# reencode
# ---------------------------------------------------------------------------------------


def test_reencode() -> None:
    assert parse_reencode(None) is None and parse_reencode("none") is None
    assert parse_reencode("png") == ("png", 0)
    assert parse_reencode("jpeg95") == ("jpeg", 95) == parse_reencode("JPEG")
    assert parse_reencode("jpg_75") == ("jpeg", 75)
    for bad in ("jpeg0", "jpeg101", "webp", "jpegx"):
        with pytest.raises(UserError, match="not one of null, png, jpeg"):
            parse_reencode(bad)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert reencode(image, None) is image
    assert np.array_equal(np.asarray(reencode(image, "png")), np.asarray(image))
    jpeg = reencode(image, "jpeg95")
    assert jpeg.size == image.size and jpeg.mode == "RGB"
    assert not np.array_equal(np.asarray(jpeg), np.asarray(image))
    with pytest.raises(UserError, match="reencode='tiff'"):
        ForenSynths("x", reencode="tiff")


# ---------------------------------------------------------------------------------------
# ForenSynths and AIGCDetectBenchmark
# ---------------------------------------------------------------------------------------


def make_forensynths(root: Path) -> Path:
    for split, classes in (("train", ("car", "cat")), ("val", ("car",))):
        for c in classes:
            images(root / split / c / "0_real", 2)
            images(root / split / c / "1_fake", 2)
    for c in ("car", "cat"):
        images(root / "test" / "progan" / c / "0_real", 1)
        images(root / "test" / "progan" / c / "1_fake", 1)
    images(root / "test" / "biggan" / "0_real", 3)
    images(root / "test" / "biggan" / "1_fake", 2)
    return root


def test_forensynths(tmp_path: Path) -> None:
    root = make_forensynths(tmp_path)
    source = ForenSynths(str(root), reencode="jpeg95")
    train = source.records("train")
    assert Counter((r.extra["class"], r.label) for r in train) == {
        ("car", REAL): 2,
        ("car", FAKE): 2,
        ("cat", REAL): 2,
        ("cat", FAKE): 2,
    }
    assert {r.generator for r in train} == {"real", "progan"}
    assert {r.extra["reencode"] for r in train} == {"jpeg95"}
    assert len(source.missing("train")) == len(LSUN_CLASSES) - 2
    test = source.records("test")
    assert Counter((r.generator, r.label) for r in test) == {
        ("real", REAL): 5,
        ("progan", FAKE): 2,
        ("biggan", FAKE): 2,
    }
    assert {r.extra["group"] for r in test if r.label == REAL} == {"progan", "biggan"}
    assert {Path(p).name for p in source.missing("test")} == set(FORENSYNTHS_TEST) - {
        "progan",
        "biggan",
    }
    only = ForenSynths(str(root), train_classes=["cat"], test_generators=["biggan"])
    assert len(only.records("test")) == 5 and only.missing("test") == []
    with pytest.raises(UserError, match=r"data\.train_classes: 1 not found under .*val: cat"):
        only.records("val")
    with pytest.raises(UserError, match=r"data\.test_generators: 1 not found .*: stylegan"):
        ForenSynths(str(root), test_generators=["stylegan"]).records("test")
    (root / "test" / "biggan" / "1_fake" / "000.png").unlink()
    (root / "test" / "biggan" / "1_fake" / "001.png").unlink()
    with pytest.raises(UserError, match=r"1 of 2 class folders under .*biggan hold no images"):
        ForenSynths(str(root)).records("test")
    with pytest.raises(UserError, match=r"split folder .*test does not exist"):
        ForenSynths(str(tmp_path / "train")).records("test")


def test_aigcdetect(tmp_path: Path) -> None:
    images(tmp_path / "test" / "ADM" / "0_real", 2)
    images(tmp_path / "test" / "ADM" / "1_fake", 2)
    images(tmp_path / "test" / "stylegan" / "bedroom" / "0_real", 1)
    images(tmp_path / "test" / "stylegan" / "bedroom" / "1_fake", 1)
    source = AIGCDetectBenchmark(str(tmp_path))
    test = source.records("test")
    assert Counter((r.generator, r.label) for r in test) == {
        ("real", REAL): 3,
        ("ADM", FAKE): 2,
        ("stylegan", FAKE): 1,
    }
    assert len(source.missing("test")) == len(AIGCDETECT_TEST) - 2
    with pytest.raises(UserError, match=r"split folder .*train does not exist"):
        source.records("train")


# ---------------------------------------------------------------------------------------
# GenImage
# ---------------------------------------------------------------------------------------


def make_genimage(root: Path) -> Path:
    for gen, subset in (
        ("stable_diffusion_v_1_4", "imagenet_ai_0419_sdv4"),
        ("ADM", "imagenet_ai_0508_adm"),
    ):
        for folder, n in (("train", 10), ("val", 2)):
            base = root / gen / subset / folder
            images(base / "ai", n, ".png")
            images(base / "nature", n, ".JPEG")
    return root


def test_genimage(tmp_path: Path) -> None:
    root = make_genimage(tmp_path)
    source = GenImage(str(root), val_fraction=0.3, reencode="jpeg95")
    train, val, test = (source.records(s) for s in ("train", "val", "test"))
    assert len(train) + len(val) == 20 and train and val
    assert not {r.path for r in train} & {r.path for r in val}
    assert {r.generator for r in train + val} == {"real", "stable_diffusion_v_1_4"}
    assert all("/train/" in r.path for r in train + val)
    assert Counter((r.generator, r.label) for r in test) == {
        ("real", REAL): 4,
        ("stable_diffusion_v_1_4", FAKE): 2,
        ("ADM", FAKE): 2,
    }
    assert all("/val/" in r.path for r in test)
    assert {r.extra["subset"] for r in test} == {"imagenet_ai_0419_sdv4", "imagenet_ai_0508_adm"}
    assert len(source.missing("test")) == len(GENIMAGE_GENERATORS) - 2
    # the format pitfall: reals JPEG, fakes PNG; reencode makes both JPEG at load time
    fake = next(r for r in test if r.label == FAKE)
    assert fake.path.endswith(".png") and fake.extra["reencode"] == "jpeg95"
    loaded = reencode(load_rgb(fake.path), fake.extra["reencode"])
    assert loaded.size == (8, 8)
    again = GenImage(str(root), val_fraction=0.3)
    assert [r.path for r in again.records("val")] == [r.path for r in val]
    with pytest.raises(UserError, match=r"data\.train_generators: 1 not found .*: Midjourney"):
        GenImage(str(root), train_generators=["Midjourney"]).records("train")
    flat = tmp_path / "flat"
    images(flat / "glide" / "val" / "ai", 1)
    images(flat / "glide" / "val" / "nature", 1)
    assert len(GenImage(str(flat), test_generators=["glide"]).records("test")) == 2


# ---------------------------------------------------------------------------------------
# UniversalFakeDetect diffusion sets, DiffusionForensics, Synthbuster
# ---------------------------------------------------------------------------------------


def test_univfd_diffusion(tmp_path: Path) -> None:
    images(tmp_path / "laion" / "0_real", 3)
    images(tmp_path / "imagenet" / "0_real", 2)
    images(tmp_path / "guided" / "1_fake", 2)
    images(tmp_path / "ldm_200" / "1_fake", 2)
    images(tmp_path / "glide_100_27" / "1_fake", 1)
    source = UnivFDDiffusion(str(tmp_path))
    test = source.records("test")
    assert Counter((r.extra["group"], r.label) for r in test) == {
        ("laion", REAL): 3,
        ("imagenet", REAL): 2,
        ("guided", FAKE): 2,
        ("ldm_200", FAKE): 2,
        ("glide_100_27", FAKE): 1,
    }
    assert len(source.missing("test")) == 5
    guided = UnivFDDiffusion(str(tmp_path), generators=["guided"]).records("test")
    assert Counter(r.extra["group"] for r in guided) == {"imagenet": 2, "guided": 2}
    with pytest.raises(UserError, match=r"no 'train' split \(a test-only benchmark"):
        source.records("train")
    with pytest.raises(UserError, match="unknown; UnivFD diffusion sets"):
        UnivFDDiffusion(str(tmp_path), generators=["dalle3"])


def test_diffusionforensics(tmp_path: Path) -> None:
    base = tmp_path / "images"
    for split in ("train", "val"):
        images(base / split / "lsun_bedroom" / "real", 2, ".jpg")
        images(base / split / "lsun_bedroom" / "adm", 2)
        images(base / split / "lsun_bedroom" / "ddpm", 2)
    images(base / "test" / "lsun_bedroom" / "real", 2, ".jpg")
    for g in ("adm", "ddpm", "iddpm"):
        images(base / "test" / "lsun_bedroom" / g, 1)
    images(base / "test" / "imagenet" / "real", 2, ".jpg")
    images(base / "test" / "imagenet" / "sdv1", 1)
    source = DiffusionForensics(str(tmp_path))
    train = source.records("train")
    assert Counter((r.generator, r.label) for r in train) == {("real", REAL): 2, ("adm", FAKE): 2}
    test = source.records("test")
    assert Counter((r.extra["domain"], r.generator) for r in test) == {
        ("lsun_bedroom", "real"): 2,
        ("lsun_bedroom", "adm"): 1,
        ("lsun_bedroom", "ddpm"): 1,
        ("lsun_bedroom", "iddpm"): 1,
        ("imagenet", "real"): 2,
        ("imagenet", "sdv1"): 1,
    }
    only = DiffusionForensics(str(tmp_path), domains=["imagenet"], test_generators=["sdv1"])
    assert len(only.records("test")) == 3
    with pytest.raises(UserError, match=r"data\.train_generators: 1 not in any domain .*: pndm"):
        DiffusionForensics(str(tmp_path), train_generators=["pndm"]).records("train")
    with pytest.raises(UserError, match=r"data\.variant='raw'"):
        DiffusionForensics(str(tmp_path), variant="raw")


def test_synthbuster(tmp_path: Path) -> None:
    ids = ["r0a1b2c3d", "r1e2f3a4b", "r2c3d4e5f"]
    for g in ("dalle2", "glide"):
        images(tmp_path / "synthbuster" / g, 0, ".png", ids)
    images(tmp_path / "raise", 0, ".tif", ids[:2])
    source = Synthbuster(str(tmp_path / "synthbuster"), real_root=str(tmp_path / "raise"))
    test = source.records("test")
    assert Counter((r.generator, r.label) for r in test) == {
        ("real", REAL): 2,
        ("dalle2", FAKE): 3,
        ("glide", FAKE): 3,
    }
    missing = source.missing("test")
    assert str(tmp_path / "raise" / "r2c3d4e5f.*") in missing
    assert len(missing) == 7 + 1  # seven generators absent, one RAISE image absent
    with pytest.raises(UserError, match="Synthbuster ships no reals"):
        Synthbuster(str(tmp_path / "synthbuster")).records("test")


# ---------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------


def test_manifest_csv_and_jsonl(tmp_path: Path) -> None:
    images(tmp_path / "imgs", 4)
    absolute = tmp_path / "imgs" / "003.png"
    (tmp_path / "manifest.csv").write_text(
        "path,label,split,generator,video,quality\n"
        "imgs/000.png,real,train,,v1,high\n"
        "imgs/001.png,1,train,sdxl,v1,\n"
        "imgs/002.png,FAKE,,,,\n"
        f"{absolute},0,valid,,,\n"
        "imgs/404.png,1,test,,,\n"
    )
    source = Manifest(str(tmp_path))
    train = source.records("train")
    assert [(Path(r.path).name, r.label, r.generator, r.video) for r in train] == [
        ("000.png", REAL, "real", "v1"),
        ("001.png", FAKE, "sdxl", "v1"),
    ]
    assert train[0].extra == {"quality": "high"}
    assert [r.path for r in source.records("val")] == [str(absolute)]
    test = source.records("test")  # no split -> default_split=test; 404.png is missing
    assert [Path(r.path).name for r in test] == ["002.png"] and test[0].generator is None
    assert source.missing("test") == [str(tmp_path / "imgs" / "404.png")]

    (tmp_path / "m.jsonl").write_text(
        json.dumps({"path": "imgs/000.png", "label": 0, "split": "test"})
        + "\n\n"
        + json.dumps({"path": "imgs/001.png", "label": "fake", "split": "test", "generator": "g"})
        + "\n"
    )
    jsonl = Manifest(str(tmp_path / "m.jsonl"))
    assert [(r.label, r.generator) for r in jsonl.records("test")] == [(REAL, "real"), (FAKE, "g")]


def test_manifest_bad_rows(tmp_path: Path) -> None:
    images(tmp_path / "imgs", 2)
    (tmp_path / "manifest.csv").write_text(
        "path,label,split\nimgs/000.png,0,train\nimgs/001.png,maybe,train\n,1,train\nimgs/001.png,1,holdout\n"
    )
    with pytest.raises(
        UserError,
        match=r"3 bad rows \(line 3: label 'maybe'.*line 4: no path; line 5: split 'holdout'",
    ):
        Manifest(str(tmp_path)).records("train")
    skip = Manifest(str(tmp_path / "manifest.csv"), on_bad_rows="skip")
    assert len(skip.records("train")) == 1 and [n for n, _ in skip.bad_rows] == [3, 4, 5]
    (tmp_path / "bad.jsonl").write_text('{"path": "imgs/000.png", "label": 0}\n[1, 2]\n{oops\n')
    with pytest.raises(
        UserError, match=r"2 bad rows \(line 2: not a JSON object; line 3: not JSON"
    ):
        Manifest(str(tmp_path / "bad.jsonl")).records("test")
    (tmp_path / "nolabel.csv").write_text("file,label\nimgs/000.png,0\n")
    with pytest.raises(UserError, match="header must name at least path and label"):
        Manifest(str(tmp_path / "nolabel.csv")).records("test")
    with pytest.raises(UserError, match=r"no manifest at data\.root"):
        Manifest(str(tmp_path / "imgs")).records("test")

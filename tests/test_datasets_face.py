"""Video benchmarks read as face-crop caches: FF++, DFD, Celeb-DF, DFDC and DFDC preview.

Fixture trees are generated here: empty ``.mp4`` placeholders for enumeration and tiny
PNG crops under ``<root>/deepsift_crops/<video path without .mp4>/`` for records.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from PIL import Image

from datasets.celebdf import CelebDF
from datasets.crop_cache import spread, strip_suffix
from datasets.dfdc import DFDC, DFDCPreview
from datasets.faceforensics import CLASSIC_METHODS, DeepFakeDetection, FaceForensics
from datasets.splits import bucket
from deepsift.core.errors import UserError
from deepsift.core.records import FAKE, REAL

SHARED_SPLITS = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faceforensics" / "splits"
)


@functools.lru_cache(maxsize=1)
def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (120, 60, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def touch(root: Path, rels: Iterable[str]) -> None:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def add_crops(root: Path, rels: Iterable[str], frames: int = 2) -> None:
    """Tiny PNG crops at ``<root>/deepsift_crops/<rel without suffix>/<frame>.png``."""
    for rel in rels:
        folder = root / "deepsift_crops" / strip_suffix(rel)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            (folder / f"{i:04d}.png").write_bytes(png_bytes())


def ffpp_rels(
    pairs: Sequence[Sequence[str]], methods: Sequence[str] = CLASSIC_METHODS, c: str = "c23"
) -> list[str]:
    ids = sorted({x for p in pairs for x in p})
    rels = [f"original_sequences/youtube/{c}/videos/{i}.mp4" for i in ids]
    for m in methods:
        for a, b in pairs:
            rels += [
                f"manipulated_sequences/{m}/{c}/videos/{a}_{b}.mp4",
                f"manipulated_sequences/{m}/{c}/videos/{b}_{a}.mp4",
            ]
    return rels


SMALL_PAIRS = {
    "train": [["000", "001"], ["002", "003"]],
    "val": [["004", "005"]],
    "test": [["006", "007"]],
}


def make_ffpp_tree(
    root: Path,
    pairs: dict[str, list[list[str]]] | None = None,
    frames: int = 2,
    crops: bool = True,
) -> Path:
    """A small FF++ tree: split files, empty videos, and (optionally) crops for every video."""
    pairs = pairs or SMALL_PAIRS
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, p in pairs.items():
        (root / "splits" / f"{split}.json").write_text(json.dumps(p))
        touch(root, ffpp_rels(p))
        if crops:
            add_crops(root, ffpp_rels(p), frames)
    return root


# ---------------------------------------------------------------------------------------
# FaceForensics++
# ---------------------------------------------------------------------------------------


@pytest.mark.shared
def test_ffpp_official_splits(tmp_path: Path) -> None:
    if not (SHARED_SPLITS / "train.json").is_file():
        pytest.skip(f"official FF++ split files not found at {SHARED_SPLITS}")
    official = {
        s: json.loads((SHARED_SPLITS / f"{s}.json").read_text()) for s in ("train", "val", "test")
    }
    for pairs in official.values():
        touch(tmp_path, ffpp_rels(pairs))
    source = FaceForensics(str(tmp_path), splits_dir=str(SHARED_SPLITS))
    seen_ids: dict[str, set[str]] = {}
    seen_fakes: dict[str, set[str]] = {}
    for split, n in (("train", 720), ("val", 140), ("test", 140)):
        videos = source.videos(split)
        counts = Counter(v.method for v in videos)
        assert counts == {"real": n, **dict.fromkeys(CLASSIC_METHODS, n)}, split
        ids = {x for pair in official[split] for x in pair}
        assert {v.video_id.split("/")[1] for v in videos if v.label == REAL} == ids
        expected_fakes = {f"{a}_{b}" for a, b in official[split]} | {
            f"{b}_{a}" for a, b in official[split]
        }
        for m in CLASSIC_METHODS:
            assert {v.video_id.split("/")[1] for v in videos if v.method == m} == expected_fakes
        assert all(v.label == FAKE for v in videos if v.method != "real")
        assert source.missing_videos(split) == []
        seen_ids[split], seen_fakes[split] = ids, expected_fakes
    assert not (seen_ids["train"] & seen_ids["val"] or seen_ids["train"] & seen_ids["test"])
    assert not seen_ids["val"] & seen_ids["test"]
    assert len(seen_ids["train"] | seen_ids["val"] | seen_ids["test"]) == 1000
    assert not (seen_fakes["train"] & seen_fakes["test"] or seen_fakes["val"] & seen_fakes["test"])

    # records() of the test split from a crop cache with one video deliberately absent
    test_rels = ffpp_rels(official["test"])
    add_crops(tmp_path, test_rels, frames=1)
    gone = test_rels[-1]
    for f in (tmp_path / "deepsift_crops" / strip_suffix(gone)).iterdir():
        f.unlink()
    records = source.records("test")
    assert len(records) == 5 * 140 - 1
    assert source.missing("test") == [gone]
    assert Counter(r.label for r in records) == {REAL: 140, FAKE: 4 * 140 - 1}


def test_ffpp_records_from_crop_cache(tmp_path: Path) -> None:
    root = make_ffpp_tree(tmp_path, frames=3)
    mask = root / "deepsift_crops/manipulated_sequences/Deepfakes/masks/videos/006_007"
    mask.mkdir(parents=True)
    (mask / "0001.png").write_bytes(png_bytes())
    source = FaceForensics(str(root))
    records = source.records("test")
    # 2 reals + 4 methods x 2 fakes, 3 frames each
    assert len(records) == 10 * 3
    real = [r for r in records if r.label == REAL]
    assert {r.video for r in real} == {"youtube/006", "youtube/007"}
    assert {r.generator for r in real} == {"real"}
    assert {r.extra["method_label"] for r in real} == {0}
    fake = [r for r in records if r.video == "Deepfakes/006_007"]
    assert len(fake) == 3 and {r.label for r in fake} == {FAKE}
    assert fake[0].generator == "Deepfakes" and fake[0].extra["method_label"] == 1
    assert fake[0].source == "youtube/006"  # a fake shares its source with its target real
    assert fake[0].path.endswith("manipulated_sequences/Deepfakes/c23/videos/006_007/0000.png")
    assert [("mask" in r.extra) for r in fake] == [False, True, False]
    assert fake[1].extra["mask"].endswith("masks/videos/006_007/0001.png")
    assert source.method_labels == {
        "real": 0,
        "Deepfakes": 1,
        "Face2Face": 2,
        "FaceSwap": 3,
        "NeuralTextures": 4,
    }
    capped = FaceForensics(str(root), max_frames=2, methods=["FaceSwap"]).records("train")
    assert len(capped) == (4 + 4) * 2
    assert {r.extra["frame"] for r in capped} == {"0000", "0002"}
    assert spread(list(range(10)), 3) == [0, 4, 9] and spread([1, 2], 5) == [1, 2]


def test_ffpp_missing_crops_are_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_ffpp_tree(tmp_path)
    gone = "manipulated_sequences/Face2Face/c23/videos/000_001.mp4"
    for f in (root / "deepsift_crops" / strip_suffix(gone)).iterdir():
        f.unlink()
    source = FaceForensics(str(root))
    with caplog.at_level(logging.WARNING):
        first = source.records("train")
        second = source.records("train")
    assert len(first) == len(second) == (4 + 4 * 4 - 1) * 2
    assert source.missing("train") == [gone]
    warnings = [r for r in caplog.records if "have no crops" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 20 videos" in warnings[0].getMessage()


def test_ffpp_errors(tmp_path: Path) -> None:
    root = make_ffpp_tree(tmp_path / "ff", crops=False)
    with pytest.raises(UserError, match=r"python -m datasets.preprocess data=ffpp data.root="):
        FaceForensics(str(root)).records("train")
    with pytest.raises(UserError, match=r"split file .*nowhere.*train.json"):
        FaceForensics(str(root), splits_dir=str(tmp_path / "nowhere")).videos("train")
    with pytest.raises(UserError, match="raw \\(alias c0\\), c23 or c40"):
        FaceForensics(str(root), compression="c99")
    with pytest.raises(UserError, match="data=dfd"):
        FaceForensics(str(root), methods=["DeepFakeDetection"])
    with pytest.raises(UserError, match="unknown or empty"):
        FaceForensics(str(root), methods=["Deepfake"])
    with pytest.raises(UserError, match="is not a folder"):
        FaceForensics(str(tmp_path / "absent")).videos("train")
    with pytest.raises(UserError, match="unknown split"):
        FaceForensics(str(root)).videos("training")
    (root / "splits" / "val.json").write_text('[["004"]]')
    with pytest.raises(UserError, match="string pairs"):
        FaceForensics(str(root)).videos("val")
    # every video missing from an existing cache: one error, not an empty split
    (root / "deepsift_crops").mkdir()
    with pytest.raises(UserError, match="none of the 20 videos of ffpp/train has crops"):
        FaceForensics(str(root)).records("train")
    raw = FaceForensics(str(root), compression="c0", methods=["FaceShifter"]).videos("test")
    assert raw[0].rel == "original_sequences/youtube/raw/videos/006.mp4"
    assert raw[-1].rel == "manipulated_sequences/FaceShifter/raw/videos/007_006.mp4"


# ---------------------------------------------------------------------------------------
# DeepFakeDetection
# ---------------------------------------------------------------------------------------

DFD_REALS = ["01__kitchen", "02__hallway", "19__park", "23__desk", "24__street"]
DFD_FAKES = [
    "01_02__kitchen__AAAA1111",
    "19_20__park__BBBB2222",
    "23_24__desk__CCCC3333",
    "01_23__kitchen__DDDD4444",
]


def make_dfd_tree(root: Path) -> Path:
    reals = [f"original_sequences/actors/c23/videos/{n}.mp4" for n in DFD_REALS]
    fakes = [f"manipulated_sequences/DeepFakeDetection/c23/videos/{n}.mp4" for n in DFD_FAKES]
    touch(root, reals + fakes)
    add_crops(root, reals + fakes, frames=1)
    return root


def test_dfd_protocols(tmp_path: Path) -> None:
    root = make_dfd_tree(tmp_path)
    test_only = DeepFakeDetection(str(root))
    videos = test_only.videos("test")
    assert Counter(v.label for v in videos) == {REAL: 5, FAKE: 4}
    with pytest.raises(UserError, match=r"no 'train' split.*protocol=actors"):
        test_only.records("train")
    assert len(test_only.records("test")) == 9

    by_actor = DeepFakeDetection(str(root), protocol="actors")
    names = {
        s: sorted(v.video_id.split("/")[1] for v in by_actor.videos(s))
        for s in ("train", "val", "test")
    }
    assert names["train"] == ["01_02__kitchen__AAAA1111", "01__kitchen", "02__hallway"]
    assert names["val"] == ["19_20__park__BBBB2222", "19__park"]
    assert names["test"] == ["23_24__desk__CCCC3333", "23__desk", "24__street"]
    assert by_actor.dropped["train"] == 1 and by_actor.dropped["test"] == 1  # 01_23 crosses splits
    fake = next(v for v in by_actor.videos("train") if v.label == FAKE)
    assert fake.source_id == "actors/01__kitchen" and fake.method == "DeepFakeDetection"
    with pytest.raises(UserError, match=r"both data\.val_actors and data\.test_actors"):
        DeepFakeDetection(str(root), protocol="actors", val_actors=[23])
    # videos deleted after preprocessing: the crop cache stands for the folder listing
    shutil.rmtree(root / "original_sequences")
    assert len(DeepFakeDetection(str(root)).records("test")) == 9
    shutil.rmtree(root / "deepsift_crops" / "original_sequences")
    with pytest.raises(UserError, match=r"video folder .*actors/c23/videos does not exist"):
        DeepFakeDetection(str(root)).videos("test")


# ---------------------------------------------------------------------------------------
# Celeb-DF
# ---------------------------------------------------------------------------------------


def make_celebdf_tree(root: Path) -> tuple[Path, dict[str, int]]:
    reals = [f"Celeb-real/id{i}_{n:04d}.mp4" for i in range(10) for n in range(2)]
    fakes = [
        f"Celeb-synthesis/id{i}_id{(i + 1) % 10}_{n:04d}.mp4" for i in range(10) for n in range(2)
    ]
    youtube = [f"YouTube-real/{n:05d}.mp4" for n in range(6)]
    touch(root, reals + fakes + youtube)
    tests = {
        "Celeb-real/id0_0001.mp4": REAL,
        "Celeb-synthesis/id3_id4_0000.mp4": FAKE,
        "YouTube-real/00005.mp4": REAL,
        "Celeb-synthesis/id7_id8_0001.mp4": FAKE,
    }
    lines = [f"{1 if label == REAL else 0} {rel}" for rel, label in tests.items()]
    (root / "List_of_testing_videos.txt").write_text("\n".join(lines) + "\n")
    return root, tests


def test_celebdf_splits(tmp_path: Path) -> None:
    root, tests = make_celebdf_tree(tmp_path)
    source = CelebDF(str(root), version=2, val_fraction=0.5)
    assert source.name == "celebdf_v2"
    test = source.videos("test")
    assert {v.rel: v.label for v in test} == tests  # "1" in the list means real
    train, val = source.videos("train"), source.videos("val")
    everything = {p.relative_to(root).as_posix() for p in root.rglob("*.mp4")}
    assert {v.rel for v in train} | {v.rel for v in val} == everything - set(tests)
    assert not {v.rel for v in train} & {v.rel for v in val}
    assert train and val
    # val is by identity of the source footage: a fake sits with its target's reals
    val_ids = {source.identity(v.rel) for v in val}
    assert not val_ids & {source.identity(v.rel) for v in train}
    assert all((bucket(i) < 0.5) for i in val_ids)
    fake = next(v for v in train + val if v.rel == "Celeb-synthesis/id2_id3_0001.mp4")
    assert fake.source_id == "Celeb-real/id2_0001" and fake.method == "Celeb-synthesis"
    assert source.identity(fake.rel) == "id2"
    assert CelebDF(str(root), val_fraction=0).videos("val") == []
    assert [v.rel for v in CelebDF(str(root), val_fraction=0.5).videos("val")] == [
        v.rel for v in val
    ]
    assert CelebDF(str(root), version=1).name == "celebdf_v1"
    # a test video named by the list but absent from the folder
    (root / "YouTube-real" / "00005.mp4").unlink()
    assert CelebDF(str(root)).missing_videos("test") == ["YouTube-real/00005.mp4"]


def test_celebdf_bad_list(tmp_path: Path) -> None:
    root, _ = make_celebdf_tree(tmp_path)
    (root / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id0_0001.mp4\nreal Celeb-real/id0_0000.mp4\n1 Celeb-synthesis/id3_id4_0000.mp4\n"
    )
    with pytest.raises(
        UserError, match=r"2 bad lines \(line 2: .*line 3: label 1 \(1 = real\) contradicts"
    ):
        CelebDF(str(root)).videos("test")
    with pytest.raises(UserError, match=r"test list .*nope\.txt not found"):
        CelebDF(str(tmp_path), test_list=str(tmp_path / "nope.txt")).videos("train")


# ---------------------------------------------------------------------------------------
# DFDC and DFDC preview
# ---------------------------------------------------------------------------------------


def make_dfdc_tree(root: Path) -> Path:
    for k in (0, 1, 45):
        part = root / f"dfdc_train_part_{k}"
        meta = {
            f"real{k}.mp4": {"label": "REAL", "split": "train"},
            f"fake{k}a.mp4": {"label": "FAKE", "split": "train", "original": f"real{k}.mp4"},
            f"fake{k}b.mp4": {"label": "FAKE", "split": "train", "original": f"real{k}.mp4"},
        }
        part.mkdir(parents=True)
        (part / "metadata.json").write_text(json.dumps(meta))
        touch(part, meta)
    test = root / "test"
    test.mkdir()
    with (test / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label"])
        writer.writerows([["t1.mp4", 1], ["t2.mp4", 0], ["t3.mp4", 1]])
    touch(test, ["t1.mp4", "t2.mp4"])  # t3.mp4 is missing
    return root


def test_dfdc_splits(tmp_path: Path) -> None:
    root = make_dfdc_tree(tmp_path)
    source = DFDC(str(root), val_parts=[45])
    train, val, test = (source.videos(s) for s in ("train", "val", "test"))
    assert Counter((v.rel.split("/")[0], v.label) for v in train) == {
        ("dfdc_train_part_0", REAL): 1,
        ("dfdc_train_part_0", FAKE): 2,
        ("dfdc_train_part_1", REAL): 1,
        ("dfdc_train_part_1", FAKE): 2,
    }
    assert {v.rel for v in val} == {
        f"dfdc_train_part_45/{n}" for n in ("real45.mp4", "fake45a.mp4", "fake45b.mp4")
    }
    fake = next(v for v in val if v.rel.endswith("fake45a.mp4"))
    assert fake.source_id == "dfdc_train_part_45/real45" and fake.method == "fake"
    assert {v.rel: v.label for v in test} == {
        "test/t1.mp4": FAKE,
        "test/t2.mp4": REAL,
        "test/t3.mp4": FAKE,
    }
    assert source.missing_videos("test") == ["test/t3.mp4"]
    add_crops(root, [v.rel for v in test if v.rel != "test/t3.mp4"], frames=2)
    assert len(source.records("test")) == 4 and source.missing("test") == ["test/t3.mp4"]
    with pytest.raises(UserError, match=r"wants 1 parts .*dfdc_train_part_7"):
        DFDC(str(root), train_parts=[7], val_parts=[45]).videos("train")
    (root / "test" / "labels.csv").write_text("filename,label\nt1.mp4,1\nt2.mp4,maybe\n")
    with pytest.raises(UserError, match=r"1 bad rows \(line 3"):
        DFDC(str(root)).videos("test")
    with pytest.raises(UserError, match="no dfdc_train_part_<k>/ folders"):
        DFDC(str(root / "test")).videos("train")


def test_dfdc_preview(tmp_path: Path) -> None:
    entries = {}
    for i in range(12):
        entries[f"original_videos/{100 + i}/{100 + i}_A/00{i}.mp4"] = {
            "label": "real",
            "set": "train",
        }
        entries[f"method_A/{100 + i}/{100 + i}_A/00{i}.mp4"] = {"label": "fake", "set": "train"}
    entries["method_B/900/900_B/001.mp4"] = {"label": "fake", "set": "test"}
    entries["original_videos/900/900_B/001.mp4"] = {"label": "real", "set": "test"}
    (tmp_path / "dataset.json").write_text(json.dumps(entries))
    source = DFDCPreview(str(tmp_path), val_fraction=0.5)
    test = source.videos("test")
    assert {(v.method, v.label) for v in test} == {("method_B", FAKE), ("real", REAL)}
    train, val = source.videos("train"), source.videos("val")
    assert len(train) + len(val) == 24 and train and val
    assert not {v.extra["identity"] for v in train} & {v.extra["identity"] for v in val}
    assert source.missing_videos("test") == sorted(v.rel for v in test)
    (tmp_path / "dataset.json").write_text(json.dumps({"a.mp4": {"label": "fake", "set": "dev"}}))
    with pytest.raises(UserError, match="1 bad entries"):
        DFDCPreview(str(tmp_path)).videos("train")

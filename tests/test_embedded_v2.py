"""The embedded benchmark v2 (the default, ``data.version=2``) on tiny builds."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, JpegImagePlugin
from torch import nn

from datasets.embedded import FAMILIES_V2, EmbeddedBenchmark, build_embedded_benchmark, families
from datasets.embedded.build import assign_splits
from datasets.embedded.diffusion import Denoiser, sdedit, train_denoiser
from datasets.embedded.photos import CATALOGUE
from datasets.embedded.spectrum import SpectrumMatcher, azimuthal_profile, spectrum_gap
from datasets.embedded.v2 import assign_splits_balanced, split_stats
from deepsift.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "photos": ["astronaut", "chelsea", "coffee", "rocket"],
    "crops_per_photo": 3,
    "stride": 32,
    "ae_steps": 2,
    "ae_batch": 4,
    "ae_patch": 16,
    "split_trials": 20,
    "threads": 1,
}


def tiny(root: Path, **overrides) -> Path:
    return build_embedded_benchmark(root, progress=False, **{**TINY, **overrides})


def read_index(folder: Path) -> list[dict[str, str]]:
    with open(folder / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny(tmp_path_factory.mktemp("cache"))


def test_v2_is_the_default() -> None:
    config = OmegaConf.load(ROOT / "configs/data/embedded.yaml")
    assert config.version == 2 and EmbeddedBenchmark().version == 2
    assert families() == FAMILIES_V2 == families(2)
    assert len(FAMILIES_V2) >= 6 and {"diffusion", "jpeg"} <= set(FAMILIES_V2)
    assert families(1) == ("tconv", "nearest", "bilinear", "pixelshuffle")


def test_layout_pairing_and_splits(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    rows = read_index(built)
    assert built.name.startswith("v2-") and manifest["version"] == "v2"
    assert manifest["generators"] == list(FAMILIES_V2)
    assert len(rows) == 4 * 3 * (1 + len(FAMILIES_V2))
    split_of: dict[str, set[str]] = {}
    for row in rows:
        assert row["path"].endswith(".jpg")
        assert int(row["label"]) == (row["generator"] != "real")
        split_of.setdefault(row["source"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert {next(iter(s)) for s in split_of.values()} == {"train", "val", "test"}
    reals = {(r["split"], r["source"], r["x"], r["y"]) for r in rows if r["generator"] == "real"}
    for family in FAMILIES_V2:
        assert {
            (r["split"], r["source"], r["x"], r["y"]) for r in rows if r["generator"] == family
        } == reals
    gaps = manifest["spectrum_gap"]
    assert set(gaps) == set(FAMILIES_V2)
    assert all(set(g) == {"unmatched", "stored"} for g in gaps.values())


def test_no_file_format_shortcut(built: Path) -> None:
    """Format, size, quantisation tables and chroma subsampling: one distribution per label."""

    def signature(path: Path) -> tuple:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)
            tables = tuple(tuple(img.quantization[k]) for k in sorted(img.quantization))
            return img.format, img.size, tables, JpegImagePlugin.get_sampling(img)

    rows = read_index(built)
    by_generator: dict[str, Counter] = {}
    for row in rows:
        by_generator.setdefault(row["generator"], Counter())[signature(built / row["path"])] += 1
    assert len(by_generator["real"]) > 1  # qualities do vary
    for family in FAMILIES_V2:
        assert by_generator[family] == by_generator["real"], family


def test_determinism(built: Path, tmp_path: Path) -> None:
    def files(folder: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"
        }

    again = tiny(tmp_path / "a")
    assert again.name == built.name
    assert files(again) == files(built)
    manifest = json.loads((built / "manifest.json").read_text())
    assert (
        json.loads((again / "manifest.json").read_text())["content_sha256"]
        == (manifest["content_sha256"])
    )
    other = tiny(tmp_path / "b", seed=1)
    assert other.name != built.name and files(other) != files(built)


def test_source_reads_v2(built: Path) -> None:
    data = EmbeddedBenchmark(
        str(built.parents[1]),
        progress=False,
        train_generators=["diffusion"],
        test_generators=None,
        **TINY,
    )
    assert data.path == built
    assert {r.generator for r in data.records("train")} == {"real", "diffusion"}
    assert {r.generator for r in data.records("test")} == {"real", *FAMILIES_V2}
    assert all(Path(r.path).is_file() for r in data.records("val"))


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data.version=3 .* choose 1 or 2"):
        EmbeddedBenchmark(str(tmp_path), version=3)
    with pytest.raises(UserError, match=r"valid generators of data\.version=2: .*diffusion, jpeg"):
        EmbeddedBenchmark(str(tmp_path), train_generators=["stylegan"])
    with pytest.raises(UserError, match=r"unknown embedded benchmark v2 setting\(s\) \['bogus'\]"):
        tiny(tmp_path, bogus=1)
    with pytest.raises(UserError, match="jpeg_quality"):
        tiny(tmp_path, jpeg_quality=[90, 80])
    with pytest.raises(UserError, match="diffusion_sigma"):
        tiny(tmp_path, diffusion_sigma=[0.0, 0.3])


def test_denoiser_has_no_upsampling_and_samples_deterministically() -> None:
    model = Denoiser(width=8, layers=3)
    for module in model.modules():
        assert not isinstance(module, nn.Upsample | nn.ConvTranspose2d | nn.PixelShuffle)
        if isinstance(module, nn.Conv2d):
            assert module.stride == (1, 1)
    crops = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    trained, loss = train_denoiser(
        crops,
        steps=3,
        batch=4,
        patch=8,
        lr=1e-3,
        width=8,
        sigma_range=(0.01, 0.3),
        seed=0,
        progress=False,
    )
    assert np.isfinite(loss)
    a = sdedit(trained, crops, strength=0.2, steps=3, seed=1, batch=2)
    b = sdedit(trained, crops, strength=0.2, steps=3, seed=1, batch=2)
    assert a.shape == crops.shape and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, sdedit(trained, crops, strength=0.2, steps=3, seed=2))


def test_denoiser_learns_to_denoise() -> None:
    """Smooth images: after training, the denoised estimate is closer to clean than the input."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 255, (64, 4, 4, 3))
    crops = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2).astype(np.uint8)  # 16 px, flat 4x4
    torch.manual_seed(0)
    model, _ = train_denoiser(
        crops,
        steps=120,
        batch=16,
        patch=16,
        lr=3e-3,
        width=16,
        sigma_range=(0.1, 0.1),
        seed=0,
        progress=False,
    )
    clean = torch.from_numpy(crops[:16]).permute(0, 3, 1, 2).float() / 255
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        estimate = model(noisy, torch.full((16,), 0.1))
    assert (estimate - clean).abs().mean() < 0.8 * (noisy - clean).abs().mean()


def test_spectrum_gap_measure() -> None:
    rng = np.random.default_rng(0)
    reals = rng.uniform(0, 255, (8, 64, 64, 3))
    assert spectrum_gap(reals, reals) == {"all": 0.0, "upper": 0.0}
    # twice the amplitude is four times the power at every radius: log10(4)
    gap = spectrum_gap(reals, 2 * reals)
    assert gap["all"] == pytest.approx(np.log10(4)) and gap["upper"] == pytest.approx(np.log10(4))
    # ring r holds the pixels at rounded distance r from the centre: radius 2 is the 4 on
    # the axes at distance 2 and the 8 at sqrt(5) ~ 2.24 (12 pixels)
    power = np.zeros((9, 9))
    power[4, 4], power[4, 6], power[6, 4] = 5.0, 2.0, 4.0
    assert azimuthal_profile(power)[:3].tolist() == [5.0, 0.0, 6.0 / 12]


def test_spectrum_matcher_closes_the_gap_on_held_out_images() -> None:
    """Fakes = blurred reals (too little high-frequency power); matched on half, tested on the rest."""
    rng = np.random.default_rng(0)
    reals = rng.uniform(0, 255, (64, 32, 32, 3)).astype(np.float32)
    blur = (
        reals + np.roll(reals, 1, 1) + np.roll(reals, 1, 2) + np.roll(reals, (1, 1), (1, 2))
    ) / 4
    before = spectrum_gap(reals[32:], blur[32:])
    matcher = SpectrumMatcher(limit=8).fit(reals[:32], blur[:32])
    after = spectrum_gap(reals[32:], matcher.apply(blur[32:]))
    assert before["upper"] > 0.5 and after["upper"] < 0.05 and after["all"] < 0.05
    # the clip keeps the gain within [1 / limit, limit]
    assert matcher.gain.max() <= 8 and matcher.gain.min() >= 1 / 8

    # a step after matching (here: halving the amplitude) is corrected by a refinement round
    lost = spectrum_gap(reals[32:], 0.5 * matcher.apply(blur[32:]))
    matcher.refine(reals[:32], 0.5 * matcher.apply(blur[:32]))
    refined = spectrum_gap(reals[32:], 0.5 * matcher.apply(blur[32:]))
    assert lost["all"] > 0.5 and refined["all"] < 0.05


def test_balanced_assignment_beats_v1_on_val_test_difficulty() -> None:
    names = [p.name for p in CATALOGUE]
    sizes = dict.fromkeys(names, 300)
    scenes = {p.name: p.scene for p in CATALOGUE}
    detail = {n: float(i) for i, n in enumerate(names)}  # every photo a different difficulty
    jpeg = {p.name: p.relpath.endswith(".jpg") for p in CATALOGUE}
    for seed in range(3):
        balanced = assign_splits_balanced(sizes, scenes, detail, jpeg, (0.6, 0.2, 0.2), seed)
        assert balanced["motorcycle_left"] == balanced["motorcycle_right"]
        stats = split_stats(balanced, sizes, detail, jpeg)
        old = split_stats(assign_splits(sizes, scenes, (0.6, 0.2, 0.2), seed), sizes, detail, jpeg)
        gap = abs(stats["val"]["detail"] - stats["test"]["detail"])
        assert gap <= abs(old["val"]["detail"] - old["test"]["detail"])
        assert gap <= 1.0 and stats["val"]["jpeg_share"] == stats["test"]["jpeg_share"]
        assert 600 <= stats["val"]["crops"] <= 900 and 600 <= stats["test"]["crops"] <= 900
    assert balanced == assign_splits_balanced(sizes, scenes, detail, jpeg, (0.6, 0.2, 0.2), 2)

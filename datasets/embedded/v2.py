"""Embedded v2 (``data.version=2``, the default): six generator families, one file format.

What changed from v1 (issue #17; v1 stays selectable and rebuilds as before):

* **Six families.** v1's four autoencoders (``tconv``, ``nearest``, ``bilinear``,
  ``pixelshuffle``, :mod:`datasets.embedded.generators`), plus ``diffusion``, an
  iterative denoiser with no up-sampling layer at all (SDEdit-style sampling from the
  noised real crop, :mod:`datasets.embedded.diffusion`), and ``jpeg``, an autoencoder
  with bicubic up-sampling whose output is JPEG-compressed (quality drawn per crop in
  ``family_jpeg_quality``), as half of the source photographs were.
* **Spectrum matching.** Each family's raw outputs get a fixed per-frequency gain
  (:class:`~datasets.embedded.spectrum.SpectrumMatcher`, fitted on the train split's
  reals and fakes) so their average power spectrum is the reals'; the generators' phase
  structure (checkerboards, denoiser texture) stays. The manifest records the spectrum
  gap before (``unmatched``) and after (``stored``) matching.
* **One format for all.** Every image, real or fake, is stored as a JPEG whose quality
  is drawn per crop in ``jpeg_quality`` and shared by the real crop and all its fakes,
  so format and quality have the same distribution for both labels.
* **Balanced photo assignment.** Among ``split_trials`` seeded scene orders filled as
  v1 does (greedy to the split fractions), the one whose val and test are closest in
  crop count, in mean detail (log high-pass energy of the crops: flat crops make fakes
  easy to spot) and in share of JPEG-source photographs is kept.

Everything is deterministic for a seed, like v1 (see :mod:`datasets.embedded.build`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import platform
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from datasets.embedded.diffusion import sdedit, train_denoiser
from datasets.embedded.generators import FAMILIES_V2, synthesise_float, train_autoencoder
from datasets.embedded.photos import Crop, Photo, crop_photo, load_photo, source_versions
from datasets.embedded.spectrum import SpectrumMatcher, luma, spectrum_gap
from deepsift.core.errors import UserError
from deepsift.core.progress import progress_bar

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: the up-sampling layer of each autoencoder family (``diffusion`` has none)
UPSAMPLING = {"tconv": "tconv", "nearest": "nearest", "bilinear": "bilinear"}
UPSAMPLING |= {"pixelshuffle": "pixelshuffle", "jpeg": "bicubic"}


@dataclass(frozen=True)
class BuildSettingsV2:
    """Everything that determines the content of a v2 build (all hashed into its folder name)."""

    tag: ClassVar[str] = "v2"

    seed: int = 0
    crop_size: int = 64
    stride: int = 16
    crops_per_photo: int = 300
    min_crop_std: float = 2.0
    photos: tuple[str, ...] | None = None
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_trials: int = 400
    ae_steps: int = 350
    ae_batch: int = 32
    ae_patch: int = 32
    ae_lr: float = 3e-3
    ae_width: int = 24
    diffusion_sigma: tuple[float, float] = (0.01, 0.3)
    diffusion_strength: float = 0.15
    diffusion_steps: int = 3
    match_spectrum: bool = True
    match_rounds: int = 2
    gain_limit: float = 6.0
    jpeg_quality: tuple[int, int] = (80, 95)
    family_jpeg_quality: tuple[int, int] = (60, 85)
    threads: int = 2

    def validate(self) -> None:
        positive = (
            "crop_size",
            "stride",
            "crops_per_photo",
            "ae_batch",
            "ae_patch",
            "ae_width",
            "threads",
            "split_trials",
            "diffusion_steps",
        )
        if self.match_rounds < 0:
            raise UserError(f"match_rounds={self.match_rounds} must be >= 0")
        bad = [name for name in positive if getattr(self, name) < 1]
        if bad or self.ae_steps < 0:
            raise UserError(f"embedded benchmark settings {bad or ['ae_steps']} must be positive")
        if self.crop_size % 2:
            raise UserError(
                f"crop_size={self.crop_size} must be even (the generators up-sample x2)"
            )
        if len(self.split_fractions) != 3 or min(self.split_fractions) <= 0:
            raise UserError(
                f"split_fractions={self.split_fractions} must be three positive numbers"
            )
        for name in ("jpeg_quality", "family_jpeg_quality"):
            low, high = getattr(self, name)
            if not 1 <= low <= high <= 100:
                raise UserError(
                    f"{name}={[low, high]} must be [low, high] with 1 <= low <= high <= 100"
                )
        if (
            not 0 < self.diffusion_sigma[0] <= self.diffusion_sigma[1]
            or self.diffusion_strength <= 0
        ):
            raise UserError(
                f"diffusion_sigma={list(self.diffusion_sigma)} and diffusion_strength="
                f"{self.diffusion_strength} must be positive (sigma as [low, high])"
            )

    def key(self, photos: list[Photo]) -> str:
        """Short hash of these settings and the photos actually used."""
        payload = dataclasses.asdict(self) | {
            "photos": [p.name for p in photos],
            "version": self.tag,
        }
        blob = json.dumps(payload, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def crop_detail(pixels: np.ndarray) -> np.ndarray:
    """Per crop ``log10(1 + mean squared Laplacian of the luma)``: low for flat crops."""
    grey = luma(pixels)
    lap = (
        4 * grey[:, 1:-1, 1:-1]
        - grey[:, :-2, 1:-1]
        - grey[:, 2:, 1:-1]
        - grey[:, 1:-1, :-2]
        - grey[:, 1:-1, 2:]
    )
    return np.log10(1 + (lap**2).mean(axis=(1, 2)))


def split_stats(
    splits: dict[str, str], sizes: dict[str, int], detail: dict[str, float], jpeg: dict[str, bool]
) -> dict[str, dict[str, float]]:
    """Crops, crop-weighted mean detail and share of JPEG-source crops of each split."""
    out = {}
    for split in SPLITS:
        names = [p for p, s in splits.items() if s == split]
        n = sum(sizes[p] for p in names)
        out[split] = {
            "crops": n,
            "detail": sum(sizes[p] * detail[p] for p in names) / max(n, 1),
            "jpeg_share": sum(sizes[p] for p in names if jpeg[p]) / max(n, 1),
        }
    return out


def assign_splits_balanced(
    sizes: dict[str, int],
    scenes: dict[str, str],
    detail: dict[str, float],
    jpeg: dict[str, bool],
    fractions: tuple[float, float, float],
    seed: int,
    trials: int = 400,
) -> dict[str, str]:
    """Photo -> split, scenes kept together, with val and test of comparable difficulty.

    Each of ``trials`` seeded scene orders is filled as v1's
    :func:`~datasets.embedded.build.assign_splits` does (first three scenes seed test,
    val, train; each next scene to the split furthest below its share of crops). The
    kept one minimises the relative deviation of the crop counts from ``fractions``
    plus the val-test difference in mean ``detail`` (relative to the spread over
    photos) and in share of JPEG-source crops (``jpeg``); ties go to the earliest.
    """
    groups: dict[str, list[str]] = {}
    for photo in sizes:
        groups.setdefault(scenes[photo], []).append(photo)
    if len(groups) < 3:
        raise UserError(
            f"the embedded benchmark needs photos of at least 3 scenes for train/val/test, got {sorted(groups)}"
        )
    names = sorted(groups)
    total = sum(sizes.values())
    target = {s: f / sum(fractions) * total for s, f in zip(SPLITS, fractions, strict=True)}
    values = np.array([detail[p] for p in sizes])
    spread = float(values.max() - values.min()) or 1.0
    rng = np.random.default_rng([seed, 2])
    best: tuple[float, dict[str, str]] | None = None
    for _ in range(trials):
        order = [names[i] for i in rng.permutation(len(names))]
        splits, filled = fill_splits(order, groups, sizes, target)
        stats = split_stats(splits, sizes, detail, jpeg)
        cost = sum(abs(filled[s] - target[s]) / total for s in SPLITS)
        cost += abs(stats["val"]["detail"] - stats["test"]["detail"]) / spread
        cost += abs(stats["val"]["jpeg_share"] - stats["test"]["jpeg_share"])
        if best is None or cost < best[0] - 1e-12:
            best = (cost, splits)
    assert best is not None
    return best[1]


def fill_splits(
    order: list[str], groups: dict[str, list[str]], sizes: dict[str, int], target: dict[str, float]
) -> tuple[dict[str, str], dict[str, int]]:
    """Scenes in ``order``: the first three seed test, val and train, each further one goes
    to the split furthest below its ``target`` crop count. Returns photo -> split and the
    crops per split."""
    filled = dict.fromkeys(SPLITS, 0)
    out: dict[str, str] = {}
    for i, scene in enumerate(order):
        split = (
            ("test", "val", "train")[i]
            if i < 3
            else max(SPLITS, key=lambda s: target[s] - filled[s])
        )
        for photo in groups[scene]:
            out[photo] = split
            filled[split] += sizes[photo]
    return out, filled


def quantise(images: np.ndarray) -> np.ndarray:
    """Float images on 0-255 -> uint8, rounded and clipped."""
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """One uint8 ``(H, W, 3)`` image as JPEG bytes (PIL, 4:2:0 chroma, no optimisation)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def family_output(family: str, images: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Float images -> the family's uint8 output: rounded, and for ``jpeg`` JPEG-compressed."""
    out = quantise(images)
    if family != "jpeg":
        return out
    return np.stack([decode_jpeg(encode_jpeg(img, q)) for img, q in zip(out, quality, strict=True)])


def _rel(generator: str, crop: Crop) -> str:
    return f"images/{generator}/{crop.photo}/{crop.index:04d}.jpg"


def _family_outputs(
    family: str,
    index: int,
    pixels: np.ndarray,
    train: np.ndarray,
    config: BuildSettingsV2,
    progress: bool,
) -> tuple[np.ndarray, float]:
    """Raw float outputs (0-255, unclipped) of the family's generator for every crop."""
    seed = config.seed * 1000 + 100 + index
    common = {
        "steps": config.ae_steps,
        "batch": config.ae_batch,
        "patch": config.ae_patch,
        "lr": config.ae_lr,
        "width": config.ae_width,
        "seed": seed,
        "progress": progress,
    }
    if family == "diffusion":
        model, loss = train_denoiser(pixels[train], sigma_range=config.diffusion_sigma, **common)
        raw = sdedit(
            model,
            pixels,
            strength=config.diffusion_strength,
            steps=config.diffusion_steps,
            seed=seed,
        )
        return raw, loss
    model, loss = train_autoencoder(UPSAMPLING[family], pixels[train], **common)
    return synthesise_float(model, pixels), loss


def build_into(
    folder: Path, config: BuildSettingsV2, photos: list[Photo], progress: bool
) -> dict[str, Any]:
    """Write the images and ``index.csv`` of a v2 build into ``folder``; return its manifest.

    The caller fixes torch's thread count and adds ``content_sha256``.
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    crops: list[Crop] = []
    for photo in photos:
        crops += crop_photo(
            photo,
            load_photo(photo),
            config.crop_size,
            config.stride,
            config.crops_per_photo,
            config.min_crop_std,
            config.seed,
        )
    pixels = np.stack([c.pixels for c in crops])
    sizes = Counter(c.photo for c in crops)
    owner = np.array([c.photo for c in crops])
    details = crop_detail(pixels)
    detail = {p: float(details[owner == p].mean()) for p in sizes}
    jpeg_source = {p.name: p.relpath.lower().endswith((".jpg", ".jpeg")) for p in photos}
    splits = assign_splits_balanced(
        dict(sizes),
        {p.name: p.scene for p in photos if p.name in sizes},
        detail,
        jpeg_source,
        config.split_fractions,
        config.seed,
        config.split_trials,
    )
    train = np.array([splits[c.photo] == "train" for c in crops])
    rng = np.random.default_rng([config.seed, 3])
    quality = rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1, len(crops))
    family_quality = rng.integers(
        config.family_jpeg_quality[0], config.family_jpeg_quality[1] + 1, len(crops)
    )
    timings["crop"] = time.perf_counter() - start
    log.info("%d real crops from %d photos; splits %s", len(crops), len(sizes), splits)

    def store(images: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """JPEG bytes at each crop's storage quality, and what they decode to."""
        blobs = [encode_jpeg(img, q) for img, q in zip(images, quality, strict=True)]
        return blobs, np.stack([decode_jpeg(b) for b in blobs])

    def write(generator: str, blobs: list[bytes]) -> None:
        label = int(generator != "real")
        for crop, blob in zip(
            crops, progress_bar(blobs, f"write {generator}", enabled=progress), strict=True
        ):
            path = folder / _rel(generator, crop)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            rows.append(
                (
                    _rel(generator, crop),
                    label,
                    splits[crop.photo],
                    crop.photo,
                    generator,
                    crop.x,
                    crop.y,
                )
            )

    rows: list[tuple[Any, ...]] = []
    real_blobs, stored_reals = store(pixels)
    write("real", real_blobs)
    losses: dict[str, float] = {}
    gaps: dict[str, dict[str, dict[str, float]]] = {}
    mean_abs_diff: dict[str, float] = {}
    for i, family in enumerate(FAMILIES_V2):
        t0 = time.perf_counter()
        raw, losses[family] = _family_outputs(family, i, pixels, train, config, progress)
        matched = raw
        if config.match_spectrum:
            matcher = SpectrumMatcher(config.gain_limit).fit(
                pixels[train].astype(np.float32), raw[train]
            )
            for _ in range(config.match_rounds):
                stored_train = np.stack(
                    [
                        decode_jpeg(encode_jpeg(img, q))
                        for img, q in zip(
                            family_output(family, matcher.apply(raw[train]), family_quality[train]),
                            quality[train],
                            strict=True,
                        )
                    ]
                )
                matcher.refine(stored_reals[train], stored_train)
            matched = matcher.apply(raw)
        outputs = {
            "unmatched": family_output(family, raw, family_quality),
            "stored": family_output(family, matched, family_quality),
        }
        _, unmatched = store(outputs["unmatched"])
        blobs, stored = store(outputs["stored"])
        write(family, blobs)
        gaps[family] = {
            "unmatched": spectrum_gap(stored_reals, unmatched),
            "stored": spectrum_gap(stored_reals, stored),
        }
        mean_abs_diff[family] = float(np.abs(stored.astype(np.int16) - stored_reals).mean())
        timings[family] = time.perf_counter() - t0
        log.info(
            "generator %s: L1 %.4f, |fake - real| %.2f, spectrum gap (upper half) %.3f -> %.3f, %.1fs",
            family,
            losses[family],
            mean_abs_diff[family],
            gaps[family]["unmatched"]["upper"],
            gaps[family]["stored"]["upper"],
            timings[family],
        )

    with open(folder / "index.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("path", "label", "split", "source", "generator", "x", "y"))
        writer.writerows(rows)
    counts = {s: {g: 0 for g in ("real", *FAMILIES_V2)} for s in SPLITS}
    for row in rows:
        counts[row[2]][row[4]] += 1
    return {
        "name": "embedded",
        "version": config.tag,
        "key": f"{config.tag}-{config.key(photos)}",
        "seed": config.seed,
        "settings": dataclasses.asdict(config) | {"photos": [p.name for p in photos]},
        "splits": {s: sorted(p for p, v in splits.items() if v == s) for s in SPLITS},
        "split_balance": split_stats(splits, dict(sizes), detail, jpeg_source),
        "counts": counts,
        "generators": list(FAMILIES_V2),
        "ae_final_l1": losses,
        "mean_abs_diff": mean_abs_diff,
        "spectrum_gap": gaps,
        "build_seconds": round(time.perf_counter() - start, 2),
        "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
        "versions": source_versions(photos)
        | {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pillow": Image.__version__,
            "python": platform.python_version(),
        },
    }

"""Build the embedded benchmark once, offline, into a per-settings cache folder.

Layout of a build (``<cache root>/embedded/<version>-<hash>/``)::

    images/real/<photo>/<k>.png          real crop k of a photo
    images/<family>/<photo>/<k>.png      its re-synthesis by the family's generator
    index.csv                            path,label,split,source,generator,x,y
    manifest.json                        settings, seed, counts, timing, versions

``<hash>`` is a short hash of the build settings (including the seed and the
photos used), so different settings never share a folder. The cache root is the
``root`` argument, else ``$DEEPSIFT_CACHE_DIR``, else
``platformdirs.user_cache_dir("deepsift")``.

The build goes into a temporary folder beside the target, which is moved into
place with ``os.replace`` only once complete: an interrupted or failed build
leaves no partial cache (leftover temporaries are removed by the next build). A
file lock lets concurrent processes (e.g. DDP ranks) build once and share it.

**Deterministic** means: for the same settings, seed, library versions, thread
count and CPU, every image and ``index.csv`` are byte-identical (the manifest's
``content_sha256`` summarises them; its timings differ). All randomness (crop
selection, split, weight init, batches) comes from the seed; torch runs with
``threads`` intra-op threads during the build (restored afterwards), and its CPU
kernels used here are deterministic for a fixed thread count. Other CPUs or torch versions may change float rounding and
hence a few fake pixels by one grey level.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import platformdirs
import torch
from filelock import FileLock
from PIL import Image

from datasets.embedded import v2
from datasets.embedded.generators import FAMILIES, synthesise, train_autoencoder
from datasets.embedded.photos import (
    Crop,
    Photo,
    crop_photo,
    load_photo,
    select_photos,
    source_versions,
)
from deepsift.core.errors import UserError
from deepsift.core.progress import progress_bar

log = logging.getLogger(__name__)

# Bump when a code change alters the images a given set of settings produces.
VERSION = "v1"
#: data.version -> its settings; 2 (datasets.embedded.v2) is the default
DEFAULT_VERSION = 2
SPLITS: tuple[str, ...] = ("train", "val", "test")
INDEX_COLUMNS = ("path", "label", "split", "source", "generator", "x", "y")


@dataclass(frozen=True)
class BuildSettings:
    """Everything that determines the content of a build (all hashed into its folder name)."""

    seed: int = 0
    crop_size: int = 64
    stride: int = 16
    crops_per_photo: int = 300
    min_crop_std: float = 2.0
    photos: tuple[str, ...] | None = None
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    ae_steps: int = 350
    ae_batch: int = 32
    ae_patch: int = 32
    ae_lr: float = 3e-3
    ae_width: int = 32
    threads: int = 2

    tag: ClassVar[str] = VERSION

    def validate(self) -> None:
        positive = (
            "crop_size",
            "stride",
            "crops_per_photo",
            "ae_batch",
            "ae_patch",
            "ae_width",
            "threads",
        )
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

    def key(self, photos: list[Photo]) -> str:
        """Short hash of these settings and the photos actually used."""
        payload = dataclasses.asdict(self) | {
            "photos": [p.name for p in photos],
            "version": VERSION,
        }
        blob = json.dumps(payload, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def cache_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root``, else ``$DEEPSIFT_CACHE_DIR``, else the user cache folder of deepsift."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("DEEPSIFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("deepsift"))


SETTINGS: dict[int, type[BuildSettings] | type[v2.BuildSettingsV2]] = {
    1: BuildSettings,
    2: v2.BuildSettingsV2,
}


def settings_class(version: int) -> type[BuildSettings] | type[v2.BuildSettingsV2]:
    """The settings dataclass of ``data.version``; an unknown version is a UserError."""
    if version not in SETTINGS:
        raise UserError(
            f"data.version={version!r} is not an embedded benchmark version; choose 1 or 2"
        )
    return SETTINGS[version]


def benchmark_dir(
    settings: BuildSettings | v2.BuildSettingsV2, root: str | os.PathLike[str] | None = None
) -> Path:
    """Where a build with ``settings`` lives (whether or not it exists yet)."""
    photos = select_photos(settings.photos)
    return cache_root(root) / "embedded" / f"{settings.tag}-{settings.key(photos)}"


def read_manifest(folder: Path, version: str = VERSION) -> dict[str, Any] | None:
    """The manifest of a complete build of ``version`` ("v1", "v2") in ``folder``, or None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != version or not (folder / "index.csv").is_file():
        return None
    return manifest


def build_embedded_benchmark(
    root: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    version: int = DEFAULT_VERSION,
    **settings: Any,
) -> Path:
    """Build (or reuse) the embedded benchmark ``version`` (1 or 2) and return its folder.

    ``settings`` are the fields of :class:`BuildSettings` (v1) or
    :class:`~datasets.embedded.v2.BuildSettingsV2` (v2): ``seed``, ``crop_size``,
    ``crops_per_photo``, ``photos``, ``ae_steps``, ... A complete build with the same
    settings is reused unless ``force``.
    """
    cls = settings_class(version)
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"unknown embedded benchmark v{version} setting(s) {unknown}")
    for name, value in settings.items():
        if isinstance(value, Sequence) and not isinstance(value, str):  # lists, ListConfig
            settings[name] = tuple(value)
    if settings.get("photos") is not None:
        settings["photos"] = tuple(settings["photos"])
    if settings.get("split_fractions") is not None:
        settings["split_fractions"] = tuple(settings["split_fractions"])
    config = cls(**settings)
    config.validate()
    photos = select_photos(config.photos)
    target = cache_root(root) / "embedded" / f"{config.tag}-{config.key(photos)}"
    if not force and read_manifest(target, config.tag) is not None:
        log.info("embedded benchmark: reusing %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f"{target.name}.lock")):
        if not force and read_manifest(target, config.tag) is not None:
            log.info("embedded benchmark: built by another process, reusing %s", target)
            return target
        _remove_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            if isinstance(config, v2.BuildSettingsV2):
                _build_v2(tmp, config, photos, progress)
            else:
                _build_into(tmp, config, photos, progress)
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    log.info("embedded benchmark ready at %s", target)
    return target


def _remove_stale(target: Path) -> None:
    """Delete temporaries of builds that died (we hold the lock, so none is running)."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            log.info("removing leftover of an interrupted build: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Fixed intra-op threads (float reductions depend on them), restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def assign_splits(
    sizes: dict[str, int], scenes: dict[str, str], fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Photo -> split, keeping each scene on one split and crop counts near ``fractions``.

    Scenes are shuffled with ``seed``; the first three seed test, val and train, and
    each further scene goes to the split furthest below its target share of crops.
    """
    groups: dict[str, list[str]] = {}
    for photo in sizes:
        groups.setdefault(scenes[photo], []).append(photo)
    if len(groups) < 3:
        raise UserError(
            f"the embedded benchmark needs photos of at least 3 scenes for train/val/test, got {sorted(groups)}"
        )
    order = sorted(groups)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    total = sum(sizes.values())
    target = {s: f / sum(fractions) * total for s, f in zip(SPLITS, fractions, strict=True)}
    return v2.fill_splits(order, groups, sizes, target)[0]


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=6)


def _rel(generator: str, crop: Crop) -> str:
    return f"images/{generator}/{crop.photo}/{crop.index:04d}.png"


def _build_into(folder: Path, config: BuildSettings, photos: list[Photo], progress: bool) -> None:
    """Write a complete benchmark into ``folder``."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    log.info(
        "building the embedded benchmark (%d photos, seed %d) in %s",
        len(photos),
        config.seed,
        folder,
    )
    crops: list[Crop] = []
    for photo in photos:
        image = load_photo(photo)
        crops += crop_photo(
            photo,
            image,
            config.crop_size,
            config.stride,
            config.crops_per_photo,
            config.min_crop_std,
            config.seed,
        )
    sizes = Counter(c.photo for c in crops)
    splits = assign_splits(
        dict(sizes),
        {p.name: p.scene for p in photos if p.name in sizes},
        config.split_fractions,
        config.seed,
    )
    pixels = np.stack([c.pixels for c in crops])
    train_mask = np.array([splits[c.photo] == "train" for c in crops])
    timings["crop"] = time.perf_counter() - start
    log.info(
        "%d real crops of %dpx from %d photos; train photos: %s",
        len(crops),
        config.crop_size,
        len(sizes),
        sorted(p for p, s in splits.items() if s == "train"),
    )

    rows: list[tuple[Any, ...]] = []
    for crop in progress_bar(crops, "write real", enabled=progress):
        _save_png(crop.pixels, folder / _rel("real", crop))
        rows.append((_rel("real", crop), 0, splits[crop.photo], crop.photo, "real", crop.x, crop.y))
    losses: dict[str, float] = {}
    mean_abs_diff: dict[str, float] = {}
    with _torch_threads(config.threads):
        for i, family in enumerate(FAMILIES):
            t0 = time.perf_counter()
            model, losses[family] = train_autoencoder(
                family,
                pixels[train_mask],
                steps=config.ae_steps,
                batch=config.ae_batch,
                patch=config.ae_patch,
                lr=config.ae_lr,
                width=config.ae_width,
                seed=config.seed * 1000 + i,
                progress=progress,
            )
            fakes = synthesise(model, pixels)
            mean_abs_diff[family] = float(np.abs(fakes.astype(np.int16) - pixels).mean())
            for crop, fake in zip(
                crops,
                progress_bar(fakes, f"write {family}", enabled=progress),
                strict=True,
            ):
                _save_png(fake, folder / _rel(family, crop))
                rows.append(
                    (_rel(family, crop), 1, splits[crop.photo], crop.photo, family, crop.x, crop.y)
                )
            timings[family] = time.perf_counter() - t0
            log.info(
                "generator %s: final L1 %.4f, mean |fake - real| %.2f grey levels, %.1fs",
                family,
                losses[family],
                mean_abs_diff[family],
                timings[family],
            )

    with open(folder / "index.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
    counts = {s: {g: 0 for g in ("real", *FAMILIES)} for s in SPLITS}
    for row in rows:
        counts[row[2]][row[4]] += 1
    seconds = time.perf_counter() - start
    manifest = {
        "name": "embedded",
        "version": VERSION,
        "key": folder_key(config, photos),
        "seed": config.seed,
        "settings": dataclasses.asdict(config) | {"photos": [p.name for p in photos]},
        "splits": {s: sorted(p for p, v in splits.items() if v == s) for s in SPLITS},
        "counts": counts,
        "generators": list(FAMILIES),
        "ae_final_l1": losses,
        "mean_abs_diff": mean_abs_diff,
        "content_sha256": content_hash(folder),
        "build_seconds": round(seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
        "versions": source_versions(photos)
        | {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pillow": Image.__version__,
            "python": platform.python_version(),
        },
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("embedded benchmark built in %.1fs: %s", seconds, counts)


def _build_v2(
    folder: Path, config: v2.BuildSettingsV2, photos: list[Photo], progress: bool
) -> None:
    """Write a complete v2 benchmark into ``folder`` (:func:`datasets.embedded.v2.build_into`)."""
    log.info(
        "building the embedded benchmark v2 (%d photos, seed %d) in %s",
        len(photos),
        config.seed,
        folder,
    )
    with _torch_threads(config.threads):
        manifest = v2.build_into(folder, config, photos, progress)
    manifest["content_sha256"] = content_hash(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info(
        "embedded benchmark v2 built in %.1fs: %s", manifest["build_seconds"], manifest["counts"]
    )


def folder_key(config: BuildSettings, photos: list[Photo]) -> str:
    return f"{VERSION}-{config.key(photos)}"


def content_hash(folder: Path) -> str:
    """SHA-256 over ``index.csv`` and every image (path and bytes), in index order."""
    digest = hashlib.sha256()
    index = folder / "index.csv"
    digest.update(index.read_bytes())
    with open(index, newline="") as f:
        for row in csv.DictReader(f):
            digest.update(row["path"].encode())
            digest.update((folder / row["path"]).read_bytes())
    return digest.hexdigest()

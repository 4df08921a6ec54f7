"""Real photographs shipped inside installed packages, and their crops.

Only files that are *inside the installed wheels* are used, read straight from
the package folder (no ``skimage.data`` fetcher call, so pooch can never start a
download):

* scikit-image ``skimage/data/``: astronaut, chelsea, coffee, hubble_deep_field,
  ihc, motorcycle_left, motorcycle_right, retina, rocket;
* scikit-learn ``sklearn/datasets/images/`` (``load_sample_images``): china, flower;
* matplotlib ``mpl-data/sample_data/`` (``get_sample_data``): grace_hopper.

Left out on purpose:

* **grayscale photographs** (camera, brick, grass, gravel, moon, coins, cell,
  clock_motion, text, page, lfw_subset): a gray photo stored as RGB has
  R = G = B exactly, while a generator's three output channels never agree
  exactly, so "any colour at all" would tell fake from real on those crops. That
  shortcut has nothing to do with generator fingerprints, so they are dropped
  rather than kept;
* **synthetic images** (color wheel, phantom, chessboards, logo, horse
  silhouette): not photographs;
* files that ``skimage.data`` only downloads on demand (not in the wheel).

The two motorcycle images are a stereo pair of one scene; they share a
``scene`` so the split never puts one on train and the other on test.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepsift.core.errors import UserError
from deepsift.core.images import load_rgb


@dataclass(frozen=True)
class Photo:
    """One shipped photograph: ``relpath`` is relative to the package folder."""

    name: str
    package: str
    relpath: str
    scene: str


def _photo(name: str, package: str, relpath: str, scene: str | None = None) -> Photo:
    return Photo(name, package, relpath, scene or name)


CATALOGUE: tuple[Photo, ...] = (
    _photo("astronaut", "skimage", "data/astronaut.png"),
    _photo("chelsea", "skimage", "data/chelsea.png"),
    _photo("coffee", "skimage", "data/coffee.png"),
    _photo("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    _photo("ihc", "skimage", "data/ihc.png"),
    _photo("motorcycle_left", "skimage", "data/motorcycle_left.png", "motorcycle"),
    _photo("motorcycle_right", "skimage", "data/motorcycle_right.png", "motorcycle"),
    _photo("retina", "skimage", "data/retina.jpg"),
    _photo("rocket", "skimage", "data/rocket.jpg"),
    _photo("china", "sklearn", "datasets/images/china.jpg"),
    _photo("flower", "sklearn", "datasets/images/flower.jpg"),
    _photo("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)
PHOTO_NAMES: tuple[str, ...] = tuple(p.name for p in CATALOGUE)

# import name -> distribution name, for the versions recorded in the manifest
DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def package_dir(package: str) -> Path | None:
    """The installed folder of ``package``, found without importing it (None if absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def photo_path(photo: Photo) -> Path | None:
    """Where ``photo`` lies in its installed package, or None when that wheel lacks it."""
    folder = package_dir(photo.package)
    if folder is None:
        return None
    path = folder / photo.relpath
    return path if path.is_file() else None


def select_photos(names: list[str] | tuple[str, ...] | None = None) -> list[Photo]:
    """The photos to use, in catalogue order.

    ``names=None`` takes every catalogue photo found in the installed packages
    (those missing from this install are skipped). Naming a photo that is not in
    the catalogue, or one that is not installed, is a :class:`UserError`.
    """
    if names is None:
        return [p for p in CATALOGUE if photo_path(p) is not None]
    unknown = sorted(set(names) - set(PHOTO_NAMES))
    if unknown:
        raise UserError(
            f"unknown embedded photo(s) {unknown}; choose from {', '.join(PHOTO_NAMES)}"
        )
    chosen = [p for p in CATALOGUE if p.name in set(names)]
    missing = [p.name for p in chosen if photo_path(p) is None]
    if missing:
        raise UserError(
            f"photo(s) {missing} are not in the installed packages; "
            "reinstall scikit-image, scikit-learn and matplotlib or pick other photos"
        )
    return chosen


def source_versions(photos: list[Photo]) -> dict[str, str]:
    """Installed versions of the distributions the photos come from."""
    versions = {}
    for package in sorted({p.package for p in photos}):
        dist = DISTRIBUTIONS.get(package, package)
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def load_photo(photo: Photo) -> np.ndarray:
    """The photo as an ``(H, W, 3)`` uint8 RGB array."""
    path = photo_path(photo)
    if path is None:
        raise UserError(f"photo {photo.name!r} is not in the installed {photo.package}")
    return np.asarray(load_rgb(path), dtype=np.uint8)


@dataclass(frozen=True)
class Crop:
    """Crop ``index`` of ``photo``: its top-left corner and its pixels."""

    photo: str
    index: int
    y: int
    x: int
    pixels: np.ndarray


def crop_photo(
    photo: Photo,
    image: np.ndarray,
    size: int,
    stride: int,
    limit: int,
    min_std: float,
    seed: int,
) -> list[Crop]:
    """Square crops of ``image`` on a ``stride`` grid, at native resolution.

    Nearly flat crops (pixel standard deviation below ``min_std`` on 0-255, such
    as the black border of the retina photo) are dropped. When more than
    ``limit`` remain, a seeded random subset is kept, so every photo weighs
    about the same. The draw depends only on ``seed`` and the photo name (not on
    which other photos are built). Crops are numbered in raster order.
    """
    height, width = image.shape[:2]
    if height < size or width < size:
        return []
    corners = [
        (y, x)
        for y in range(0, height - size + 1, stride)
        for x in range(0, width - size + 1, stride)
    ]
    stds = [float(image[y : y + size, x : x + size].std()) for y, x in corners]
    corners = [c for c, s in zip(corners, stds, strict=True) if s >= min_std]
    if len(corners) > limit:
        rng = np.random.default_rng([seed, zlib.crc32(photo.name.encode())])
        keep = np.sort(rng.choice(len(corners), size=limit, replace=False))
        corners = [corners[i] for i in keep]
    return [
        Crop(photo.name, k, y, x, np.ascontiguousarray(image[y : y + size, x : x + size]))
        for k, (y, x) in enumerate(corners)
    ]

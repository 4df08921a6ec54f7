"""The Hydra data source over the embedded benchmark (``configs/data/embedded.yaml``)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets.embedded.build import (
    DEFAULT_VERSION,
    SPLITS,
    build_embedded_benchmark,
    settings_class,
)
from datasets.embedded.generators import FAMILIES, FAMILIES_V2
from deepsift.core.errors import UserError
from deepsift.core.records import Record


def families(version: int = DEFAULT_VERSION) -> tuple[str, ...]:
    """The generator families of embedded benchmark ``version`` (1: four, 2: six)."""
    settings_class(version)
    return FAMILIES if version == 1 else FAMILIES_V2


def _check_generators(names: Sequence[str], what: str, version: int) -> list[str]:
    names = [str(n) for n in names]
    valid = families(version)
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise UserError(
            f"data.{what}={names}: unknown or empty generator list; valid generators of "
            f"data.version={version}: {', '.join(valid)}"
        )
    return names


class EmbeddedBenchmark:
    """Real photo crops vs. their re-synthesis by small generators, built offline.

    ``version=2`` (the default, :mod:`datasets.embedded.v2`): six families (the four
    up-sampling autoencoders below, an iterative denoiser without up-sampling and a
    JPEG-compressed bicubic autoencoder), spectrum-matched fakes, every image stored as
    JPEG at a per-crop quality shared by both labels, and a photo assignment with val
    and test of comparable difficulty. ``version=1``: the original benchmark, described
    next, rebuilt exactly as before so old results stay reproducible.

    What it is: a small, fully offline, deterministic benchmark for checking that
    a detector, a training loop or an evaluation pipeline works end to end, and
    for studying cross-generator generalisation in a controlled setting. Reals
    are crops of the few colour photographs shipped inside scikit-image,
    scikit-learn and matplotlib; each fake is the paired real crop passed through
    a small autoencoder whose up-sampling layer is ``tconv``, ``nearest``,
    ``bilinear`` or ``pixelshuffle`` (the AutoGAN idea of Zhang et al., WIFS 2019;
    up-sampling artifacts after Odena et al., Distill 2016).

    What it is not: a substitute for FaceForensics++, GenImage, ForenSynths or any
    benchmark of real generators. Twelve photos, tiny one-layer generators and
    64-pixel crops say little about detection of modern GANs or diffusion models;
    in v1, JPEG traces of some source photos are absent from their fakes (v2 stores
    every image as JPEG); numbers on it are sanity checks, not results to publish.

    ``train`` and ``val`` hold reals plus fakes of ``train_generators``; ``test``
    holds reals plus fakes of ``test_generators`` (``None``: all of the version). Splits are
    by source photograph. Nothing happens at construction: the benchmark is built
    (v1: about 1-3 minutes on 2 CPU cores; v2: see benchmarks/README.md) or found in
    the cache on the first :meth:`records` call. ``root`` is the cache root (default
    ``$DEEPSIFT_CACHE_DIR`` or the user cache folder); the other keyword arguments are
    build settings (:class:`~datasets.embedded.build.BuildSettings` for v1,
    :class:`~datasets.embedded.v2.BuildSettingsV2` for v2).
    """

    name = "embedded"

    def __init__(
        self,
        root: str | None = None,
        seed: int = 0,
        train_generators: Sequence[str] = ("tconv",),
        test_generators: Sequence[str] | None = None,
        crop_size: int = 64,
        stride: int = 16,
        crops_per_photo: int = 300,
        photos: Sequence[str] | None = None,
        ae_steps: int = 350,
        progress: bool = True,
        version: int = DEFAULT_VERSION,
        **build_settings: Any,
    ) -> None:
        self.root = root
        self.version = int(version)
        self.train_generators = _check_generators(
            train_generators, "train_generators", self.version
        )
        self.test_generators = _check_generators(
            families(self.version) if test_generators is None else test_generators,
            "test_generators",
            self.version,
        )
        self.progress = progress
        self.settings: dict[str, Any] = {
            "version": self.version,
            "seed": int(seed),
            "crop_size": int(crop_size),
            "stride": int(stride),
            "crops_per_photo": int(crops_per_photo),
            "photos": None if photos is None else tuple(str(p) for p in photos),
            "ae_steps": int(ae_steps),
            **build_settings,
        }
        self._path: Path | None = None
        self._rows: list[dict[str, str]] | None = None

    @property
    def path(self) -> Path:
        """The benchmark folder, built on first access."""
        if self._path is None:
            self._path = build_embedded_benchmark(
                self.root, progress=self.progress, **self.settings
            )
        return self._path

    def _index(self) -> list[dict[str, str]]:
        if self._rows is None:
            with open(self.path / "index.csv", newline="") as f:
                self._rows = list(csv.DictReader(f))
        return self._rows

    def records(self, split: str) -> list[Record]:
        """Reals and fakes of ``split`` with absolute paths, in index order."""
        if split not in SPLITS:
            raise UserError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        wanted = {"real", *(self.test_generators if split == "test" else self.train_generators)}
        root = self.path
        return [
            Record(
                path=os.path.join(root, row["path"]),
                label=int(row["label"]),
                generator=row["generator"],
                source=row["source"],
            )
            for row in self._index()
            if row["split"] == split and row["generator"] in wanted
        ]

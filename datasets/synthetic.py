"""Benchmarks of synthetic (GAN / diffusion) images: thin classes over shared folder helpers.

=====================  ==========================================================
``data=forensynths``   :class:`ForenSynths` (CNNDetection)
``data=genimage``      :class:`GenImage`
``data=univfd_diffusion`` :class:`UnivFDDiffusion`
``data=diffusionforensics`` :class:`DiffusionForensics` (DIRE)
``data=synthbuster``   :class:`Synthbuster`
``data=aigcdetect``    :class:`AIGCDetectBenchmark`
=====================  ==========================================================

Every record has ``generator="real"`` for reals and the generator's folder name for
fakes; ``extra["group"]`` names the generator set an image (real or fake) belongs
to, so per-pair protocols (each generator against its own reals) can be rebuilt.

**Class-dependent file formats.** In several benchmarks reals and fakes differ in
format (GenImage and DiffusionForensics reals are JPEG, their fakes PNG), which a
detector can learn instead of generation traces. ``reencode`` (``null``, ``png``,
``jpeg<quality>`` such as ``jpeg95``) is stored in ``Record.extra["reencode"]`` and
applied to real and fake images alike when they are loaded
(:func:`deepsift.core.reencode.reencode`).
``jpeg<q>`` re-compresses every image once (PIL, default 4:2:0 chroma subsampling);
``png`` is a lossless round trip, so it leaves pixels unchanged and only states the
format explicitly.

A missing or empty folder is one :class:`~deepsift.core.errors.UserError` naming the path
and the count; a generator of the documented list that is absent (when the config
does not name generators explicitly) is logged once and listed by
:meth:`ImageSource.missing`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets.folder import CLASS_DIRS, list_images
from datasets.splits import SPLITS, bucket, check_split
from deepsift.core.errors import UserError
from deepsift.core.records import FAKE, REAL, Record
from deepsift.core.reencode import parse_reencode

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------


def subdirs(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder``, sorted (``[]`` if it does not exist)."""
    try:
        return sorted(
            e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith((".", "__"))
        )
    except (FileNotFoundError, NotADirectoryError):
        return []


def select_generators(
    explicit: Sequence[str] | None,
    known: Sequence[str],
    where: Path,
    what: str,
    usable: Callable[[str], bool] = lambda name: True,
) -> tuple[list[str], list[str]]:
    """``(chosen, missing)`` generator folders under ``where``.

    Names given explicitly must all exist (else one error naming the absent ones).
    Otherwise the documented ``known`` list plus any other usable folder found is
    used; documented names that are absent come back as ``missing``.
    """
    present = subdirs(where)
    if explicit is not None:
        names = [str(n) for n in explicit]
        absent = [n for n in names if n not in present]
        if absent:
            raise UserError(
                f"data.{what}: {len(absent)} not found under {where}: {', '.join(absent)} "
                f"(found: {', '.join(present) or 'nothing'})"
            )
        if not names:
            raise UserError(f"data.{what} is empty; name at least one of {', '.join(present)}")
        return names, []
    extra = [p for p in present if p not in known and usable(p)]
    chosen = [k for k in known if k in present] + extra
    missing = [k for k in known if k not in present]
    if not chosen:
        raise UserError(
            f"none of the {len(known)} {what} ({', '.join(known)}) is under {where}; check data.root"
        )
    return chosen, missing


def has_class_dirs(folder: Path, depth: int = 2) -> bool:
    names = subdirs(folder)
    if any(n in CLASS_DIRS for n in names):
        return True
    return depth > 1 and any(has_class_dirs(folder / n, depth - 1) for n in names)


def image_records(
    folder: Path,
    label: int,
    root: Path,
    generator: str | None,
    extra: dict[str, Any],
    keep: Callable[[str], bool] | None = None,
) -> list[Record]:
    """Records for every image below ``folder`` (an error if it is missing or holds none)."""
    if not folder.is_dir():
        raise UserError(f"folder {folder} does not exist; check data.root and the download")
    paths = list_images(folder)
    if not paths:
        raise UserError(f"{folder} holds no images (0 files with an image suffix)")
    out = []
    for path in paths:
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        if keep is not None and not keep(rel):
            continue
        out.append(
            Record(
                str(path),
                label,
                generator="real" if label == REAL else (generator or "fake"),
                source=rel,
                extra=dict(extra),
            )
        )
    return out


def class_tree_records(
    base: Path, root: Path, generator: str, extra: dict[str, Any]
) -> list[Record]:
    """Records from ``base/[<class>/]{0_real,1_fake}`` (the CNNDetection convention).

    ``extra["class"]`` names the ``<class>`` level when there is one. Every class folder
    must hold images.
    """
    if not base.is_dir():
        raise UserError(f"folder {base} does not exist; check data.root and the download")
    class_dirs = sorted(p for p in base.rglob("*") if p.is_dir() and p.name in CLASS_DIRS)
    if not class_dirs:
        raise UserError(f"no 0_real or 1_fake folders under {base}")
    empty = [d for d in class_dirs if not list_images(d)]
    if empty:
        raise UserError(
            f"{len(empty)} of {len(class_dirs)} class folders under {base} hold no images (first: {empty[0]})"
        )
    records: list[Record] = []
    for class_dir in class_dirs:
        parts = class_dir.relative_to(base).parts
        meta = dict(extra)
        if len(parts) > 1:
            meta["class"] = "/".join(parts[:-1])
        records.extend(image_records(class_dir, CLASS_DIRS[class_dir.name], root, generator, meta))
    return records


class ImageSource:
    """Base of the image benchmarks: split checks, the ``reencode`` option, missing lists."""

    name = "images"
    splits: tuple[str, ...] = SPLITS
    split_note = ""
    layout_hint = "the benchmark's folders"

    def __init__(self, root: str | None, reencode: str | None = None, name: str | None = None):
        self.root = Path(root).expanduser() if root else None
        parse_reencode(reencode)
        self.reencode = None if parse_reencode(reencode) is None else str(reencode)
        if name:
            self.name = name
        self._missing: dict[str, list[str]] = {}
        self._warned: set[tuple[str, str]] = set()

    def _records(self, split: str) -> list[Record]:
        raise NotImplementedError

    def records(self, split: str) -> list[Record]:
        check_split(split, self.splits, self.name, self.split_note)
        self._require_root()
        self._missing[split] = []
        records = self._records(split)
        if not records:
            raise UserError(f"data {self.name!r}: no images in split {split!r} under {self.root}")
        return records

    def missing(self, split: str) -> list[str]:
        """Folders or files that ``split`` should have (documented layout) but ``root`` lacks."""
        if split not in self._missing:
            self.records(split)
        return list(self._missing[split])

    def _extra(self, **values: Any) -> dict[str, Any]:
        if self.reencode is not None:
            values["reencode"] = self.reencode
        return values

    def _note_missing(self, split: str, paths: Iterable[str | Path], what: str) -> None:
        paths = [str(p) for p in paths]
        if not paths:
            return
        self._missing.setdefault(split, []).extend(paths)
        if (split, what) not in self._warned:
            self._warned.add((split, what))
            log.warning(
                "%s/%s: %d %s missing (first: %s); list them with python -m datasets.summary data=%s",
                self.name,
                split,
                len(paths),
                what,
                paths[0],
                self.name,
            )

    def _require_root(self) -> Path:
        if self.root is None or not self.root.is_dir():
            raise UserError(
                f"data.root={self.root} is not a folder; pass data.root=<folder holding {self.layout_hint}>"
            )
        return self.root


# ---------------------------------------------------------------------------------------
# ForenSynths / CNNDetection and AIGCDetectBenchmark
# ---------------------------------------------------------------------------------------

LSUN_CLASSES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
FORENSYNTHS_TEST = (
    "progan", "stylegan", "stylegan2", "biggan", "cyclegan", "stargan", "gaugan",
    "deepfake", "whichfaceisreal", "crn", "imle", "san", "seeingdark",
)  # fmt: skip
AIGCDETECT_TEST = (
    "progan", "stylegan", "biggan", "cyclegan", "stargan", "gaugan", "stylegan2",
    "whichfaceisreal", "ADM", "Glide", "Midjourney", "stable_diffusion_v_1_4",
    "stable_diffusion_v_1_5", "VQDM", "wukong", "DALLE2",
)  # fmt: skip


class ForenSynths(ImageSource):
    """ForenSynths, the CNNDetection benchmark.

    Wang, Wang, Zhang, Owens and Efros, "CNN-generated images are surprisingly easy to
    spot... for now", CVPR 2020; download scripts at
    https://github.com/peterwang512/CNNDetection (``download_trainset.sh``,
    ``download_testset.sh``). Layout under ``root``::

        train/<class>/{0_real,1_fake}/     20 LSUN classes of ProGAN (train_classes)
        val/<class>/{0_real,1_fake}/
        test/<generator>/[<class>/]{0_real,1_fake}/   13 generators (test_generators)

    Config (``configs/data/forensynths.yaml``): ``root``, ``train_classes`` (``null``:
    all 20; the common 4-class setting is ``[car, cat, chair, horse]``),
    ``test_generators`` (``null``: the 13 documented plus any other generator folder
    found), ``reencode``. Train and val fakes have ``generator="progan"``;
    ``extra["class"]`` is the LSUN / sub-set class.
    """

    name = "forensynths"
    layout_hint = "train/, val/ and test/"
    known_test: tuple[str, ...] = FORENSYNTHS_TEST
    train_generator = "progan"

    def __init__(
        self,
        root: str | None,
        train_classes: Sequence[str] | None = None,
        test_generators: Sequence[str] | None = None,
        reencode: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, reencode, name)
        self.train_classes = None if train_classes is None else [str(c) for c in train_classes]
        self.test_generators = (
            None if test_generators is None else [str(g) for g in test_generators]
        )

    def _records(self, split: str) -> list[Record]:
        assert self.root is not None
        base = self.root / split
        if not base.is_dir():
            raise UserError(
                f"split folder {base} does not exist; expected {self.layout_for(split)}"
            )
        if split == "test":
            names, missing = select_generators(
                self.test_generators,
                self.known_test,
                base,
                "test_generators",
                lambda n: has_class_dirs(base / n),
            )
            self._note_missing(split, (base / n for n in missing), "test generators")
            return [
                r
                for g in names
                for r in class_tree_records(base / g, self.root, g, self._extra(group=g))
            ]
        classes, missing = select_generators(
            self.train_classes,
            LSUN_CLASSES,
            base,
            "train_classes",
            lambda n: has_class_dirs(base / n, 1),
        )
        self._note_missing(split, (base / c for c in missing), "classes")
        g = self.train_generator
        return [
            r
            for c in classes
            for r in class_tree_records(
                base / c, self.root, g, self._extra(group=g, **{"class": c})
            )
        ]

    def layout_for(self, split: str) -> str:
        if split == "test":
            return f"{self.root}/test/<generator>/[<class>/]0_real|1_fake"
        return f"{self.root}/{split}/<class>/0_real|1_fake (the ProGAN set of CNNDetection)"


class AIGCDetectBenchmark(ForenSynths):
    """AIGCDetectBenchmark: 16 test generators (GANs and diffusion) over CNNDetection's training set.

    Zhong, Xu, Qian and Zhang, "PatchCraft: Exploring Texture Patch for Efficient
    AI-generated Image Detection" (also titled "Rich and Poor Texture Contrast"),
    arXiv:2311.12397, 2023; code and download links at
    https://github.com/Ekko-zn/AIGCDetectBenchmark. Layout under ``root``::

        test/<generator>/[<class>/]{0_real,1_fake}/   progan ... DALLE2 (16 folders)
        train/<class>/{0_real,1_fake}/, val/...       optional: the ForenSynths ProGAN set

    Config (``configs/data/aigcdetect.yaml``): as :class:`ForenSynths`.
    """

    name = "aigcdetect"
    known_test = AIGCDETECT_TEST


# ---------------------------------------------------------------------------------------
# GenImage
# ---------------------------------------------------------------------------------------

GENIMAGE_GENERATORS = (
    "ADM", "BigGAN", "glide", "Midjourney", "stable_diffusion_v_1_4",
    "stable_diffusion_v_1_5", "VQDM", "wukong",
)  # fmt: skip
GENIMAGE_CLASSES = {"nature": REAL, "ai": FAKE}


class GenImage(ImageSource):
    """GenImage: ImageNet-class images of eight generators.

    Zhu et al., "GenImage: A Million-Scale Benchmark for Detecting AI-Generated Image",
    NeurIPS 2023 Datasets and Benchmarks; download links at
    https://github.com/GenImage-Dataset/GenImage. Layout under ``root``::

        <generator>/<subset>/{train,val}/{ai,nature}/
        e.g. stable_diffusion_v_1_4/imagenet_ai_0419_sdv4/train/ai/...

    (``<generator>/{train,val}/...`` without the ``<subset>`` level works too.)
    GenImage has no test split; its ``val`` folders serve as test. Mapping:

    * ``train``: ``<g>/*/train`` of ``train_generators``, minus the ``val`` slice;
    * ``val``: a deterministic crc32 slice (``val_fraction``, by file path) of those
      same ``train`` folders, for model selection;
    * ``test``: ``<g>/*/val`` of ``test_generators`` (``null``: every generator found).

    Config (``configs/data/genimage.yaml``): ``root``, ``train_generators`` (default
    ``[stable_diffusion_v_1_4]``, the paper's protocol), ``test_generators``,
    ``val_fraction`` (default 0.02), ``reencode`` (reals are JPEG, fakes PNG: consider
    ``jpeg95``). ``extra["subset"]`` names the ``<subset>`` folder.
    """

    name = "genimage"
    layout_hint = "<generator>/<subset>/{train,val}/{ai,nature}"

    def __init__(
        self,
        root: str | None,
        train_generators: Sequence[str] = ("stable_diffusion_v_1_4",),
        test_generators: Sequence[str] | None = None,
        val_fraction: float = 0.02,
        reencode: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, reencode, name)
        self.train_generators = [str(g) for g in train_generators]
        self.test_generators = (
            None if test_generators is None else [str(g) for g in test_generators]
        )
        if not 0 < float(val_fraction) < 1:
            raise UserError(f"data.val_fraction={val_fraction} must be in (0, 1)")
        self.val_fraction = float(val_fraction)

    def split_dirs(self, generator: str, folder: str) -> list[tuple[str, Path]]:
        """``(subset, <root>/<generator>/[<subset>/]<folder>)`` pairs that exist."""
        assert self.root is not None
        gen_dir = self.root / generator
        if (gen_dir / folder).is_dir():
            return [("", gen_dir / folder)]
        return [
            (s, gen_dir / s / folder) for s in subdirs(gen_dir) if (gen_dir / s / folder).is_dir()
        ]

    def _records(self, split: str) -> list[Record]:
        assert self.root is not None
        if split == "test":
            names, missing = select_generators(
                self.test_generators,
                GENIMAGE_GENERATORS,
                self.root,
                "test_generators",
                lambda n: bool(self.split_dirs(n, "val")),
            )
            self._note_missing(split, (self.root / n for n in missing), "generators")
            folder = "val"
            keep = None
        else:
            names, _ = select_generators(
                self.train_generators, GENIMAGE_GENERATORS, self.root, "train_generators"
            )
            folder = "train"
            in_val = split == "val"

            def keep(rel: str) -> bool:
                return (bucket(rel) < self.val_fraction) == in_val

        records: list[Record] = []
        for g in names:
            dirs = self.split_dirs(g, folder)
            if not dirs:
                raise UserError(
                    f"no {folder}/ folder under {self.root / g} (expected {g}/<subset>/{folder}/ai and nature)"
                )
            for subset, d in dirs:
                for cls, label in GENIMAGE_CLASSES.items():
                    records.extend(
                        image_records(
                            d / cls, label, self.root, g, self._extra(group=g, subset=subset), keep
                        )
                    )
        return records


# ---------------------------------------------------------------------------------------
# UniversalFakeDetect diffusion sets
# ---------------------------------------------------------------------------------------

UNIVFD_REAL_OF = {
    "dalle": "laion",
    "glide_100_10": "laion",
    "glide_100_27": "laion",
    "glide_50_27": "laion",
    "guided": "imagenet",
    "ldm_100": "laion",
    "ldm_200": "laion",
    "ldm_200_cfg": "laion",
}


class UnivFDDiffusion(ImageSource):
    """The diffusion test sets of UniversalFakeDetect (test only).

    Ojha, Li and Lee, "Towards Universal Fake Image Detectors that Generalize Across
    Generative Models", CVPR 2023; ``diffusion_datasets.zip`` linked from
    https://github.com/Yuheng-Li/UniversalFakeDetect. Layout under ``root`` (the
    ``diffusion_datasets`` folder)::

        <generator>/1_fake/   dalle, glide_100_10, glide_100_27, glide_50_27, guided,
                              ldm_100, ldm_200, ldm_200_cfg
        laion/0_real/         reals of every generator but guided
        imagenet/0_real/      reals of guided (ADM)

    The test split holds the fakes of ``generators`` (``null``: all eight) and each
    real set they use, once (``extra["group"]`` is ``laion`` or ``imagenet``).
    Config (``configs/data/univfd_diffusion.yaml``): ``root``, ``generators``,
    ``reencode``. Train on ``data=forensynths`` (ProGAN), as the paper does.
    """

    name = "univfd_diffusion"
    layout_hint = "<generator>/1_fake and laion/0_real, imagenet/0_real"
    splits = ("test",)
    split_note = " (a test-only benchmark: train on data=forensynths)"

    def __init__(
        self,
        root: str | None,
        generators: Sequence[str] | None = None,
        reencode: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, reencode, name)
        self.generators = None if generators is None else [str(g) for g in generators]
        unknown = [g for g in self.generators or [] if g not in UNIVFD_REAL_OF]
        if unknown:
            raise UserError(
                f"data.generators: {', '.join(unknown)} unknown; UnivFD diffusion sets: {', '.join(UNIVFD_REAL_OF)}"
            )

    def _records(self, split: str) -> list[Record]:
        assert self.root is not None
        names, missing = select_generators(
            self.generators,
            tuple(UNIVFD_REAL_OF),
            self.root,
            "generators",
            lambda n: False,
        )
        self._note_missing(split, (self.root / n for n in missing), "generators")
        records: list[Record] = []
        for real_set in sorted({UNIVFD_REAL_OF[g] for g in names}):
            records.extend(
                image_records(
                    self.root / real_set / "0_real",
                    REAL,
                    self.root,
                    None,
                    self._extra(group=real_set),
                )
            )
        for g in names:
            records.extend(
                image_records(
                    self.root / g / "1_fake",
                    FAKE,
                    self.root,
                    g,
                    self._extra(group=g, real_set=UNIVFD_REAL_OF[g]),
                )
            )
        return records


# ---------------------------------------------------------------------------------------
# DiffusionForensics (DIRE)
# ---------------------------------------------------------------------------------------


class DiffusionForensics(ImageSource):
    """DiffusionForensics, the benchmark of DIRE.

    Wang, Bao, Zhou, Wang, Hu, Chen and Li, "DIRE for Diffusion-Generated Image
    Detection", ICCV 2023; download links at https://github.com/ZhendongWang6/DIRE.
    Layout under ``root``::

        {images,recons,dire}/<split>/<domain>/<generator>/   split: train, val, test
        {images,recons,dire}/<split>/<domain>/real/          domain: lsun_bedroom, imagenet, celebahq

    ``variant`` picks ``images`` (default), ``recons`` or ``dire``; when ``root`` holds
    the split folders itself, the variant level is skipped. ``train`` and ``val`` hold
    the reals of each domain plus the fakes of ``train_generators`` (default ``[adm]``,
    DIRE's LSUN-Bedroom setting); ``test`` the reals plus ``test_generators`` (``null``:
    every generator folder). Config (``configs/data/diffusionforensics.yaml``):
    ``root``, ``variant``, ``domains`` (``null``: all), ``train_generators``,
    ``test_generators``, ``reencode`` (reals are JPEG / PNG depending on the domain,
    fakes PNG). ``extra["domain"]`` names the domain.
    """

    name = "diffusionforensics"
    layout_hint = "images/<split>/<domain>/<generator>/ (and <domain>/real/)"
    real_folder = "real"

    def __init__(
        self,
        root: str | None,
        variant: str = "images",
        domains: Sequence[str] | None = None,
        train_generators: Sequence[str] = ("adm",),
        test_generators: Sequence[str] | None = None,
        reencode: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, reencode, name)
        if variant not in ("images", "recons", "dire"):
            raise UserError(f"data.variant={variant!r}: use images, recons or dire")
        self.variant = variant
        self.domains = None if domains is None else [str(d) for d in domains]
        self.train_generators = [str(g) for g in train_generators]
        self.test_generators = (
            None if test_generators is None else [str(g) for g in test_generators]
        )

    @property
    def base(self) -> Path:
        assert self.root is not None
        return self.root / self.variant if (self.root / self.variant).is_dir() else self.root

    def _records(self, split: str) -> list[Record]:
        assert self.root is not None
        split_dir = self.base / split
        if not split_dir.is_dir():
            raise UserError(
                f"split folder {split_dir} does not exist; expected {self.base}/{split}/<domain>/<generator>/"
            )
        domains = self.domains if self.domains is not None else subdirs(split_dir)
        if not domains:
            raise UserError(f"no domain folders under {split_dir}; expected <domain>/<generator>/")
        absent = [d for d in domains if not (split_dir / d).is_dir()]
        if absent:
            raise UserError(
                f"data.domains: {len(absent)} not under {split_dir}: {', '.join(absent)} "
                f"(found: {', '.join(subdirs(split_dir))})"
            )
        wanted = self.test_generators if split == "test" else self.train_generators
        records: list[Record] = []
        found: set[str] = set()
        missing_reals = []
        for d in domains:
            present = [g for g in subdirs(split_dir / d) if g != self.real_folder]
            gens = present if wanted is None else [g for g in wanted if g in present]
            found.update(gens)
            if not gens:
                continue
            real_dir = split_dir / d / self.real_folder
            if real_dir.is_dir():
                records.extend(
                    image_records(real_dir, REAL, self.root, None, self._extra(group=d, domain=d))
                )
            else:
                missing_reals.append(real_dir)
            for g in gens:
                records.extend(
                    image_records(
                        split_dir / d / g, FAKE, self.root, g, self._extra(group=g, domain=d)
                    )
                )
        if wanted is not None and set(wanted) - found:
            what = "test_generators" if split == "test" else "train_generators"
            lost = sorted(set(wanted) - found)
            raise UserError(
                f"data.{what}: {len(lost)} not in any domain under {split_dir}: {', '.join(lost)}"
            )
        self._note_missing(split, missing_reals, "real folders")
        return records


# ---------------------------------------------------------------------------------------
# Synthbuster
# ---------------------------------------------------------------------------------------

SYNTHBUSTER_GENERATORS = (
    "dalle2", "dalle3", "firefly", "glide", "midjourney-v5", "stable-diffusion-1-3",
    "stable-diffusion-1-4", "stable-diffusion-2", "stable-diffusion-xl",
)  # fmt: skip


class Synthbuster(ImageSource):
    """Synthbuster: nine text-to-image generators prompted with RAISE-1k descriptions (test only).

    Bammey, "Synthbuster: Towards Detection of Diffusion Model Generated Images", IEEE
    Open Journal of Signal Processing, 2023; download at
    https://zenodo.org/records/10066460. The reals are the RAISE-1k photographs
    (Dang-Nguyen et al., MMSys 2015, http://loki.disi.unitn.it/RAISE/), downloaded
    separately. Layout::

        <root>/<generator>/<raise id>.png    dalle2, dalle3, firefly, glide, midjourney-v5,
                                             stable-diffusion-1-3, -1-4, -2, -xl
        <real_root>/**/<raise id>.<ext>      RAISE-1k (TIFF or converted; any image suffix)

    Config (``configs/data/synthbuster.yaml``): ``root``, ``real_root`` (required:
    Synthbuster ships no reals), ``generators`` (``null``: all nine), ``reencode``.
    :meth:`missing` lists the RAISE ids the fakes were made from that ``real_root``
    lacks.
    """

    name = "synthbuster"
    layout_hint = "<generator>/*.png"
    splits = ("test",)
    split_note = " (a test-only benchmark)"

    def __init__(
        self,
        root: str | None,
        real_root: str | None = None,
        generators: Sequence[str] | None = None,
        reencode: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, reencode, name)
        self.real_root = Path(real_root).expanduser() if real_root else None
        self.generators = None if generators is None else [str(g) for g in generators]

    def _records(self, split: str) -> list[Record]:
        assert self.root is not None
        if self.real_root is None or not self.real_root.is_dir():
            raise UserError(
                f"data.real_root={self.real_root} is not a folder; Synthbuster ships no reals: "
                "download RAISE-1k (http://loki.disi.unitn.it/RAISE/) and pass data.real_root=<its folder>"
            )
        names, missing = select_generators(
            self.generators,
            SYNTHBUSTER_GENERATORS,
            self.root,
            "generators",
            lambda n: False,
        )
        self._note_missing(split, (self.root / n for n in missing), "generators")
        fakes: list[Record] = []
        for g in names:
            fakes.extend(image_records(self.root / g, FAKE, self.root, g, self._extra(group=g)))
        reals = image_records(
            self.real_root, REAL, self.real_root, None, self._extra(group="raise")
        )
        have = {Path(r.path).stem.lower() for r in reals}
        wanted = sorted({Path(r.path).stem for r in fakes if Path(r.path).stem.lower() not in have})
        self._note_missing(
            split, (self.real_root / f"{stem}.*" for stem in wanted), "RAISE-1k reals"
        )
        return reals + fakes

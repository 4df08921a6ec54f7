"""FaceForensics++ and DeepFakeDetection as face-crop caches, and the base of every video source.

**FaceForensics++** (``data=ffpp``): Rössler, Cozzolino, Verdoliva, Riess, Thies and
Nießner, "FaceForensics++: Learning to Detect Manipulated Facial Images", ICCV 2019.
Access is granted on request at https://github.com/ondyari/FaceForensics (its
``download-FaceForensics.py`` script, ``-c raw|c23|c40``); the official splits are
``dataset/splits/{train,val,test}.json`` in that repository (MIT licence). Layout
under ``root``::

    original_sequences/youtube/<c>/videos/000.mp4 ...                     (1000 reals)
    original_sequences/actors/<c>/videos/01__exit_phone_room.mp4 ...      (DFD reals)
    manipulated_sequences/<method>/<c>/videos/000_003.mp4 ...             (fakes)
    manipulated_sequences/<method>/masks/videos/000_003.mp4 ...           (masks)
    splits/{train,val,test}.json                                          (data.splits_dir)

with ``<c>`` one of ``raw`` (alias ``c0``), ``c23``, ``c40``. Each split file is a list
of id pairs ``[a, b]``; a pair gives the reals ``a`` and ``b`` and, per method, the
fakes ``a_b`` (face of ``b`` in video ``a``) and ``b_a``: 720/140/140 fakes per
method and as many reals.

**DeepFakeDetection** (``data=dfd``): Dufour and Gully (Google / Jigsaw), "Contributing
Data to Deepfake Detection Research", 2019, shipped with the FaceForensics++
download (``-d DeepFakeDetection DeepFakeDetection_original``): reals in
``original_sequences/actors/<c>/videos`` (``<actor>__<scene>.mp4``), fakes in
``manipulated_sequences/DeepFakeDetection/<c>/videos``
(``<actor>_<actor>__<scene>__<code>.mp4``). It has no official split; see
:class:`DeepFakeDetection` for the two protocols offered.

**Face-crop caches.** Training never decodes video. ``python -m datasets.preprocess``
writes the face crops of a video ``<root>/<rel>.mp4`` to
``<crops_root>/<rel>/<frame>.png`` (``<frame>_<k>.png`` for the ``k``-th further face
when every face is kept), its 68 landmarks in crop pixels beside it
(``<frame>.npy``), FF++ mask crops under the mask video's own folder with the same
names, and one line per frame to ``<crops_root>/index.jsonl``.
:meth:`VideoCropSource.records` reads them back, one :class:`~deepsift.core.records.Record`
per face crop, from the index when the cache has one (videos it does not list are
scanned), from the folders otherwise. :class:`VideoCropSource` is the base of every
video benchmark (FF++, DFD, Celeb-DF, DFDC, DFDC preview).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets.crop_cache import VideoCropSource, VideoItem
from deepsift.core.errors import UserError
from deepsift.core.records import FAKE, REAL

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# FaceForensics++
# ---------------------------------------------------------------------------------------

FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
CLASSIC_METHODS = FFPP_METHODS[:4]
COMPRESSIONS = {"raw": "raw", "c0": "raw", "c23": "c23", "c40": "c40"}
SPLITS_URL = "https://github.com/ondyari/FaceForensics/tree/master/dataset/splits"


def _compression(value: Any) -> str:
    key = str(value).lower()
    if key not in COMPRESSIONS:
        raise UserError(
            f"data.compression={value!r} is not a FaceForensics++ level; use raw (alias c0), c23 or c40"
        )
    return COMPRESSIONS[key]


class FaceForensics(VideoCropSource):
    """FaceForensics++ videos per the official splits, read as face crops (see the module doc).

    Config (``configs/data/ffpp.yaml``): ``root``, ``crops_root``, ``splits_dir``
    (default ``<root>/splits``), ``methods`` (default the four classic ones; also
    ``FaceShifter``), ``compression`` (``raw``/``c0``, ``c23``, ``c40``),
    ``include_real``, ``max_frames``. ``Record.extra["method_label"]`` is 0 for reals
    and ``1 + i`` for ``methods[i]`` (see :attr:`method_labels`), for multi-class
    training; ``Record.extra["mask"]`` is the frame's mask crop when the cache has it.
    """

    name = "ffpp"
    layout_hint = "original_sequences/ and manipulated_sequences/"

    def __init__(
        self,
        root: str | None,
        crops_root: str | None = None,
        splits_dir: str | None = None,
        methods: Sequence[str] = CLASSIC_METHODS,
        compression: str = "c23",
        include_real: bool = True,
        max_frames: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, crops_root, max_frames, name)
        self.splits_dir = (
            Path(splits_dir).expanduser()
            if splits_dir
            else (self.root / "splits" if self.root else None)
        )
        self.methods = [str(m) for m in methods]
        if "DeepFakeDetection" in self.methods:
            raise UserError(
                "DeepFakeDetection has no FF++ id pairs and no official split: use data=dfd, not data.methods"
            )
        unknown = [m for m in self.methods if m not in FFPP_METHODS]
        if unknown or not self.methods:
            raise UserError(
                f"data.methods={self.methods}: unknown or empty; FaceForensics++ methods: {', '.join(FFPP_METHODS)}"
            )
        self.compression = _compression(compression)
        self.include_real = bool(include_real)

    @property
    def method_labels(self) -> dict[str, int]:
        """Class index per method for multi-class training: ``real`` is 0."""
        return {"real": 0, **{m: i for i, m in enumerate(self.methods, 1)}}

    def split_file(self, split: str) -> Path:
        assert self.splits_dir is not None
        return self.splits_dir / f"{split}.json"

    def pairs(self, split: str) -> list[tuple[str, str]]:
        """The ``[a, b]`` id pairs of the official ``<split>.json``."""
        path = self.split_file(split)
        if not path.is_file():
            raise UserError(
                f"FaceForensics++ split file {path} not found; put the official train/val/test.json "
                f"({SPLITS_URL}) in data.splits_dir"
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path} is not valid JSON ({exc}); re-download it from {SPLITS_URL}"
            ) from None
        bad = [
            i
            for i, p in enumerate(raw if isinstance(raw, list) else [])
            if not (isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p))
        ]
        if not isinstance(raw, list) or bad:
            raise UserError(
                f"{path}: expected a list of [id, id] string pairs; {len(bad) if bad else 'top level'} bad "
                f"entries (first at index {bad[0] if bad else '-'}); re-download it from {SPLITS_URL}"
            )
        return [(a, b) for a, b in raw]

    def _list_videos(self, split: str) -> list[VideoItem]:
        c = self.compression
        pairs = self.pairs(split)
        items: list[VideoItem] = []
        if self.include_real:
            for vid in sorted({x for pair in pairs for x in pair}):
                items.append(
                    self._item(
                        f"original_sequences/youtube/{c}/videos/{vid}.mp4",
                        REAL,
                        "real",
                        f"youtube/{vid}",
                        method_label=0,
                        compression=c,
                    )
                )
        for index, method in enumerate(self.methods, 1):
            for a, b in pairs:
                for target, donor in ((a, b), (b, a)):
                    vid = f"{target}_{donor}"
                    items.append(
                        self._item(
                            f"manipulated_sequences/{method}/{c}/videos/{vid}.mp4",
                            FAKE,
                            method,
                            f"{method}/{vid}",
                            f"youtube/{target}",
                            method_label=index,
                            compression=c,
                            mask_rel=f"manipulated_sequences/{method}/masks/videos/{vid}.mp4",
                        )
                    )
        return items


# ---------------------------------------------------------------------------------------
# DeepFakeDetection
# ---------------------------------------------------------------------------------------

DFD_REAL = re.compile(r"^(\d+)__(.+)$")
DFD_FAKE = re.compile(r"^(\d+)_(\d+)__(.+?)__([^_]+)$")


def _actor_set(values: Iterable[Any], what: str) -> set[int]:
    try:
        return {int(v) for v in values}
    except (TypeError, ValueError):
        raise UserError(
            f"data.{what}={list(values)}: actor ids are numbers like 01 or 21"
        ) from None


class DeepFakeDetection(VideoCropSource):
    """Google/Jigsaw's DeepFakeDetection (inside the FF++ download), read as face crops.

    DFD has no official split. ``protocol``:

    * ``test`` (default): every video is in ``test`` (the usual cross-dataset use);
      ``train`` and ``val`` do not exist.
    * ``actors``: a deterministic split by actor id. Actors in ``val_actors`` go to
      ``val``, those in ``test_actors`` to ``test``, the rest to ``train``; a fake
      (``<a>_<b>__...``) goes to a split only when both its actors belong to it, and
      is left out otherwise (counted in the log), so no face crosses splits.

    Config (``configs/data/dfd.yaml``): ``root`` (the FF++ root), ``crops_root``,
    ``compression``, ``protocol``, ``val_actors``, ``test_actors``, ``include_real``,
    ``max_frames``. A fake's ``source_id`` is ``actors/<a>__<scene>``, taking the first
    actor id as the target, as in FF++'s ``a_b`` naming.
    """

    name = "dfd"
    layout_hint = "original_sequences/actors/ and manipulated_sequences/DeepFakeDetection/"

    def __init__(
        self,
        root: str | None,
        crops_root: str | None = None,
        compression: str = "c23",
        protocol: str = "test",
        val_actors: Sequence[Any] = (19, 20, 21, 22),
        test_actors: Sequence[Any] = (23, 24, 25, 26, 27, 28),
        include_real: bool = True,
        max_frames: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(root, crops_root, max_frames, name)
        self.compression = _compression(compression)
        if protocol not in ("test", "actors"):
            raise UserError(f"data.protocol={protocol!r}: use test (all videos in test) or actors")
        self.protocol = protocol
        self.val_actors = _actor_set(val_actors, "val_actors")
        self.test_actors = _actor_set(test_actors, "test_actors")
        overlap = self.val_actors & self.test_actors
        if overlap:
            raise UserError(
                f"actors {sorted(overlap)} are in both data.val_actors and data.test_actors"
            )
        self.include_real = bool(include_real)
        if protocol == "test":
            self.splits = ("test",)
            self.split_note = " (data.protocol=test puts every video in test; data.protocol=actors splits by actor)"
        self.dropped: dict[str, int] = {}

    def _actor_split(self, actor: int) -> str:
        if actor in self.test_actors:
            return "test"
        return "val" if actor in self.val_actors else "train"

    def _list_videos(self, split: str) -> list[VideoItem]:
        c = self.compression
        reals = (
            self._list_video_files(f"original_sequences/actors/{c}/videos")
            if self.include_real
            else []
        )
        fakes = self._list_video_files(f"manipulated_sequences/DeepFakeDetection/{c}/videos")
        items: list[VideoItem] = []
        dropped = unparsed = 0
        for rel in reals:
            stem = Path(rel).stem
            m = DFD_REAL.match(stem)
            if self.protocol == "actors":
                if not m:
                    unparsed += 1
                    continue
                if self._actor_split(int(m.group(1))) != split:
                    continue
            items.append(self._item(rel, REAL, "real", f"actors/{stem}", compression=c))
        for rel in fakes:
            stem = Path(rel).stem
            m = DFD_FAKE.match(stem)
            if self.protocol == "actors":
                if not m:
                    unparsed += 1
                    continue
                where = {self._actor_split(int(m.group(1))), self._actor_split(int(m.group(2)))}
                if where != {split}:
                    dropped += split in where
                    continue
            source = f"actors/{m.group(1)}__{m.group(3)}" if m else None
            items.append(
                self._item(
                    rel,
                    FAKE,
                    "DeepFakeDetection",
                    f"DeepFakeDetection/{stem}",
                    source,
                    compression=c,
                    mask_rel=f"manipulated_sequences/DeepFakeDetection/masks/videos/{stem}.mp4",
                )
            )
        self.dropped[split] = dropped
        if dropped or unparsed:
            log.info(
                "dfd/%s: %d fakes left out (their two actors are in different splits); "
                "%d videos with names not of the form <actor>__<scene> / <a>_<b>__<scene>__<code> left out",
                split,
                dropped,
                unparsed,
            )
        return items

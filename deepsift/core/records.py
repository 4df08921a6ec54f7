"""Records, the torch dataset over them, and the collate function that skips bad files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from deepsift.core.images import load_rgb
from deepsift.core.inference import shape_key
from deepsift.core.reencode import reencode

log = logging.getLogger(__name__)

REAL, FAKE = 0, 1

#: ``Record.extra`` key of a clip record (:mod:`datasets.clips`): the paths of its T face
#: crops, which :class:`RecordDataset` reads into ``sample["frames"]``
CLIP_FRAMES = "clip_frames"
#: ... and of the T mouth crops of those frames (lip-motion detectors), read into
#: ``sample["mouth_frames"]``
CLIP_MOUTHS = "clip_mouths"


@dataclass(frozen=True)
class Record:
    """One image (or one video frame) of a benchmark.

    ``label`` is 0 for real and 1 for fake. ``video`` groups frames of one video
    for video-level metrics; ``generator`` names the generator or manipulation
    method of a fake (``"real"`` for reals) for per-generator metrics; ``source``
    names what the image was cut from (photo or video id). ``extra`` carries
    auxiliary files (mask, landmarks) as paths or small values.
    """

    path: str
    label: int
    video: str | None = None
    generator: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DataSource(Protocol):
    """What every ``configs/data`` target provides."""

    name: str

    def records(self, split: str) -> list[Record]:
        """All records of ``split`` (``train``, ``val`` or ``test``)."""
        ...


class RecordDataset(Dataset):
    """Reads records and applies a detector's transform.

    A file that cannot be read does not stop the run: the sample comes back as
    ``{"error": ..., "path": ...}`` and :func:`collate_samples` drops it from the
    batch and reports it, so the engine can log and count it.

    ``perturb`` (robustness sweeps, see :mod:`deepsift.core.perturb`) is called as
    ``perturb(image, record.path)`` on every image after loading and ``reencode``,
    before ``transform``: the same degradation for reals and fakes.
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Callable[[dict], dict],
        perturb: Callable[[Image.Image, str], Image.Image] | None = None,
    ):
        self.records = list(records)
        self.transform = transform
        self.perturb = perturb

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            if CLIP_FRAMES in record.extra:
                sample = {"frames": self._clip(record), "label": record.label, "record": record}
                if CLIP_MOUTHS in record.extra:
                    sample["mouth_frames"] = self._clip(record, CLIP_MOUTHS)
            else:
                sample = {"image": self._image(record.path, record), "label": record.label}
                sample["record"] = record
            sample["index"] = index
            out = self.transform(sample)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "path": record.path, "index": index}
        out["label"] = torch.tensor(float(record.label))
        out["index"] = torch.tensor(index)
        return out

    def _image(self, path: str, record: Record) -> Image.Image:
        image = reencode(load_rgb(path), record.extra.get("reencode"))
        return self.perturb(image, path) if self.perturb is not None else image

    def _clip(self, record: Record, key: str = CLIP_FRAMES) -> list[Image.Image]:
        """The T crops of a clip record (face crops, or mouth crops with ``CLIP_MOUTHS``); a
        missing or unreadable one skips the whole clip."""
        frames = []
        for path in record.extra[key]:
            try:
                frames.append(self._image(path, record))
            except (OSError, UnidentifiedImageError) as exc:
                raise OSError(
                    f"clip of video {record.video}: frame {path} is missing or unreadable "
                    f"({type(exc).__name__}); re-run python -m datasets.preprocess for this "
                    "video (overwrite=true) to rebuild its crops"
                ) from exc
        return frames


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack good samples; put unreadable ones under ``batch["errors"]`` as (path, reason)."""
    good = [s for s in samples if "error" not in s]
    errors = [(s["path"], s["error"]) for s in samples if "error" in s]
    batch: dict[str, Any] = default_collate(good) if good else {}
    batch["errors"] = errors
    return batch


def collate_by_shape(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`collate_samples` for inference: ``{"batches": [...], "errors": [...]}``, one
    stacked batch per tensor shape, so images kept at their native size need not match."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for sample in samples:
        if "error" not in sample:
            groups.setdefault(shape_key(sample), []).append(sample)
    errors = [(s["path"], s["error"]) for s in samples if "error" in s]
    return {"batches": [default_collate(group) for group in groups.values()], "errors": errors}

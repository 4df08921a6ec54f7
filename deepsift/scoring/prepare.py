"""Everything done to one item before the model sees it (runs in the worker processes).

read the bytes -> sha256 -> image or video (by content) -> decode -> provenance and
PDQ -> face crops (for face detectors) -> laundered copies (``--stability``) ->
each ensemble member's own test-time transform -> tensors stacked per member.
A clip detector's video is read as ``--clips`` windows of one clip span instead, its
faces tracked through each window (:func:`_prepare_clips`).

The result, :class:`Prepared`, holds a partial record plus small tensors only
(never the decoded image), so the queues between workers and the model stay
small whatever the size of the input files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from datasets.faces import CropSettings
from datasets.mouths import mouth_crops
from datasets.tracks import link_tracks
from datasets.video import frame_indices
from deepsift.scoring import stability
from deepsift.scoring.decode import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    ItemError,
    decode_frames,
    frame_count,
    open_image,
)
from deepsift.scoring.decode_device import device_jpeg
from deepsift.scoring.extras import load_optional, safe_pdq, safe_provenance
from deepsift.scoring.faces import FaceDetectorLike, crop_slots, cut_faces, find_faces
from deepsift.scoring.inputs import HEAD_BYTES, WorkItem, is_video_head
from deepsift.scoring.output import new_record
from deepsift.scoring.video import read_clip_windows, read_video

NOT_AN_IMAGE = "not an image (format not recognised)"


@dataclass
class MemberSpec:
    """What a worker needs of one ensemble member: its name, transform, input kind and,
    for face members, how its faces are cut (``None``: :data:`.faces.DEFAULT_CROP`)."""

    label: str
    transform: Callable[[dict[str, Any]], dict[str, Any]]
    faces: bool = False
    face_crop: CropSettings | None = None
    #: a clip detector's ``(clip_len, clip_stride)``; None for image detectors
    clip: tuple[int, int] | None = None
    #: a lip-motion clip detector (``needs_mouth``): mouth crops too, from the landmarks
    mouth: bool = False
    #: the training cache's window stride a checkpoint's clips are spaced by (``clip[1]`` is
    #: ``clip_stride`` times it)
    frame_step: int = 1
    #: from a checkpoint: its clip is fixed by training (``--set`` is refused)
    checkpoint: bool = False


@dataclass
class PrepareOptions:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    video_frames: int = 16
    animated: str = "first"  # or "frames": sample frames as for a video
    stability: bool = False
    provenance: bool = True
    pdq: bool = True
    min_face: int = 64
    max_faces: int = 8
    clips: int = 4  # clips per video for a clip detector (``--clips``)
    #: hand JPEGs the device decoder takes exactly to the model process undecoded
    #: (``--decode-device cuda``, :mod:`deepsift.scoring.decode_device`)
    defer_jpeg: bool = False


@dataclass
class Unit:
    """One picture to score: group (frame) ``group``, face ``face`` (None: whole), ``variant``,
    and for a face the ``crop`` slot (:func:`.faces.crop_slots`: members that cut faces
    differently score different crops of one face)."""

    group: int
    face: int | None
    variant: str
    crop: int = 0


@dataclass
class Group:
    """A scored picture: the image itself, or one sampled frame of a video or animation."""

    frame: int | None
    width: int
    height: int
    faces: list[dict[str, Any]] | None = None  # box, crop(s), confidence of each scored face
    face_reason: str | None = None
    #: a clip (clip detectors): ``window``, ``track``, ``frames``, ``boxes``, ``crops``
    clip: dict[str, Any] | None = None


@dataclass
class Stack:
    """Tensors of one member for ``units`` (first dimension = len(units)), one shape."""

    member: str
    units: np.ndarray
    tensors: dict[str, torch.Tensor]


@dataclass
class Prepared:
    item: WorkItem
    record: dict[str, Any]
    groups: list[Group] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)
    stacks: list[Stack] = field(default_factory=list)
    not_image: bool = False
    reason: str | None = None  # why nothing was scored although the file was read
    #: a JPEG left for the model process to decode on its device (``defer_jpeg``)
    jpeg: bytes | None = None


class PrepareContext:
    """The members' transforms, options and lazily built helpers of one worker."""

    def __init__(
        self,
        members: list[MemberSpec],
        options: PrepareOptions,
        face_factory: Callable[[], FaceDetectorLike] | None = None,
    ) -> None:
        self.members = members
        self.options = options
        self.face_factory = face_factory
        self.crops, self.crop_of = crop_slots(members)
        clips = [m for m in members if m.clip is not None]
        if clips and len(members) > 1:
            raise ValueError("a clip detector is scored alone (no ensemble)")
        self.clip_member: MemberSpec | None = clips[0] if clips else None
        self._face_detector: FaceDetectorLike | None = None
        self._provenance: Callable | None = None
        self._pdq: Callable | None = None
        self._loaded = False

    @property
    def defers_jpeg(self) -> bool:
        """``defer_jpeg``, and nothing of this run reads CPU pixels (a safety net: the
        command line refuses such runs, :func:`.decode_device.cpu_pixel_needs`)."""
        o = self.options
        cpu_pixels = o.pdq or o.provenance or o.stability or self.needs_faces
        return o.defer_jpeg and not cpu_pixels and self.clip_member is None

    @property
    def needs_faces(self) -> bool:
        return any(m.faces for m in self.members)

    def face_detector(self) -> FaceDetectorLike:
        if self._face_detector is None:
            if self.face_factory is None:
                raise ItemError("face detection requested but no face detector is available")
            self._face_detector = self.face_factory()
        return self._face_detector

    def extras(self) -> tuple[Callable | None, Callable | None]:
        if not self._loaded:
            if self.options.provenance:
                self._provenance, _ = load_optional(
                    "deepsift.scoring.provenance", "read_provenance"
                )
            if self.options.pdq:
                self._pdq, _ = load_optional("deepsift.scoring.pdq", "pdq_hash")
            self._loaded = True
        return self._provenance, self._pdq


def base_record(item: WorkItem) -> dict[str, Any]:
    return new_record(
        path=item.path,
        member=item.member,
        member_index=item.member_index,
        kind="image",
        error=item.error,
    )


def error_prepared(item: WorkItem, reason: str, **fields: Any) -> Prepared:
    record = base_record(item)
    record.update(fields, error=reason)
    return Prepared(WorkItem(item.path, item.member, item.member_index), record)


def read_file(path: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except PermissionError:
        raise ItemError("permission denied") from None
    except FileNotFoundError:
        raise ItemError("file vanished before it was read") from None
    except IsADirectoryError:
        raise ItemError("is a directory") from None
    except OSError as exc:
        raise ItemError(f"cannot read file ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limit:
        raise ItemError(f"file larger than --max-file-bytes {limit}: not read")
    return data


def file_head(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(HEAD_BYTES)
    except OSError:
        return b""  # read_file reports the reason


def hash_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ItemError(f"cannot read file ({exc.strerror or type(exc).__name__})") from None
    return digest.hexdigest(), size


def prepare(item: WorkItem, ctx: PrepareContext) -> Prepared:
    """The partial record and model inputs of one item; never raises for bad input."""
    stripped = WorkItem(item.path, item.member, item.member_index, error=item.error)
    out = Prepared(stripped, base_record(item))
    if item.error:
        return out
    try:
        if item.data is None and is_video_head(file_head(item.path)):
            if ctx.clip_member is not None:
                _prepare_clips(item.path, ctx, out)
            else:
                _prepare_video(item.path, ctx, out)
        else:
            raw = (
                item.data
                if item.data is not None
                else read_file(item.path, ctx.options.max_file_bytes)
            )
            out.record["sha256"] = hashlib.sha256(raw).hexdigest()
            out.record["bytes"] = len(raw)
            if item.data is not None and is_video_head(raw[:HEAD_BYTES]):
                out.record["kind"] = "video"
                raise ItemError(
                    "video inside an archive: not scored (archives are never extracted; "
                    "extract the video and pass the file)"
                )
            _prepare_image(raw, ctx, out)
    except ItemError as exc:
        out.record["error"] = str(exc)
        out.not_image = str(exc) == NOT_AN_IMAGE
        out.units, out.stacks = [], []
    return out


def _prepare_image(raw: bytes, ctx: PrepareContext, out: Prepared) -> None:
    options = ctx.options
    if ctx.defers_jpeg:  # the header checks run here; the pixels are decoded on the device
        opened = open_image(raw, options.max_pixels)
        if device_jpeg(raw, opened) is None:
            out.record.update(format=opened.format, width=opened.width, height=opened.height)
            out.jpeg = raw
            return
    k = options.video_frames if options.animated == "frames" else 1
    first, frames = decode_frames(raw, lambda n: frame_indices(n, k), options.max_pixels)
    record = out.record
    record.update(format=first.format, width=first.image.width, height=first.image.height)
    if first.animated:
        record["kind"] = "animation"
        record["n_frames"] = frame_count(open_image(raw, options.max_pixels))
    provenance, pdq = ctx.extras()
    if provenance is not None:
        record["provenance"] = safe_provenance(provenance, raw, first.stored, first.format)
    if pdq is not None:
        record["pdq"] = safe_pdq(pdq, first.image)
    if options.animated == "frames" and first.animated:
        pictures = [(index, image) for index, image in frames]
    else:
        pictures = [(None, first.image)]
    _add_pictures(pictures, ctx, out)


def _prepare_video(path: str, ctx: PrepareContext, out: Prepared) -> None:
    record = out.record
    record["kind"] = "video"
    record["sha256"], record["bytes"] = hash_file(path)
    video = read_video(path, ctx.options.video_frames, ctx.options.max_pixels)
    record.update(
        format=video.codec or "video",
        width=video.width,
        height=video.height,
        n_frames=video.frame_count,
    )
    _add_pictures(video.frames, ctx, out)


def _add_pictures(
    pictures: list[tuple[int | None, Image.Image]], ctx: PrepareContext, out: Prepared
) -> None:
    """Units (whole images, face crops, laundered copies) and their transformed tensors."""
    options = ctx.options
    if ctx.clip_member is not None:
        out.reason = f"{ctx.clip_member.label} is a clip detector: it scores videos only"
        return
    variants = [stability.ORIGINAL, *(stability.VARIANTS if options.stability else ())]
    per_member: dict[str, list[tuple[int, dict[str, Any]]]] = {m.label: [] for m in ctx.members}
    whole = [m for m in ctx.members if not m.faces]
    face_members = [m for m in ctx.members if m.faces]
    for group_index, (frame, image) in enumerate(pictures):
        group = Group(frame, image.width, image.height)
        out.groups.append(group)
        targets: list[tuple[int | None, int, Image.Image, list[MemberSpec]]] = []
        if whole:
            targets.append((None, 0, image, whole))
        if face_members:
            faces, reason = find_faces(
                image, ctx.face_detector(), options.min_face, options.max_faces
            )
            group.face_reason = reason
            cut = [cut_faces(image, faces, settings) for settings in ctx.crops]
            group.faces = [_face_entry(i, cut, ctx.crop_of) for i in range(len(faces))]
            for slot, crops in enumerate(cut):
                members = [m for m in face_members if ctx.crop_of[m.label] == slot]
                targets.extend((i, slot, c.image, members) for i, c in enumerate(crops))
        for face, slot, picture, members in targets:
            copies = {stability.ORIGINAL: picture}
            if options.stability:
                copies.update(stability.launder(picture))
            for variant in variants:
                unit_index = len(out.units)
                out.units.append(Unit(group_index, face, variant, slot))
                for member in members:
                    try:
                        sample = member.transform({"image": copies[variant], "record": None})
                    except (ValueError, RuntimeError, OSError) as exc:
                        raise ItemError(
                            f"{member.label} preprocessing failed ({str(exc).strip()[:120]})"
                        ) from None
                    per_member[member.label].append((unit_index, sample))
    out.stacks = [stack for label, rows in per_member.items() for stack in _stack(label, rows)]


def _prepare_clips(path: str, ctx: PrepareContext, out: Prepared) -> None:
    """A video for a clip detector: ``--clips`` windows of one clip span, evenly spaced
    (:func:`datasets.video.window_indices`, as ``datasets.preprocess`` cuts its windows);
    in each window the faces of every frame are linked into tracks by box overlap
    (:func:`datasets.tracks.link_tracks`) and each track that spans the whole window is
    one clip (so a clip never mixes two people); whole frames with ``--faces off``."""
    member = ctx.clip_member
    assert member is not None and member.clip is not None
    clip_len, clip_stride = member.clip
    record = out.record
    record["kind"] = "video"
    record["sha256"], record["bytes"] = hash_file(path)
    video = read_clip_windows(
        path, clip_len, clip_stride, ctx.options.clips, ctx.options.max_pixels
    )
    record.update(
        format=video.codec or "video",
        width=video.width,
        height=video.height,
        n_frames=video.frame_count,
    )
    if not video.windows:
        out.reason = _too_short(member, video.frame_count)
        return
    reasons: list[str] = []
    rows: list[tuple[int, dict[str, Any]]] = []
    for w, window in enumerate(video.windows):
        clips, reason = _window_clips(window, ctx, member)
        if reason:
            reasons.append(reason)
        for k, (frames, info) in enumerate(clips):
            more = info.pop("_more")  # mouth crops: model input, not record fields
            group = Group(window[0][0], video.width, video.height)
            group.clip = {"window": w, "track": k, "frames": [i for i, _ in window], **info}
            out.groups.append(group)
            unit_index = len(out.units)
            out.units.append(Unit(len(out.groups) - 1, None, stability.ORIGINAL))
            try:
                sample = member.transform({"frames": frames, "record": None, **more})
            except (ValueError, RuntimeError, OSError) as exc:
                raise ItemError(
                    f"{member.label} preprocessing failed ({str(exc).strip()[:120]})"
                ) from None
            rows.append((unit_index, sample))
    if not out.groups:
        unique = sorted(set(reasons))
        out.reason = (
            f"{unique[0]} in every clip window"
            if len(unique) == 1
            else "no face track spans a clip"
        )
    out.stacks = _stack(member.label, rows)


def _too_short(member: MemberSpec, frames: int) -> str:
    """Why a video of ``frames`` frames gives no clip of ``member``, and the fix."""
    assert member.clip is not None
    clip_len, step = member.clip
    span = (clip_len - 1) * step + 1
    head = f"video too short for one clip: {frames} frames, one clip of {member.label} "
    if not member.checkpoint:
        return (
            f"{head}(clip_len={clip_len} x clip_stride={step}) needs {span}; "
            "lower them (--set clip_len=... clip_stride=...) to score it"
        )
    stride = step // max(member.frame_step, 1)
    cache = f" x the training cache's window stride {member.frame_step}"
    return (
        f"{head}(clip_len={clip_len} x clip_stride={stride}"
        f"{cache if member.frame_step > 1 else ''}) needs {span}; a checkpoint's clip is "
        f"fixed by its training: score videos of {span} frames or more, or train on a cache "
        "with a smaller window stride (python -m datasets.preprocess stride=...) or with a "
        "lower detector.clip_len"
    )


def _window_clips(
    window: list[tuple[int, Image.Image]], ctx: PrepareContext, member: MemberSpec
) -> tuple[list[tuple[list[Image.Image], dict[str, Any]]], str | None]:
    """The clips of one window: ``(frames, info)`` per face track spanning it, and why none."""
    if not member.faces:
        return [([image for _, image in window], {"boxes": None, "crops": None, "_more": {}})], None
    options = ctx.options
    found = [
        find_faces(image, ctx.face_detector(), options.min_face, options.max_faces)
        for _, image in window
    ]
    if all(not faces for faces, _ in found):
        return [], next((r for _, r in found if r), "no face found")
    tracks = link_tracks([[face.box for face in faces] for faces, _ in found])
    settings = ctx.crops[ctx.crop_of[member.label]]
    clips = []
    no_landmarks = False
    for track in tracks:
        if len(track) < len(window):
            continue
        cut = [cut_faces(window[f][1], [found[f][0][b]], settings)[0] for f, b in track]
        info: dict[str, Any] = {
            "boxes": [[round(v, 1) for v in c.box] for c in cut],
            "crops": [list(c.crop_box) for c in cut],
            "_more": {},
        }
        if member.mouth:
            mouths = _mouths(window, found, track)
            if mouths is None:
                no_landmarks = True
                continue
            info["_more"]["mouth_frames"] = mouths
        clips.append(([c.image for c in cut], info))
    if not clips and no_landmarks:
        return [], "no mouth crop (faces without 68 landmarks, or a mouth that cannot be cut)"
    if not clips:
        return (
            [],
            "no face track spans a whole clip (a frame without a usable face, or faces crossing)",
        )
    return clips, None


def _mouths(
    window: list[tuple[int, Image.Image]], found: list[tuple[list[Any], Any]], track: list
) -> list[Image.Image] | None:
    """The grayscale mouth crops of one face track through a window (:mod:`datasets.mouths`,
    LipForensics' recipe, landmarks smoothed over the clip's frames); None when a face has no
    68 landmarks."""
    points = [found[f][0][b].landmarks for f, b in track]
    if any(p is None or np.asarray(p).shape != (68, 2) for p in points):
        return None
    frames = [np.asarray(window[f][1].convert("RGB")) for f, _ in track]
    crops = mouth_crops(frames, [np.asarray(p, np.float32) for p in points])
    if any(c is None for c in crops):
        return None
    return [Image.fromarray(c) for c in crops]  # type: ignore[arg-type]


def _face_entry(index: int, cut: list[list[Any]], crop_of: dict[str, int]) -> dict[str, Any]:
    """A face of the record: the detector's ``box``, the ``crop`` region of the first face
    member (and ``crops`` per member when members cut faces differently), ``confidence``."""
    first = cut[0][index]
    entry: dict[str, Any] = {
        "box": [round(v, 1) for v in first.box],
        "crop": list(first.crop_box),
        "confidence": first.confidence,
    }
    if len(cut) > 1:
        entry["crops"] = {label: list(cut[slot][index].crop_box) for label, slot in crop_of.items()}
    return entry


def _signature(sample: dict[str, Any]) -> tuple:
    return tuple(
        (key, tuple(value.shape) if torch.is_tensor(value) else None)
        for key, value in sorted(sample.items())
    )


def _stack(label: str, rows: list[tuple[int, dict[str, Any]]]) -> list[Stack]:
    """Rows of one member grouped by tensor shapes and collated (few tensors cross processes)."""
    groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    for unit, sample in rows:
        groups.setdefault(_signature(sample), []).append((unit, sample))
    return [
        Stack(
            label,
            np.array([unit for unit, _ in members], dtype=np.int64),
            default_collate([sample for _, sample in members]),
        )
        for members in groups.values()
    ]

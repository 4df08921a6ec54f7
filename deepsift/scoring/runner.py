"""The streaming pipeline: enumerate -> prepare in parallel -> batch -> score -> write.

::

    enumerator thread --(queue bounded in items and bytes)--> worker processes
        --(at most in_flight items each)--> main thread: dedupe, batch per member,
        forward, assemble records, append + flush, progress, summary

Memory is bounded whatever the number of inputs: no stage holds more than a few
batches of items, and decoded images never leave the worker that decoded them
(only the members' input tensors do). What grows with the input count is small
per-item bookkeeping (16-byte keys of done items, sha256 -> byte offset of
originals), a few hundred bytes per item.

Duplicates (same sha256 as an item already seen) are not scored again: their
record copies the original's (read back from the output) with their own path and
``duplicate_of`` naming the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deepsift.core.inference import fake_probabilities
from deepsift.core.progress import progress_bar
from deepsift.scoring import stability
from deepsift.scoring.accel import prepare_model
from deepsift.scoring.assemble import assemble
from deepsift.scoring.calibration import BANDS, Bands
from deepsift.scoring.decode_device import (
    NotExact,
    decode_batch,
    member_support,
    tensor_preprocess,
)
from deepsift.scoring.faces import FaceDetectorLike
from deepsift.scoring.inputs import InputOptions, WorkItem, iter_items
from deepsift.scoring.models import Ensemble
from deepsift.scoring.output import PART_KINDS, ResumeState
from deepsift.scoring.pool import InlinePool, WorkerPool
from deepsift.scoring.prepare import (
    Group,
    MemberSpec,
    PrepareContext,
    Prepared,
    PrepareOptions,
    Stack,
    Unit,
    prepare,
)

log = logging.getLogger(__name__)

_END = object()
#: byte budget of item data (archive members) queued between the enumerator and the workers
QUEUE_BYTES = 512 * 2**20


@dataclass
class RunOptions:
    inputs: list[str]
    batch_size: int = 32
    workers: int = 1
    in_flight: int | None = None  # items queued per worker; default: enough to fill two batches
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    aggregation: str = "mean"
    frame_records: bool = False
    skip_non_images: bool = False
    item_timeout: float = 300.0
    progress: bool = True
    input_options: InputOptions = field(default_factory=InputOptions)
    prepare_options: PrepareOptions = field(default_factory=PrepareOptions)
    #: JPEGs decoded in this process on ``device`` and preprocessed with tensor ops
    #: (``--decode-device cuda``; on a CPU ``device`` the same code runs on the CPU, as the
    #: tests do); :func:`deepsift.scoring.decode_device.resolve_decode_device` decides
    decode_on_device: bool = False


class Stats:
    """Counts over top-level records (frame records are not items)."""

    def __init__(self) -> None:
        self.items = 0
        self.bands: Counter[str] = Counter({b: 0 for b in BANDS})
        self.kinds: Counter[str] = Counter()
        self.not_applicable: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.duplicates = 0
        self.unstable = 0

    def add(self, record: dict[str, Any]) -> None:
        if record.get("kind") in PART_KINDS:
            return
        self.items += 1
        self.kinds[record.get("kind") or "unknown"] += 1
        if record.get("duplicate_of"):
            self.duplicates += 1
        if record.get("error"):
            self.errors[str(record["error"]).split(" (")[0][:80]] += 1
        elif record.get("band"):
            self.bands[record["band"]] += 1
        elif record.get("not_applicable"):
            self.not_applicable[record["not_applicable"]] += 1
        if record.get("unstable"):
            self.unstable += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "bands": dict(self.bands),
            "not_applicable": sum(self.not_applicable.values()),
            "not_applicable_reasons": dict(self.not_applicable.most_common(20)),
            "errors": sum(self.errors.values()),
            "error_reasons": dict(self.errors.most_common(20)),
            "duplicates": self.duplicates,
            "unstable": self.unstable,
            "kinds": dict(self.kinds),
        }


class _ByteQueue:
    """A FIFO bounded in item count and in bytes of item data (one oversize item may pass)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.items: deque[Any] = deque()
        self.bytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.cond = threading.Condition()
        self.closed = False

    def put(self, value: Any, size: int = 0) -> bool:
        with self.cond:
            while (
                not self.closed
                and self.items
                and (len(self.items) >= self.max_items or self.bytes + size > self.max_bytes)
            ):
                self.cond.wait(0.5)
            if self.closed:
                return False
            self.items.append((value, size))
            self.bytes += size
            self.cond.notify_all()
            return True

    def get(self, timeout: float) -> Any:
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            if not self.items:
                raise queue.Empty
            value, size = self.items.popleft()
            self.bytes -= size
            self.cond.notify_all()
            return value

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.items.clear()
            self.cond.notify_all()


def _clip_spec(detector: Any, frame_step: int = 1) -> tuple[int, int] | None:
    """A clip detector's ``(clip_len, video frames between its frames)``: its ``clip_stride``
    times ``frame_step`` (the training cache's window stride); None for an image detector."""
    if getattr(detector, "input_kind", "image") != "clip":
        return None
    return int(detector.clip_len), int(detector.clip_stride) * int(frame_step)


class _Pending:
    """An item waiting for its scores."""

    def __init__(self, prepared: Prepared, labels: list[str]) -> None:
        self.prepared = prepared
        n = len(prepared.units)
        self.probs = {label: np.full(n, np.nan, dtype=np.float64) for label in labels}
        self.remaining = sum(len(stack.units) for stack in prepared.stacks)


class Scorer:
    """Runs the pipeline once; see the module docstring."""

    def __init__(
        self,
        ensemble: Ensemble,
        bands: Bands,
        options: RunOptions,
        sink: Any,
        face_factory: Callable[[], FaceDetectorLike] | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.ensemble = ensemble
        self.bands = bands
        self.options = options
        self.sink = sink
        self.state: ResumeState = getattr(sink, "state", None) or ResumeState()
        self.stats = stats or Stats()  # may already count the records of a resumed output
        self.run_stats = Stats()
        self.members = {m.label: m for m in ensemble.members}
        # channels_last on CUDA for convolutional detectors (deepsift.scoring.accel)
        self.channels_last = {
            id(m.detector): prepare_model(m.detector, options.device) for m in ensemble.members
        }
        specs = [
            MemberSpec(
                m.label,
                m.detector.eval_transform,
                m.faces,
                m.face_crop,
                _clip_spec(m.detector, m.frame_step),
                bool(getattr(m.detector, "needs_mouth", False)),
                m.frame_step,
                "checkpoint" in m.identity,
            )
            for m in ensemble.members
        ]
        if options.decode_on_device:  # the command line refuses these in its own words
            for m in ensemble.members:
                why = member_support(m.detector)
                if why is not None:
                    raise ValueError(f"decode_on_device: {m.label}: {why}")
        prepare_options = dataclasses.replace(
            options.prepare_options, defer_jpeg=options.decode_on_device
        )
        self.ctx = PrepareContext(specs, prepare_options, face_factory)
        # a JPEG the device decoder rejects is prepared again here, on the CPU path
        cpu_options = dataclasses.replace(options.prepare_options, defer_jpeg=False)
        self.cpu_ctx = PrepareContext(specs, cpu_options, face_factory)
        self.jpegs: list[Prepared] = []  # JPEGs waiting to be decoded on the device
        self.decoded = Counter({"jpegs_on_device": 0, "device_decode_fallbacks": 0})
        # dedupe: sha -> offset of the written original; sha -> duplicates waiting for it
        self.written: dict[bytes, int] = dict(self.state.sha_index)
        self.waiting: dict[bytes, list[Prepared]] = {}
        self.rows: dict[tuple[str, tuple], deque[list]] = {}
        self.row_counts: Counter[tuple[str, tuple]] = Counter()
        self.pending_items = 0
        self.pictures = 0
        self.skipped_non_images = 0
        self.bar = None

    # -- enumeration --------------------------------------------------------------
    def _enumerate(self, out: _ByteQueue, stop: threading.Event) -> None:
        done = self.state.done

        def skip(key: bytes) -> bool:
            if key in done:
                return True
            done.add(key)  # the same item named twice is scored once
            return False

        try:
            for item in iter_items(self.options.inputs, self.options.input_options, skip):
                if stop.is_set() or not out.put(item, len(item.data or b"")):
                    return
            out.put(_END)
        except BaseException as exc:  # surfaced in the main thread
            out.put(("__error__", exc))

    def _count(self, bar: Any, done: frozenset[bytes], stop: threading.Event) -> None:
        seen: set[bytes] = set()

        def skip(key: bytes) -> bool:
            if key in done or key in seen:
                return True
            seen.add(key)
            return False

        counting = InputOptions(**{**vars(self.options.input_options), "read_members": False})
        total = 0
        try:
            for _ in iter_items(self.options.inputs, counting, skip):
                if stop.is_set():
                    return
                total += 1
        except Exception:  # counting is only for the ETA
            return
        bar.total = total
        bar.refresh()

    # -- decoding on the device ---------------------------------------------------------
    def _take(self, prepared: Prepared) -> None:
        """A worker's result: a JPEG left undecoded waits for a device batch (a duplicate
        of an item already seen needs no pixels); anything else is accepted as it is."""
        if prepared.jpeg is None:
            self._accept(prepared)
            return
        sha_hex = prepared.record.get("sha256")
        sha = bytes.fromhex(sha_hex) if sha_hex else None
        if sha is not None and (sha in self.written or sha in self.waiting):
            prepared.jpeg = None
            self._accept(prepared)
            return
        self.jpegs.append(prepared)
        if len(self.jpegs) >= self.options.batch_size:
            self._decode_jpegs()

    def _decode_jpegs(self) -> None:
        """Decode the waiting JPEGs in one batch on the device, run each member's tensor
        transform there, and accept them; a JPEG the decoder rejects, decodes to another size
        than its header, or whose resize cannot be reproduced exactly
        (:class:`.decode_device.NotExact`) is prepared again on the CPU path (the record of
        ``--decode-device cpu``)."""
        if not self.jpegs:
            return
        batch, self.jpegs = self.jpegs, []
        images = decode_batch([p.jpeg or b"" for p in batch], self.options.device)
        # pictures of one size are transformed together (one set of kernels per batch)
        sizes: dict[tuple[int, ...], list[int]] = {}
        for i, (prepared, image) in enumerate(zip(batch, images, strict=True)):
            header = (3, prepared.record["height"], prepared.record["width"])
            if image is not None and tuple(image.shape) == header:
                sizes.setdefault(header, []).append(i)
        tensors: dict[int, dict[str, torch.Tensor]] = {}
        for rows in sizes.values():
            stacked = torch.stack([images[i] for i in rows])  # type: ignore[misc]
            with contextlib.suppress(NotExact):  # a resize this Pillow does otherwise
                out = {
                    label: tensor_preprocess(member.detector.preprocessing, stacked)
                    for label, member in self.members.items()
                }
                for k, i in enumerate(rows):
                    tensors[i] = {label: t[k : k + 1] for label, t in out.items()}
        for i, prepared in enumerate(batch):
            raw, prepared.jpeg = prepared.jpeg or b"", None
            if i not in tensors:
                self.decoded["device_decode_fallbacks"] += 1
                item = prepared.item
                again = WorkItem(item.path, item.member, item.member_index, data=raw)
                self._accept(prepare(again, self.cpu_ctx))
                continue
            self.decoded["jpegs_on_device"] += 1
            prepared.groups = [Group(None, prepared.record["width"], prepared.record["height"])]
            prepared.units = [Unit(0, None, stability.ORIGINAL)]
            prepared.stacks = [
                Stack(label, np.zeros(1, dtype=np.int64), {"image": tensor})
                for label, tensor in tensors[i].items()
            ]
            self._accept(prepared)

    # -- batching -------------------------------------------------------------------
    def _accept(self, prepared: Prepared) -> None:
        """A prepared item: a duplicate, an item with nothing to score, or rows to batch."""
        if prepared.not_image and self.options.skip_non_images:
            self.skipped_non_images += 1
            self._advance(1)
            return
        sha_hex = prepared.record.get("sha256")
        sha = bytes.fromhex(sha_hex) if sha_hex else None
        if sha is not None:
            if sha in self.written:
                self._write_duplicates(sha, [prepared])
                return
            if sha in self.waiting:
                self.waiting[sha].append(prepared)
                return
            self.waiting[sha] = []
        if not prepared.stacks:
            self._finish(_Pending(prepared, list(self.members)))
            return
        pending = _Pending(prepared, list(self.members))
        self.pending_items += 1
        for stack in prepared.stacks:
            stack.tensors = {k: torch.as_tensor(v) for k, v in stack.tensors.items()}
            signature = tuple((k, tuple(v.shape[1:])) for k, v in sorted(stack.tensors.items()))
            key = (stack.member, signature)
            self.rows.setdefault(key, deque()).append([pending, stack, 0])
            self.row_counts[key] += len(stack.units)

    def _forward_ready(self, partial: bool) -> None:
        """Forward full batches; and partial ones when idle (``partial``) or when rows of
        many shapes (detectors without resizing) together hold more than a batch."""
        size = self.options.batch_size
        for key in list(self.rows):
            while self.row_counts[key] >= size or (partial and self.row_counts[key] > 0):
                self._forward(key, size)
        while sum(self.row_counts.values()) >= size:
            self._forward(max(self.row_counts, key=self.row_counts.__getitem__), size)

    def _forward(self, key: tuple[str, tuple], size: int) -> None:
        label, _ = key
        rows = self.rows[key]
        parts: list[dict[str, torch.Tensor]] = []
        targets: list[tuple[_Pending, np.ndarray]] = []
        taken = 0
        while rows and taken < size:
            entry = rows[0]
            pending, stack, start = entry
            stop = min(len(stack.units), start + size - taken)
            parts.append({k: v[start:stop] for k, v in stack.tensors.items()})
            targets.append((pending, stack.units[start:stop]))
            taken += stop - start
            if stop == len(stack.units):
                rows.popleft()
            else:
                entry[2] = stop
        self.row_counts[key] -= taken
        if not rows:  # shapes come and go (detectors without resizing): keep the maps small
            del self.rows[key], self.row_counts[key]
        if self.options.decode_on_device:  # rows decoded on the device and on the CPU mix
            device = self.options.device
            batch = {k: torch.cat([p[k].to(device) for p in parts]) for k in parts[0]}
        else:
            batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        probs = self._predict(self.members[label].detector, batch)
        self.pictures += taken
        offset = 0
        finished = []
        for pending, units in targets:
            pending.probs[label][units] = probs[offset : offset + len(units)]
            offset += len(units)
            pending.remaining -= len(units)
            if pending.remaining == 0:
                finished.append(pending)
        for pending in finished:
            self.pending_items -= 1
            self._finish(pending)

    def _predict(self, detector: Any, batch: dict[str, torch.Tensor]) -> np.ndarray:
        device = self.options.device
        probs = fake_probabilities(
            detector,
            batch,
            device,
            self.options.amp_dtype,
            channels_last=self.channels_last.get(id(detector), False),
        )
        return probs.numpy().astype(np.float64)

    # -- records ---------------------------------------------------------------------
    def _finish(self, pending: _Pending) -> None:
        prepared = pending.prepared
        records = assemble(
            prepared,
            pending.probs,
            self.ensemble,
            self.bands,
            self.options.aggregation,
            self.options.frame_records,
            self.options.prepare_options.stability,
        )
        offsets = self._write(records)
        sha_hex = prepared.record.get("sha256")
        if sha_hex:
            sha = bytes.fromhex(sha_hex)
            self.written[sha] = offsets[-1]
            waiting = self.waiting.pop(sha, [])
            if waiting:
                self._write_duplicates(sha, waiting, records[-1])

    def _write_duplicates(
        self, sha: bytes, duplicates: list[Prepared], original: dict[str, Any] | None = None
    ) -> None:
        original = original or self.sink.read_at(self.written[sha])
        records = []
        for prepared in duplicates:
            record = dict(original)
            for name in ("path", "member", "member_index"):
                record[name] = prepared.record[name]
            record["duplicate_of"] = {"path": original["path"], "member": original["member"]}
            records.append(record)
        self._write(records)

    def _write(self, records: list[dict[str, Any]]) -> list[int]:
        offsets = self.sink.write(records)
        items = 0
        for record in records:
            if record.get("kind") not in PART_KINDS:
                items += 1
                self.stats.add(record)
                self.run_stats.add(record)
        self._advance(items)
        return offsets

    def _advance(self, items: int) -> None:
        if self.bar is not None and items:
            self.bar.update(items)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        options = self.options
        start = time.monotonic()
        workers = max(0, options.workers)
        in_flight = options.in_flight or max(4, -(-2 * options.batch_size // max(workers, 1)))
        pool: Any
        if workers == 0:
            pool = InlinePool(self.ctx, in_flight=1)
        else:
            nice = 10 if options.device.type == "cpu" else 0
            pool = WorkerPool(workers, self.ctx, in_flight, options.item_timeout, nice=nice)
        # threads start after the workers are forked
        items = _ByteQueue(max(16, 2 * max(workers, 1) * in_flight), QUEUE_BYTES)
        stop = threading.Event()
        already_done = frozenset(self.state.done)
        enumerator = threading.Thread(
            target=self._enumerate, args=(items, stop), daemon=True, name="score-enumerate"
        )
        enumerator.start()
        self.bar = progress_bar(None, "score", enabled=options.progress, unit="item")
        if options.progress and not self.bar.disable:
            threading.Thread(
                target=self._count,
                args=(self.bar, already_done, stop),
                daemon=True,
                name="score-count",
            ).start()
        interrupted = False
        enumerated = False
        seq = 0
        try:
            while True:
                while not enumerated and pool.capacity() > 0:
                    try:
                        item = items.get(
                            timeout=0.0 if pool.pending() or self.pending_items else 0.05
                        )
                    except queue.Empty:
                        break
                    if item is _END:
                        enumerated = True
                    elif isinstance(item, tuple):
                        raise item[1]
                    elif item.error:
                        self._accept(prepare(item, self.ctx))
                    else:
                        seq += 1
                        pool.submit(seq, item)
                if enumerated and not pool.pending():
                    break
                results = pool.poll(0.02 if self.pending_items else 0.1)
                for prepared in results:
                    self._take(prepared)
                    self._forward_ready(partial=False)
                if not results:
                    self._decode_jpegs()
                    self._forward_ready(partial=True)
            self._decode_jpegs()
            self._forward_ready(partial=True)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stop.set()
            items.close()
            pool.close()
            if self.bar is not None:
                self.bar.close()
        elapsed = time.monotonic() - start
        return self.summary(elapsed, interrupted, pool.crashes)

    def summary(self, elapsed: float, interrupted: bool, crashes: int) -> dict[str, Any]:
        run = self.run_stats.to_dict()
        on_cuda = self.options.decode_on_device and self.options.device.type == "cuda"
        return {
            **self.stats.to_dict(),
            "this_run": {
                "items": run["items"],
                "elapsed_s": round(elapsed, 3),
                "items_per_s": round(run["items"] / elapsed, 3) if elapsed > 0 else None,
                "pictures_scored": self.pictures,
                "pictures_per_s": round(self.pictures / elapsed, 3) if elapsed > 0 else None,
                "skipped_non_images": self.skipped_non_images,
                "worker_crashes": crashes,
                "interrupted": interrupted,
            },
            "resumed": {
                "items_already_done": self.state.n_items,
                "torn_bytes_dropped": self.state.truncated_bytes,
            },
            "calibrated": self.bands.calibrated,
            "calibration_file": self.bands.source,
            "thresholds": self.bands.thresholds(),
            "members": {
                m.label: {
                    "faces": m.faces,
                    "identity": m.identity,
                    **(
                        {
                            "face_crop": m.face_crop.to_dict() if m.face_crop else None,
                            "face_crop_from": m.face_crop_from,
                        }
                        if m.faces
                        else {}
                    ),
                }
                for m in self.ensemble.members
            },
            "combine": self.ensemble.combine,
            "video_aggregation": self.options.aggregation,
            "stability": self.options.prepare_options.stability,
            "decode_device": {
                "decode_device": "cuda" if on_cuda else "cpu",
                # JPEGs decoded in this process with tensor transforms (on CPU: the test hook)
                "tensor_path": self.options.decode_on_device,
                **self.decoded,
            },
        }


class MemorySink:
    """A sink that keeps records in memory (calibration, tests)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.state = ResumeState()

    def write(self, records: list[dict[str, Any]]) -> list[int]:
        start = len(self.records)
        self.records.extend(records)
        return list(range(start, start + len(records)))

    def read_at(self, offset: int) -> dict[str, Any]:
        return self.records[offset]

"""``score.py --engine ray``: the same per-item pipeline as the local engine, on Ray Data.

::

    Ray task (flat_map, no CPU reserved): iter_items, the local engine's lazy listing, cut into
      chunks of --items-per-shard items; a chunk is one row (its first and last item
      index, the pickled items) and one block, streamed out as it is listed
      -> map_batches task per chunk (num_cpus=1): prepare() per item (decode, limits,
         error records), as a local pool worker runs it, with the members' transforms
         only (no network); as many at once as free CPUs. ``--decode-device cuda``:
         a plain JPEG is read, hashed and header-checked but left undecoded
         (:func:`~deepsift.scoring.decode_device.device_jpeg`, the local workers' guard)
      -> map_batches(_ScoreShard, ActorPoolStrategy(size=--model-workers),
         num_gpus=--gpus-per-worker): each actor loads the weights once, batches,
         forwards and assembles records with the local engine's
         :class:`~deepsift.scoring.runner.Scorer` (which decodes the undecoded JPEGs in
         batches on the actor's GPU with the tensor transforms, and prepares a JPEG the
         device path cannot take again on the CPU path, as the local model process
         does), then commits the chunk as one shard
         file, atomically (tmp + os.replace), named by the chunk's first and last item
         index and the run's tag (so a retried chunk rewrites its own shard)
      -> driver: merges the committed shards into --out in index order (JSONL/CSV/Parquet)

The driver holds no listing: it builds the plan and receives one small row per
shard. Blocks are one chunk each (the dataset's ``target_max_block_size`` is set
to one byte, so every row is its own block); Ray Data's streaming executor
backpressures the listing task when decoded chunks wait for the model actors, so
memory is bounded by the chunks in flight, not by the number of inputs.

Decoding, limits, error records and record assembly are the local engine's own
functions (:func:`~deepsift.scoring.prepare.prepare`, ``Scorer._accept`` /
``_forward_ready`` / :func:`~deepsift.scoring.assemble.assemble`), so both engines
write the same records. Duplicates (same sha256) are resolved within a shard by the
Scorer and across shards by the driver while merging, as the local engine does
(the driver keeps sha256 -> shard and byte offset of each original, not the record).

Retries: Ray Data's defaults restart a dead model actor and retry its chunk without
limit (``max_restarts=-1``, ``max_task_retries=-1``); nothing is passed through the
``ray_remote_args`` that Ray 2.60 deprecates (decode tasks keep Ray's 3 retries). An
item that kills its worker every time does not stall the run: each stage counts its
attempts at a chunk in marker files in the shard folder (:class:`_Attempts`); a retry
handles the chunk's items one at a time, logging each before it starts, so the item a
retry died on is known, and the next attempt writes an error record for it ("the model
worker died while scoring it (<item>) on a retry of its chunk; not scored again", as
the local engine's dead-decoder records) and scores the rest once. Decode tasks get the members'
transforms detached from their networks (:func:`transform_only`): only the model
actors build the detector.

Known limits: a duplicate video keeps its frame records when its original is in
another shard; ``--resume`` continues from the committed shards (``<out>.shards``)
and rewrites --out whole from them; the shard folder must be on a file system that
every node sees (NFS), like the inputs.

``ray`` is imported inside functions only: the local engine works without it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from deepsift.core.errors import UserError
from deepsift.scoring.calibration import Bands
from deepsift.scoring.inputs import iter_items
from deepsift.scoring.models import Ensemble
from deepsift.scoring.output import PART_KINDS, encode_jsonl, iter_jsonl_records, record_key
from deepsift.scoring.runner import RunOptions

#: items per shard file (one chunk: one listing row, one decode task, one actor call)
DEFAULT_ITEMS_PER_SHARD = 256
#: test hook: a marker file path; one model actor exits (os._exit) once mid-run
KILL_ENV = "DEEPSIFT_RAY_TEST_KILL_ACTOR"
#: test hook: seconds each model actor sleeps after committing a shard (slows a run
#: down so that a test can kill the driver between two commits)
DELAY_ENV = "DEEPSIFT_RAY_TEST_SHARD_DELAY"
#: test hook: ``stage:name,...`` (stage decode or score); that stage's worker exits on
#: every item named ``name`` (a poison item)
POISON_ENV = "DEEPSIFT_RAY_TEST_POISON"


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """``host:port`` (or ``ray://host:port``) answers a TCP connect, or one UserError."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"--ray-address {address!r}: use auto, HOST:PORT (ray start --head prints it) "
            "or ray://HOST:10001"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
            "start one with `ray start --head` or omit --ray-address to start a local one"
        ) from None


def _version_mismatch(exc: BaseException, client_version: str) -> UserError:
    """Ray's multi-line ``Version mismatch`` RuntimeError as one line naming both versions."""
    text = str(exc)
    rays = re.findall(r"Ray:\s*(\S+)", text)
    pythons = re.findall(r"Python:\s*(\S+)", text)
    if len(rays) >= 2 and len(pythons) >= 2:
        detail = (
            f"the cluster runs Ray {rays[0]} on Python {pythons[0]}, "
            f"this client Ray {rays[1]} on Python {pythons[1]}"
        )
    else:
        detail = f"this client runs Ray {client_version}; {' '.join(text.split())[:160]}"
    return UserError(
        f"Ray version mismatch: {detail}; install the cluster's Ray and Python versions here "
        "(pip install 'ray[data]==<cluster version>') or omit --ray-address to start a local Ray"
    )


def start_ray(address: str | None, gpus_per_worker: float, model_workers: int) -> None:
    """Connect to (or start) Ray and check the cluster can hold the actors; one UserError if not.

    Called before --out is opened, so a bad engine setting writes nothing.
    """
    if model_workers <= 0:
        raise UserError(f"--model-workers must be positive; got {model_workers}")
    if gpus_per_worker < 0:
        raise UserError(f"--gpus-per-worker must be >= 0; got {gpus_per_worker}")
    try:
        import ray
    except ImportError:
        raise UserError('--engine ray needs Ray: pip install ".[ray]"') from None
    if address and address != "auto":
        _check_reachable(address)
    if not ray.is_initialized():
        where = f"--ray-address {address}" if address else "--engine ray"
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(
                f"{where}: cannot connect to a Ray cluster ({first}); start one with "
                "`ray start --head`, or omit --ray-address to start a local one"
            ) from None
        except RuntimeError as exc:
            if "version mismatch" in str(exc).lower():
                raise _version_mismatch(exc, ray.__version__) from None
            raise
    if gpus_per_worker > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < gpus_per_worker:
            raise UserError(
                f"--gpus-per-worker {gpus_per_worker} but the Ray cluster has {gpus:g} GPU(s); "
                "pass --gpus-per-worker 0 to score on CPU or add GPU nodes"
            )


# -- listing task ---------------------------------------------------------------------------
#: a chunk is cut early once its archive members' bytes reach this (Arrow binary cells < 2 GiB)
CHUNK_DATA_BYTES = 256 * 2**20


def _indexed_items(options: RunOptions, done: set[bytes]) -> Iterator[tuple[int, Any]]:
    """``(index, item)`` of the items to score. An item's index is its position in the whole
    listing, committed items (``done``) included, so a resumed run names its shards apart."""
    seen: set[bytes] = set()
    position = [-1]

    def skip(key: bytes) -> bool:  # the same item named twice is scored once
        if key in seen:
            return True
        seen.add(key)
        position[0] += 1
        return key in done

    for item in iter_items(options.inputs, options.input_options, skip):
        yield position[0], item


def _chunk_row(chunk: list[tuple[int, Any]]) -> dict[str, Any]:
    return {
        "first": chunk[0][0],
        "last": chunk[-1][0],
        "items": pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL),
    }


def _list_chunks(
    row: dict[str, Any],
    *,
    options: RunOptions,
    shard_dir: str,
    resumed: list[str],
    items_per_shard: int,
) -> Iterator[dict[str, Any]]:
    """The Ray task that lists the inputs: rows of ``items_per_shard`` items, yielded as
    they are listed. ``resumed``: the committed shards whose items are not listed again."""
    done = _done_keys(Path(shard_dir), resumed)
    chunk: list[tuple[int, Any]] = []
    data_bytes = 0
    for index, item in _indexed_items(options, done):
        chunk.append((index, item))
        data_bytes += len(item.data or b"")
        if len(chunk) >= items_per_shard or data_bytes >= CHUNK_DATA_BYTES:
            yield _chunk_row(chunk)
            chunk, data_bytes = [], 0
    if chunk:
        yield _chunk_row(chunk)


# -- poison items ---------------------------------------------------------------------------
def _item_name(item: Any) -> str:
    return f"{item.path}!{item.member}" if item.member is not None else str(item.path)


class _Attempts:
    """The attempts of one stage (``decode`` or ``score``) at one chunk, as marker files in
    the shard folder, so that an item that kills its worker every time cannot stall the run.

    The first attempt only creates its (empty) marker. An attempt that finds an earlier
    marker is a retry (the worker of an earlier attempt died): it handles the items one
    at a time and appends each item's index to its marker before starting on it, then
    ``done`` at the end. An earlier logged attempt that did not end with ``done`` died
    on its last item: that item is in ``blamed`` and gets an error record instead of
    being scored again. An item that kills its worker every time thus costs two worker
    deaths, and each further one in the same chunk one more; every other item is scored
    once. Model actors are retried without limit; a decode task has Ray's 3 retries, so
    a chunk with more than two such items fails the run (Ray's error names the task).
    """

    def __init__(self, shard_dir: str, stage: str, first: int, tag: str) -> None:
        prefix = os.path.join(shard_dir, f".attempt-{stage}-{first:012d}-{tag or 'run'}")
        number = 0
        while True:
            try:
                self.fd = os.open(
                    f"{prefix}-{number}", os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND
                )
                break
            except FileExistsError:
                number += 1
        self.retry = number > 0
        self.blamed: set[int] = set()
        for earlier in range(1, number):
            with open(f"{prefix}-{earlier}", "rb") as handle:
                lines = handle.read().split()
            if lines and lines[-1] != b"done":
                self.blamed.add(int(lines[-1]))

    def start(self, index: int) -> None:
        if self.retry:
            os.write(self.fd, b"%d\n" % index)

    def close(self) -> None:
        if self.retry:
            os.write(self.fd, b"done\n")
        os.close(self.fd)


def _died_on(item: Any, stage: str) -> Any:
    from deepsift.scoring.prepare import error_prepared

    return error_prepared(
        item,
        f"the {stage} worker died while scoring it ({_item_name(item)}) on a retry of its "
        "chunk; not scored again"[:300],
    )


def _poison_hook(stage: str, item: Any, wanted: str | None) -> None:
    """Test hook (:data:`POISON_ENV`, ``stage:name,...``): the worker of ``stage`` exits
    whenever it reaches an item whose file (or member) is named ``name``."""
    if not wanted:
        return
    name = os.path.basename(str(item.member if item.member is not None else item.path))
    if f"{stage}:{name}" in wanted.split(","):
        os._exit(1)


# -- decode tasks ---------------------------------------------------------------------------
def transform_only(detector: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``detector.eval_transform`` bound to a copy of the detector without its network
    (no parameters, buffers or submodules), so that a decode task gets the preprocessing
    only: unpickling it builds no layer and holds no weight. Checked on a probe picture:
    where the copy's output differs from the detector's, the detector's own transform."""
    import torch
    from PIL import Image

    shell = object.__new__(type(detector))
    state = dict(detector.__dict__)
    state.update(_parameters={}, _buffers={}, _modules={})
    for name in ("optimizer_factory", "scheduler_factory"):
        if name in state:
            state[name] = None
    shell.__dict__.update(state)
    if any(isinstance(v, torch.nn.Module) for v in shell.__dict__.values()):
        return detector.eval_transform  # a network held outside _modules: keep the detector
    # a transform that needs the network (a submodule, a property over one) differs or
    # fails on the shell: then the decode tasks get the whole detector, as before
    probe = {"image": Image.new("RGB", (64, 48), (120, 60, 30)), "record": None}
    try:
        got, want = shell.eval_transform(dict(probe)), detector.eval_transform(dict(probe))
        same = got.keys() == want.keys() and all(
            torch.equal(got[k], want[k]) if torch.is_tensor(want[k]) else got[k] == want[k]
            for k in want
        )
    except Exception:
        same = False
    return shell.eval_transform if same else detector.eval_transform


def member_specs(ensemble: Ensemble) -> list[Any]:
    """What the decode tasks need of each member (as the local engine's workers get it),
    with the transform detached from the network (:func:`transform_only`)."""
    from deepsift.scoring.prepare import MemberSpec
    from deepsift.scoring.runner import _clip_spec

    return [
        MemberSpec(
            m.label,
            transform_only(m.detector),
            m.faces,
            m.face_crop,
            _clip_spec(m.detector, m.frame_step),
            bool(getattr(m.detector, "needs_mouth", False)),
        )
        for m in ensemble.members
    ]


_CONTEXTS: dict[int, Any] = {}


def _context(specs: bytes, prepare_options: Any) -> Any:
    """The PrepareContext of this worker process, built once from the pickled member specs
    and face detector factory (``(member_specs, face_factory)``)."""
    from deepsift.scoring.prepare import PrepareContext

    # the options too: a worker process runs the tasks of every run of its job (a run with
    # --decode-device cuda after one without, in one Python session, must not reuse its context)
    key = hash(specs + pickle.dumps(prepare_options))
    if key not in _CONTEXTS:
        import torch

        from deepsift.scoring.decode import allow_pixels

        torch.set_num_threads(1)
        allow_pixels(prepare_options.max_pixels)
        _CONTEXTS.clear()
        members, face_factory = pickle.loads(specs)
        _CONTEXTS[key] = PrepareContext(members, prepare_options, face_factory)
    return _CONTEXTS[key]


def _prepare_chunk(
    batch: Any,
    specs: bytes,
    prepare_options: Any,
    shard_dir: str = "",
    tag: str = "",
    poison: str | None = None,
) -> Any:  # pyarrow.Table -> pyarrow.Table
    """One chunk's items through the local engine's :func:`prepare` (as a pool worker runs
    them), in one CPU task. ``specs``: the pickled :func:`member_specs` (no network) and
    face detector factory."""
    import pyarrow as pa

    from deepsift.scoring.pool import _to_numpy
    from deepsift.scoring.prepare import error_prepared, prepare

    ctx = _context(specs, prepare_options)
    rows = batch.to_pylist()
    out = []
    for row in rows:
        attempts = _Attempts(shard_dir, "decode", row["first"], tag) if shard_dir else None
        prepared = []
        for index, item in pickle.loads(row["items"]):
            if attempts is not None and index in attempts.blamed:
                prepared.append((index, _to_numpy(_died_on(item, "decoding"))))
                continue
            if attempts is not None:
                attempts.start(index)
            _poison_hook("decode", item, poison)
            try:
                ready = prepare(item, ctx)
            except Exception as exc:  # as in the local pool: the item gets an error record
                ready = error_prepared(item, f"internal error ({type(exc).__name__}: {exc})"[:200])
            prepared.append((index, _to_numpy(ready)))
        if attempts is not None:
            attempts.close()
        out.append(pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL))
    return pa.table(
        {
            "first": [r["first"] for r in rows],
            "last": [r["last"] for r in rows],
            "prepared": pa.array(out, type=pa.large_binary()),
        }
    )


def shard_name(first: int, last: int, tag: str = "") -> str:
    """The shard of the chunk holding items ``first``..``last`` of a run tagged ``tag``."""
    return f"shard-{first:012d}-{last:012d}{'-' + tag if tag else ''}.jsonl"


# -- model actors ---------------------------------------------------------------------------
class _ScoreShard:
    """A map_batches actor: loads the ensemble once, scores a chunk, commits it as a shard."""

    def __init__(
        self,
        load: Callable[[], Ensemble],
        bands: Bands,
        options: RunOptions,
        shard_dir: str,
        use_gpu: bool,
        tag: str = "",
        precision: str = "auto",
        kill_marker: str | None = None,
        delay_s: float = 0.0,
        poison: str | None = None,
        cpu_threads: int = 1,
    ) -> None:
        import torch

        from deepsift.scoring.accel import resolve_precision

        device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if device.type == "cpu":
            torch.set_num_threads(max(1, int(cpu_threads)))
        self.ensemble = load().to(device)
        self.bands = bands
        amp = resolve_precision(precision, device)
        self.options = replace(options, device=device, amp_dtype=amp, progress=False, workers=0)
        if options.decode_on_device:  # a JPEG the device path cannot take is decoded here
            from deepsift.scoring.decode import allow_pixels

            allow_pixels(options.prepare_options.max_pixels)
        self.shard_dir = shard_dir
        self.tag = tag
        self.kill_marker = kill_marker
        self.delay_s = delay_s
        self.poison = poison

    def _maybe_die(self, first: int) -> None:
        """Test hook (:data:`KILL_ENV`): the first actor to score a chunk other than the
        first one creates the marker file and exits, once per marker, after committing the
        shard but before returning it, so Ray's retry scores and commits the chunk again."""
        if not self.kill_marker or first == 0:
            return
        try:
            os.close(os.open(self.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)

    def __call__(self, batch: Any) -> Any:  # pyarrow.Table -> pyarrow.Table
        import pyarrow as pa

        from deepsift.scoring.runner import MemorySink, Scorer

        names, counts, items, decoded, fallbacks = [], [], [], [], []
        for row in batch.to_pylist():
            prepared = pickle.loads(row["prepared"])
            sink = MemorySink()
            scorer = Scorer(self.ensemble, self.bands, self.options, sink)
            attempts = _Attempts(self.shard_dir, "score", row["first"], self.tag)
            for index, ready in prepared:
                if index in attempts.blamed:
                    scorer._accept(_died_on(ready.item, "model"))
                    continue
                attempts.start(index)
                _poison_hook("score", ready.item, self.poison)
                scorer._take(ready)  # an undecoded JPEG waits for a device batch
                # a retry scores its items one at a time, so a death names its item
                if attempts.retry:
                    scorer._decode_jpegs()
                scorer._forward_ready(partial=attempts.retry)
            scorer._decode_jpegs()
            scorer._forward_ready(partial=True)
            name = shard_name(row["first"], row["last"], self.tag)
            final = os.path.join(self.shard_dir, name)
            tmp = f"{final}.tmp-{os.getpid()}"
            with open(tmp, "wb") as handle:
                for record in sink.records:
                    handle.write(encode_jsonl(record))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)  # committed: a retried chunk rewrites the same name
            attempts.close()
            if self.delay_s:
                time.sleep(self.delay_s)
            self._maybe_die(row["first"])
            names.append(name)
            counts.append(len(sink.records))
            items.append(len(prepared))
            decoded.append(scorer.decoded["jpegs_on_device"])
            fallbacks.append(scorer.decoded["device_decode_fallbacks"])
        return pa.table(
            {
                "shard": names,
                "records": counts,
                "items": items,
                "jpegs_on_device": decoded,
                "device_decode_fallbacks": fallbacks,
                "device": [self.options.device.type] * len(names),
            }
        )


# -- driver side ----------------------------------------------------------------------------
def _committed_names(shard_dir: Path) -> list[str]:
    """Shard files already committed (tmp files are not), in item order."""
    return sorted(p.name for p in shard_dir.glob("shard-*.jsonl"))


def _done_keys(shard_dir: Path, names: list[str]) -> set[bytes]:
    """The item keys that the shards ``names`` hold."""
    done: set[bytes] = set()
    for name in names:
        with open(shard_dir / name, "rb") as handle:
            for _, _, record in iter_jsonl_records(handle):
                if record is not None and record["kind"] not in PART_KINDS:
                    done.add(record_key(record))
    return done


def _committed(shard_dir: Path) -> tuple[list[str], set[bytes]]:
    """Shard files already committed and the item keys they hold."""
    names = _committed_names(shard_dir)
    return names, _done_keys(shard_dir, names)


def _read_at(path: Path, offset: int) -> dict[str, Any]:
    with open(path, "rb") as handle:
        for _, _, record in iter_jsonl_records(handle, offset):
            if record is not None:
                return record
            break
    raise UserError(f"{path}: the shard changed while merging (byte {offset}); run --resume again")


def _merged(shard_dir: Path, names: list[str]) -> Iterator[dict[str, Any]]:
    """Records of the shards ``names`` in item order; cross-shard duplicates as the local
    engine writes them (the original's record, own path, ``duplicate_of``).

    Only the sha256 of each original and where it lies (shard, byte offset) stay in memory:
    a duplicate's original is read back from its shard."""
    names = sorted(set(names))
    originals: dict[bytes, tuple[int, int]] = {}
    for number, name in enumerate(names):
        with open(shard_dir / name, "rb") as handle:
            for offset, _, record in iter_jsonl_records(handle):
                if record is None:
                    continue
                sha = record.get("sha256")
                if record["kind"] not in PART_KINDS and sha and not record.get("duplicate_of"):
                    digest = sha.encode()
                    where = originals.get(digest)
                    if where is None:
                        originals[digest] = (number, offset)
                    else:
                        original = _read_at(shard_dir / names[where[0]], where[1])
                        record = {
                            **original,
                            "path": record["path"],
                            "member": record["member"],
                            "member_index": record["member_index"],
                            "duplicate_of": {
                                "path": original["path"],
                                "member": original["member"],
                            },
                        }
                yield record


def listing_dataset(
    options: RunOptions, shard_dir: str | Path, resumed: list[str], items_per_shard: int
) -> Any:
    """The Ray Dataset of chunk rows (``first``, ``last``, pickled ``items``): one Ray task
    runs :func:`_list_chunks`; every row is its own block, in this dataset and in those
    derived from it (``target_max_block_size`` 1 byte), so a chunk is listed, decoded and
    scored as one block each."""
    import ray

    ds = ray.data.from_items([{"listing": 0}])
    ds.context.target_max_block_size = 1
    ds.context.enable_progress_bars = False
    return ds.flat_map(
        _list_chunks,
        fn_kwargs={
            "options": options,
            "shard_dir": str(shard_dir),
            "resumed": resumed,
            "items_per_shard": items_per_shard,
        },
        # reserves no CPU: one long task that must not starve the decode tasks of a small
        # cluster (2 CPUs: one model actor, one decoder), which would stall the listing
        # once backpressure pauses it
        num_cpus=0,
    )


def score_ray(
    load: Callable[[], Ensemble],
    bands: Bands,
    options: RunOptions,
    sink: Any,
    *,
    shard_dir: str | Path,
    model_workers: int = 1,
    gpus_per_worker: float = 0.0,
    items_per_shard: int = DEFAULT_ITEMS_PER_SHARD,
    precision: str = "auto",
    resume: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    ensemble: Ensemble | None = None,
    face_factory: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Score ``options.inputs`` on the Ray cluster :func:`start_ray` connected to; write the
    merged records to ``sink`` and return a summary like the local engine's ``this_run``.

    ``load`` builds the ensemble (it must be picklable): once in each model actor, and
    here when ``ensemble`` (its result on the driver) is not given, for the members'
    transforms. Decode tasks get the transforms only (:func:`member_specs`), not the
    network. ``face_factory``: the picklable face detector factory of face members, as
    the local engine's workers get it (it runs in the decode tasks).
    ``resume``: the shards a killed run committed in ``shard_dir`` are kept and their
    items are not listed again (not even read); the rest is scored, then all are merged.
    Shards that a killed run's actors commit after this run has started are ignored.
    ``options.decode_on_device``: the decode tasks leave plain JPEGs undecoded and the
    model actors decode them on their device (CUDA with ``gpus_per_worker`` > 0; on a CPU
    actor the same code runs on the CPU, as the tests do); the summary's
    ``decode_device`` holds the counts of the chunks this run scored, summed over actors.
    """
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    if not ray.is_initialized():
        raise UserError("--engine ray: call start_ray first")
    if items_per_shard <= 0:
        raise UserError(f"--items-per-shard must be positive; got {items_per_shard}")
    start = time.monotonic()
    shard_dir = Path(shard_dir)
    if resume and shard_dir.is_dir():
        resumed = _committed_names(shard_dir)
        for stale in shard_dir.glob("*.tmp-*"):  # a chunk its worker never committed
            stale.unlink()
    else:
        shutil.rmtree(shard_dir, ignore_errors=True)
        shard_dir.mkdir(parents=True)
        resumed = []
    tag = secrets.token_hex(4)  # this run's shards: apart from a killed run's late commits
    poison = os.environ.get(POISON_ENV) or None
    ds = listing_dataset(options, shard_dir, resumed, items_per_shard)
    # decode tasks: at most one per cluster CPU; a task pool whose size differs from the
    # actor pool's, so Ray does not fuse decoding into the model actors (their CPU would
    # then do both, one chunk at a time)
    decoders = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # a CPU model actor reserves one CPU but runs on the cluster's CPUs per actor, as the local
    # engine's model uses every core beside its decode workers: on 2 cores one thread per actor
    # held the Ray engine at 0.59x the local engine (decoding is a small share of the work)
    cpu_threads = 1 if gpus_per_worker > 0 else max(1, decoders // max(1, model_workers))
    ds = ds.map_batches(
        _prepare_chunk,
        fn_kwargs={
            "specs": pickle.dumps((member_specs(ensemble or load()), face_factory)),
            "prepare_options": replace(
                options.prepare_options, defer_jpeg=options.decode_on_device
            ),
            "shard_dir": str(shard_dir),
            "tag": tag,
            "poison": poison,
        },
        batch_size=1,
        batch_format="pyarrow",
        compute=TaskPoolStrategy(size=decoders + (decoders == model_workers)),
        num_cpus=1,
    )
    ds = ds.map_batches(
        _ScoreShard,
        fn_constructor_kwargs={
            "load": load,
            "bands": bands,
            "options": options,
            "shard_dir": str(shard_dir),
            "use_gpu": gpus_per_worker > 0,
            "tag": tag,
            "precision": precision,
            "kill_marker": os.environ.get(KILL_ENV) or None,
            "delay_s": float(os.environ.get(DELAY_ENV) or 0),
            "poison": poison,
            "cpu_threads": cpu_threads,
        },
        batch_size=1,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=model_workers),
        num_gpus=gpus_per_worker,
        num_cpus=0 if gpus_per_worker > 0 else 1,
    )
    listed = 0
    names = list(resumed)
    decoded = {"jpegs_on_device": 0, "device_decode_fallbacks": 0}
    actor_devices: set[str] = set()
    for out in ds.iter_rows():
        names.append(str(out["shard"]))
        listed += int(out["items"])
        for key in decoded:
            decoded[key] += int(out[key])
        actor_devices.add(str(out["device"]))
    items = 0
    for record in _merged(shard_dir, names):
        sink.write([record])
        if record["kind"] not in PART_KINDS:
            items += 1
            if on_record is not None:
                on_record(record)
    with contextlib.suppress(AttributeError):
        sink.sync()
    shutil.rmtree(shard_dir, ignore_errors=True)
    elapsed = time.monotonic() - start
    return {
        "items": items,
        "elapsed_s": round(elapsed, 3),
        "items_per_s": round(items / elapsed, 3) if elapsed > 0 else None,
        "shards": len(set(names)),
        "shards_resumed": len(resumed),
        "items_listed": listed,
        "decode_device": {
            # as the local engine's: "cuda" when the JPEGs were decoded by CUDA actors
            "decode_device": "cuda"
            if options.decode_on_device
            and (actor_devices == {"cuda"} or (not actor_devices and gpus_per_worker > 0))
            else "cpu",
            "tensor_path": options.decode_on_device,
            **decoded,
        },
    }

"""``score.py --engine ray``: the same per-item pipeline as the local engine, on Ray Data.

::

    driver: iter_items (the local engine's lazy listing) -> rows (index, pickled WorkItem)
      -> ray.data map: prepare() per item in Ray tasks (decode, limits, error records)
      -> map_batches(_ScoreShard, concurrency=--model-workers, num_gpus=--gpus-per-worker):
         each actor loads the weights once, batches, forwards and assembles records with
         the local engine's :class:`~deepsift.scoring.runner.Scorer`, then writes its block
         as one shard file, atomically (tmp + os.replace), named by the block's first and
         last item index (deterministic for one listing)
      -> driver: merges the committed shards into --out in index order (JSONL/CSV)

Decoding, limits, error records and record assembly are the local engine's own
functions (:func:`~deepsift.scoring.prepare.prepare`, ``Scorer._accept`` /
``_forward_ready`` / :func:`~deepsift.scoring.assemble.assemble`), so both engines
write the same records. Duplicates (same sha256) are resolved within a shard by the
Scorer and across shards by the driver while merging, as the local engine does.

Known limits of this first version: the item listing is enumerated lazily but
handed to Ray Data as one in-memory list of small rows (paths, plus the bytes of
archive members); a duplicate video keeps its frame records when its original is in
another shard; ``--resume`` continues from the committed shards (``<out>.shards``) and
rewrites --out whole from them.

``ray`` is imported inside functions only: the local engine works without it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import socket
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

#: items per shard file (one map_batches block)
DEFAULT_ITEMS_PER_SHARD = 256
#: test hook: a marker file path; one model actor exits (os._exit) once mid-run
KILL_ENV = "DEEPSIFT_RAY_TEST_KILL_ACTOR"
#: a model actor that dies is restarted and its block retried, this many times
MAX_RESTARTS = 4


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
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:
            raise UserError(
                f"--ray-address {address}: cannot connect ({str(exc).splitlines()[0][:160]}); "
                "start a cluster with `ray start --head`"
            ) from None
        except RuntimeError as exc:
            if "version" in str(exc).lower():
                raise UserError(
                    f"Ray version mismatch between this client ({ray.__version__}) and the "
                    f"cluster: {str(exc).splitlines()[0][:160]}; install the cluster's Ray version"
                ) from None
            raise
    if gpus_per_worker > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < gpus_per_worker:
            raise UserError(
                f"--gpus-per-worker {gpus_per_worker} but the Ray cluster has {gpus:g} GPU(s); "
                "pass --gpus-per-worker 0 to score on CPU or add GPU nodes"
            )


# -- worker side ------------------------------------------------------------------------
_CONTEXTS: dict[int, Any] = {}


def _context(load: Callable[[], Ensemble], prepare_options: Any) -> Any:
    """The PrepareContext of this worker process, built once (the members' transforms)."""
    from deepsift.scoring.prepare import MemberSpec, PrepareContext

    key = id(load)
    if key not in _CONTEXTS:
        import torch
        from PIL import Image

        torch.set_num_threads(1)
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, prepare_options.max_pixels)
        ensemble = load()
        _CONTEXTS.clear()
        _CONTEXTS[key] = PrepareContext(
            [
                MemberSpec(m.label, m.detector.eval_transform, m.faces, m.face_crop)
                for m in ensemble.members
            ],
            prepare_options,
        )
    return _CONTEXTS[key]


def _prepare_row(
    row: dict[str, Any], load: Callable[[], Ensemble], prepare_options: Any
) -> dict[str, Any]:
    """One item through the local engine's :func:`prepare` (as a pool worker runs it)."""
    from deepsift.scoring.pool import _to_numpy
    from deepsift.scoring.prepare import error_prepared, prepare

    item = pickle.loads(row["item"])
    try:
        out = prepare(item, _context(load, prepare_options))
    except Exception as exc:  # as in the local pool: the item gets an error record
        out = error_prepared(item, f"internal error ({type(exc).__name__}: {exc})"[:200])
    return {"index": row["index"], "prepared": pickle.dumps(_to_numpy(out))}


def shard_name(first: int, last: int) -> str:
    return f"shard-{first:012d}-{last:012d}.jsonl"


class _ScoreShard:
    """A map_batches actor: loads the ensemble once, scores a block, commits it as a shard."""

    def __init__(
        self,
        load: Callable[[], Ensemble],
        bands: Bands,
        options: RunOptions,
        shard_dir: str,
        use_gpu: bool,
        kill_marker: str | None = None,
    ) -> None:
        import torch

        device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.ensemble = load().to(device)
        self.bands = bands
        self.options = replace(options, device=device, progress=False, workers=0)
        self.shard_dir = shard_dir
        self.kill_marker = kill_marker

    def _maybe_die(self, first: int) -> None:
        """Test hook (:data:`KILL_ENV`): the first actor to score a block other than the
        first one creates the marker file and exits, once per marker, after committing the
        shard but before returning it, so Ray's retry scores and commits the block again."""
        if not self.kill_marker or first == 0:
            return
        try:
            os.close(os.open(self.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from deepsift.scoring.runner import MemorySink, Scorer

        indices = [int(i) for i in batch["index"]]
        sink = MemorySink()
        scorer = Scorer(self.ensemble, self.bands, self.options, sink)
        for blob in batch["prepared"]:
            scorer._accept(pickle.loads(blob))
            scorer._forward_ready(partial=False)
        scorer._forward_ready(partial=True)
        name = shard_name(min(indices), max(indices))
        final = os.path.join(self.shard_dir, name)
        tmp = f"{final}.tmp-{os.getpid()}"
        with open(tmp, "wb") as handle:
            for record in sink.records:
                handle.write(encode_jsonl(record))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)  # committed: a retried block rewrites the same name
        self._maybe_die(min(indices))
        return {"shard": [name], "records": [len(sink.records)]}


# -- driver side ------------------------------------------------------------------------
def _rows(options: RunOptions, done: set[bytes]) -> Iterator[dict[str, Any]]:
    """Rows of the items to score. An item's index is its position in the whole listing,
    committed items (``done``) included, so a resumed run names its shards apart."""
    seen: set[bytes] = set()
    position = [-1]

    def skip(key: bytes) -> bool:  # the same item named twice is scored once
        if key in seen:
            return True
        seen.add(key)
        position[0] += 1
        return key in done

    for item in iter_items(options.inputs, options.input_options, skip):
        yield {"index": position[0], "item": pickle.dumps(item)}


def _committed(shard_dir: Path) -> tuple[list[str], set[bytes]]:
    """Shard files already committed (tmp files are not) and the item keys they hold."""
    names = sorted(p.name for p in shard_dir.glob("shard-*.jsonl"))
    done: set[bytes] = set()
    for name in names:
        with open(shard_dir / name, "rb") as handle:
            for _, _, record in iter_jsonl_records(handle):
                if record is not None and record["kind"] not in PART_KINDS:
                    done.add(record_key(record))
    return names, done


def _merged(shard_dir: Path, names: list[str]) -> Iterator[dict[str, Any]]:
    """Records of the committed shards in item order; cross-shard duplicates as the local
    engine writes them (the original's record, own path, ``duplicate_of``)."""
    originals: dict[str, dict[str, Any]] = {}
    seen: set[tuple] = set()
    for name in sorted(set(names)):
        with open(shard_dir / name, "rb") as handle:
            for _, _, record in iter_jsonl_records(handle):
                if record is None:
                    continue
                ident = (record["path"], record["member"], record["member_index"], record["kind"])
                if record["kind"] not in PART_KINDS:
                    if ident in seen:
                        continue
                    seen.add(ident)
                sha = record.get("sha256")
                if record["kind"] not in PART_KINDS and sha and not record.get("duplicate_of"):
                    original = originals.get(sha)
                    if original is None:
                        originals[sha] = record
                    else:
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
    resume: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score ``options.inputs`` on the Ray cluster :func:`start_ray` connected to; write the
    merged records to ``sink`` and return a summary like the local engine's ``this_run``.

    ``load`` builds the ensemble (it runs in every worker: it must be picklable).
    ``resume``: the shards a killed run committed in ``shard_dir`` are kept and their
    items are not listed again (not even read); the rest is scored, then all are merged.
    """
    import time

    import ray

    if not ray.is_initialized():
        raise UserError("--engine ray: call start_ray first")
    start = time.monotonic()
    shard_dir = Path(shard_dir)
    if resume and shard_dir.is_dir():
        names, done = _committed(shard_dir)
        for stale in shard_dir.glob("*.tmp-*"):  # a block its worker never committed
            stale.unlink()
    else:
        shutil.rmtree(shard_dir, ignore_errors=True)
        shard_dir.mkdir(parents=True)
        names, done = [], set()
    resumed = len(names)
    rows = list(_rows(options, done))
    if rows:
        ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // items_per_shard)))
        ds = ds.map(
            _prepare_row,
            fn_kwargs={"load": load, "prepare_options": options.prepare_options},
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
                "kill_marker": os.environ.get(KILL_ENV) or None,
            },
            batch_size=items_per_shard,
            batch_format="numpy",
            concurrency=model_workers,
            num_gpus=gpus_per_worker,
            num_cpus=0 if gpus_per_worker > 0 else 1,
            max_restarts=MAX_RESTARTS,  # a dead actor comes back (weights reloaded) ...
            max_task_retries=MAX_RESTARTS,  # ... and its block is scored again
        )
        for out in ds.iter_rows():
            names.append(str(out["shard"]))
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
        "shards_resumed": resumed,
        "items_listed": len(rows),
    }

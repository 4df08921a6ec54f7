"""Worker processes that prepare items in parallel, with bounded queues and crash isolation.

Each worker has its own task queue holding at most ``in_flight`` items (and all
queues together at most ``max_bytes`` of archive member data), so the memory held
between the enumerator and the model is bounded whatever the input size. Results
come back through one pipe per worker, synchronously and as numpy arrays (no
shared-memory handles that a dying worker would take with it). A worker that dies (a decoder crashing on a malicious file, the OOM
killer) or spends more than ``item_timeout`` seconds on one item is replaced:
the item it was working on gets an error record, the others it held are given
to the new worker. Workers exit on their own when the main process disappears
(even after SIGKILL), so none is left behind.

On Linux workers are forked after the detectors are built, so they inherit the
transforms without pickling any weights; elsewhere they are spawned.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass

from deepsift.core.runtime import fork_safe_opencv
from deepsift.scoring.decode import allow_pixels
from deepsift.scoring.inputs import WorkItem
from deepsift.scoring.prepare import PrepareContext, Prepared, error_prepared, prepare

_POLL_PARENT_S = 1.0


def _to_numpy(prepared: Prepared) -> Prepared:
    """Tensors as numpy arrays: pickled into the pipe, no shared-memory handles that a dying
    worker would take with it."""
    for stack in prepared.stacks:
        stack.tensors = {k: v.numpy() for k, v in stack.tensors.items()}
    return prepared


def _worker_main(
    tasks, results, ctx: PrepareContext, parent_pid: int, inherited: list, nice: int = 0
) -> None:
    import torch

    # a forked worker inherits the reading ends of the result pipes: close them, or a
    # send would block forever on a full pipe once the main process is gone
    for connection in inherited:
        connection.close()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    if nice:  # on CPU, let the model's threads win the cores: decoding needs a sliver of them
        with contextlib.suppress(OSError):
            os.nice(nice)
    torch.set_num_threads(1)
    allow_pixels(ctx.options.max_pixels)
    while True:
        try:
            message = tasks.get(timeout=_POLL_PARENT_S)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if message is None:
            return
        seq, item = message
        try:
            out = prepare(item, ctx)
        except Exception as exc:  # a bug must not take the run down: the item gets an error
            out = error_prepared(item, f"internal error ({type(exc).__name__}: {exc})"[:200])
        try:
            # synchronous: once send returns the result is in the pipe, even if this
            # process dies on the next item, so a crash is blamed on the right item
            results.send((seq, _to_numpy(out)))
        except (OSError, ValueError):  # the main process is gone
            return


@dataclass
class _Task:
    seq: int
    item: WorkItem


class _Worker:
    def __init__(self, worker_id: int, process, tasks, results) -> None:
        self.id = worker_id
        self.process = process
        self.tasks = tasks
        self.results = results
        self.outstanding: deque[_Task] = deque()
        self.head_since = time.monotonic()
        self.broken = False


class WorkerPool:
    """``workers`` processes running :func:`prepare`; see the module docstring."""

    def __init__(
        self,
        workers: int,
        ctx: PrepareContext,
        in_flight: int = 4,
        item_timeout: float = 300.0,
        max_bytes: int = 512 * 2**20,
        nice: int = 0,
    ) -> None:
        import multiprocessing

        method = "fork" if sys.platform.startswith("linux") else "spawn"
        if method == "fork":
            fork_safe_opencv()  # or a forked worker can deadlock in its first cv2 call
        self.mp = multiprocessing.get_context(method)
        self.ctx = ctx
        self.in_flight = max(1, in_flight)
        self.item_timeout = item_timeout
        self.max_bytes = max_bytes  # archive member bytes held by queued tasks
        self.nice = nice
        self.bytes = 0
        self._ids = itertools.count()
        self.workers = [self._start() for _ in range(max(1, workers))]
        self.crashes = 0

    def _start(self) -> _Worker:
        worker_id = next(self._ids)
        tasks = self.mp.Queue()
        reader, writer = self.mp.Pipe(duplex=False)
        inherited = [reader, *(w.results for w in getattr(self, "workers", []))]
        process = self.mp.Process(
            target=_worker_main,
            args=(tasks, writer, self.ctx, os.getpid(), inherited, self.nice),
            daemon=True,
            name=f"deepsift-score-{worker_id}",
        )
        process.start()
        writer.close()  # the worker holds the only writer: EOF when it dies
        return _Worker(worker_id, process, tasks, reader)

    def capacity(self) -> int:
        if self.bytes >= self.max_bytes:
            return 0
        return sum(self.in_flight - len(w.outstanding) for w in self.workers)

    def pending(self) -> int:
        return sum(len(w.outstanding) for w in self.workers)

    def submit(self, seq: int, item: WorkItem) -> None:
        worker = min(self.workers, key=lambda w: len(w.outstanding))
        self._send(worker, _Task(seq, item))

    def _send(self, worker: _Worker, task: _Task) -> None:
        if not worker.outstanding:
            worker.head_since = time.monotonic()
        worker.outstanding.append(task)
        self.bytes += len(task.item.data or b"")
        worker.tasks.put((task.seq, task.item))

    def _done(self, task: _Task) -> None:
        self.bytes -= len(task.item.data or b"")

    def poll(self, timeout: float) -> list[Prepared]:
        """Results ready within ``timeout`` seconds (crashed or timed-out items included)."""
        from multiprocessing.connection import wait

        out: list[Prepared] = []
        busy = [w for w in self.workers if w.outstanding]
        if busy:
            ready = wait([w.results for w in busy] + [w.process.sentinel for w in busy], timeout)
            for worker in busy:
                if worker.results in ready or worker.process.sentinel in ready:
                    out.extend(self._drain(worker))
        out.extend(self._check_health())
        return out

    def _drain(self, worker: _Worker) -> list[Prepared]:
        out = []
        try:
            while worker.outstanding and worker.results.poll():
                seq, prepared = worker.results.recv()
                if worker.outstanding[0].seq == seq:
                    self._done(worker.outstanding.popleft())
                    worker.head_since = time.monotonic()
                    out.append(prepared)
        except (EOFError, OSError):
            worker.broken = True  # it died; _check_health blames the item it held
        return out

    def _check_health(self) -> list[Prepared]:
        out = []
        now = time.monotonic()
        for index, worker in enumerate(self.workers):
            reason = None
            if worker.broken or not worker.process.is_alive():
                worker.process.join(timeout=1)
                reason = (
                    f"the decoding worker died (exit code {worker.process.exitcode}) on this item"
                )
            elif worker.outstanding and now - worker.head_since > self.item_timeout:
                reason = f"timed out after {self.item_timeout:g} s (--item-timeout)"
                worker.process.kill()
            if reason is None:
                continue
            out.extend(self._drain(worker))  # results it sent before dying are good
            worker.process.join(timeout=5)
            self.crashes += 1
            replacement = self._start()
            self.workers[index] = replacement
            if worker.outstanding:
                culprit = worker.outstanding.popleft()
                self._done(culprit)
                out.append(error_prepared(culprit.item, reason))
            for task in worker.outstanding:
                self._done(task)
                self._send(replacement, task)
            worker.tasks.cancel_join_thread()
            worker.results.close()
        return out

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError, ValueError):
                worker.tasks.put(None)
        deadline = time.monotonic() + 5
        for worker in self.workers:
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.tasks.cancel_join_thread()
            worker.results.close()


class InlinePool:
    """The same interface, preparing items in the calling process (``--workers 0``)."""

    def __init__(self, ctx: PrepareContext, in_flight: int = 1) -> None:
        from PIL import Image

        self.ctx = ctx
        self.in_flight = in_flight
        self.queue: deque[_Task] = deque()
        self.crashes = 0
        # Pillow refuses above twice its limit: keep --max-pixels the binding one, as in workers
        self._pillow_limit = Image.MAX_IMAGE_PIXELS
        allow_pixels(ctx.options.max_pixels)

    def capacity(self) -> int:
        return self.in_flight - len(self.queue)

    def pending(self) -> int:
        return len(self.queue)

    def submit(self, seq: int, item: WorkItem) -> None:
        self.queue.append(_Task(seq, item))

    def poll(self, timeout: float) -> list[Prepared]:
        out = []
        while self.queue:
            task = self.queue.popleft()
            try:
                out.append(prepare(task.item, self.ctx))
            except Exception as exc:
                out.append(
                    error_prepared(task.item, f"internal error ({type(exc).__name__}: {exc})"[:200])
                )
        return out

    def close(self) -> None:
        from PIL import Image

        self.queue.clear()
        Image.MAX_IMAGE_PIXELS = self._pillow_limit

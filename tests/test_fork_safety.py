"""Fork-based pools survive an OpenCV thread pool in the parent.

A process forked while OpenCV's pool threads exist deadlocks at its first OpenCV call
(the threads are not copied, their locks are). The DataLoader workers, the
preprocessing pool and the scoring pool fork; each calls
``deepsift.core.runtime.fork_safe_opencv`` first. This test makes the parent's pool
exist, then forks a child that calls OpenCV, in a fresh interpreter so the suite's own
OpenCV state does not matter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp, sys
    import cv2, numpy as np
    from deepsift.core.runtime import fork_safe_opencv

    def child(q):
        cv2.setNumThreads(1)
        q.put(int(cv2.resize(np.zeros((64, 64, 3), np.uint8), (32, 32)).sum()))

    if __name__ == "__main__":
        cv2.setNumThreads(2)
        image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
        for _ in range(3):  # OpenCV's pool threads now exist
            cv2.resize(image, (1000, 1000), interpolation=cv2.INTER_CUBIC)
        if sys.argv[1] == "safe":
            fork_safe_opencv()
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        p.join(20)
        hung = p.is_alive()
        p.kill()
        print("hung" if hung else f"ok {q.get()}")
    """
)


def run(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_fork_after_opencv_threads_is_safe_once_the_pool_is_stopped() -> None:
    assert run("safe") == "ok 0"

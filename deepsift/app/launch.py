"""Hydra entry-point glue shared by train.py and evaluate.py."""

from __future__ import annotations

import os
import sys
import tempfile


def quiet_non_main_ranks() -> None:
    """Under torchrun, ranks other than 0 write no Hydra output and no log file.

    Hydra names run directories by time, which can differ between ranks by a
    second; rank 0's directory is broadcast to the others once the process
    group is up, and only rank 0 writes into it.
    """
    if int(os.environ.get("RANK", "0")) > 0:
        scratch = tempfile.mkdtemp(prefix=f"deepsift-rank{os.environ['RANK']}-")
        sys.argv += [
            "hydra.output_subdir=null",
            f"hydra.run.dir={scratch}",
            "hydra/job_logging=disabled",
        ]

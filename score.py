"""Score images, videos and archives for synthetic content: ``python score.py INPUT... --out results.jsonl``.

A conventional command line (``python score.py --help``); one record per input
item, flushed as soon as it is scored; ``--resume`` continues an interrupted run.
See the README section "Batch scoring" and :mod:`deepsift.scoring`.
"""

from deepsift.app.score_cli import main

if __name__ == "__main__":
    main()

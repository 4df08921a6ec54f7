"""Evaluate a detector: ``python evaluate.py checkpoint=<run>/best.pt data=<name> [split=test]``.

Or official weights: ``python evaluate.py detector=<name> detector.weights=<file> data=<name>``.
Writes metrics as JSON, CSV and Markdown, per-image predictions, ROC and score PNGs.
Runs unchanged under ``torchrun --nproc_per_node=N evaluate.py ...``.
"""

import hydra
from omegaconf import DictConfig

from deepsift.app.launch import quiet_non_main_ranks
from deepsift.core.errors import user_errors


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from deepsift.app.evaluation import evaluate

    with user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    quiet_non_main_ranks()
    main()

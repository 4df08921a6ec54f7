"""Train a detector: ``python train.py detector=<name> data=<name> [overrides]``.

Hydra config groups: detector, data, trainer, logger, experiment (see configs/).
Runs unchanged under ``torchrun --nproc_per_node=N train.py ...``.
"""

import hydra
from omegaconf import DictConfig

from deepsift.app.launch import quiet_non_main_ranks
from deepsift.core.errors import user_errors


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from deepsift.app.training import train

    with user_errors():
        train(cfg)


if __name__ == "__main__":
    quiet_non_main_ranks()
    main()

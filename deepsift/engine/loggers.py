"""Experiment trackers for the ``logger`` config group.

``wandb`` defaults to ``mode: disabled`` so nothing touches the network unless
asked: ``logger.mode=offline`` writes a local run that ``wandb sync`` can upload
later, ``logger.mode=online`` needs an account. Only rank 0 logs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class NullLogger:
    """Logs nothing (metrics still go to the run directory's JSON files)."""

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        pass

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_image(self, key: str, path: Path) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    """Weights & Biases, started lazily in :meth:`start` (never at construction)."""

    def __init__(
        self,
        project: str = "deepsift",
        mode: str = "disabled",
        name: str | None = None,
        entity: str | None = None,
        tags: list[str] | None = None,
        group: str | None = None,
    ) -> None:
        if mode not in ("disabled", "offline", "online"):
            from deepsift.core.errors import UserError

            raise UserError(f"logger.mode={mode!r} is not one of disabled, offline, online")
        self.settings = {
            "project": project,
            "mode": mode,
            "name": name,
            "entity": entity,
            "tags": tags,
            "group": group,
        }
        self.run = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        if self.settings["mode"] == "disabled":
            return
        import wandb

        self.run = wandb.init(
            dir=str(run_dir), config=config, reinit="finish_previous", **self.settings
        )
        log.info("wandb run %s (%s) in %s", self.run.id, self.settings["mode"], run_dir)

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_image(self, key: str, path: Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

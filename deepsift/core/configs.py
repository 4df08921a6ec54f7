"""Where the configs live, and the two ways deepsift turns a config into objects.

* :data:`REPO_ROOT` and :data:`CONFIG_DIR`: the checkout and its ``configs/`` folder,
  the one place that knows where they are (the code runs from the checkout);
* :func:`config_names`: the options of a config group (``detector``, ``data``...);
* :func:`instantiate`: Hydra's, with one-line user errors;
* :func:`compose`: the config an entry point would get, for running it from Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepsift.core.errors import UserError

if TYPE_CHECKING:  # Hydra is imported where it is used: reading a path needs none of it
    from omegaconf import DictConfig

#: the checkout (``deepsift/core/configs.py`` is two folders below it)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: the Hydra config folder of train.py, evaluate.py and the tools
CONFIG_DIR = REPO_ROOT / "configs"


def config_names(group: str) -> list[str]:
    """The config names of ``configs/<group>/`` (``detector``, ``data``, ``experiment``...)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def instantiate(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a constructor's :class:`UserError` through.

    Hydra wraps every constructor exception in ``InstantiationException``, which
    would turn a one-line user error (bad ``methods``, unknown generator) into a
    stack trace; a mandatory setting left at ``???`` becomes one line too.
    """
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf.errors import MissingMandatoryValue

    try:
        return hydra_instantiate(config, **kwargs)
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, UserError):
                raise cause from None
            if isinstance(cause, MissingMandatoryValue):
                key = getattr(cause, "full_key", None) or "a setting"
                raise UserError(
                    f"{key} is required and not set; pass {key}=<value> on the command line"
                ) from None
            cause = cause.__cause__
        raise


def compose(
    config_name: str, overrides: Sequence[str] = (), run_dir: str | Path | None = None
) -> DictConfig:
    """The config ``train.py`` / ``evaluate.py`` would get, for running them from Python.

    >>> from deepsift.app.training import train
    >>> results = train(compose("train", ["detector=durall"], run_dir="runs/nb"))
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    run_dir = Path(run_dir) if run_dir else Path(cfg.paths.log_dir) / cfg.task_name / "python"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir.resolve())
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # as in a Hydra app: the hydra node is reachable only via ${hydra:...}
        del cfg["hydra"]
    return cfg

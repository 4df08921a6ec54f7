"""``evaluate.py experiment=reproduce/<id>``: a paper's whole table in one run, beside its numbers.

A reproduce experiment (``configs/experiment/reproduce/<id>.yaml``) lists every test set
of the table as an ``eval_data`` entry named like the published test set, and says
which published table it reproduces::

    reproduce:
      published: cnndetection          # configs/published/cnndetection.yaml
      table: blur_jpg_prob0.5_no_crop  # one of its tables
      tolerance: {acc: 0.5, ap: 0.5, auc: 0.005}
      unavailable: {ffiw: no FFIW loader}   # published sets deepsift cannot load, and why

Test sets whose root is not given (``root: null``) or cannot be read are evaluated
no further and come out as ``missing`` rows, with the reason. The comparison itself
is :mod:`deepsift.engine.reproduction`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from deepsift.app.pipeline import eval_data_sets, split_records
from deepsift.core import distributed as dist
from deepsift.core.configs import CONFIG_DIR, config_names
from deepsift.core.errors import UserError
from deepsift.engine.reproduction import (
    DEFAULT_TOLERANCE,
    compare,
    summarise,
    write_reproduction,
)

log = logging.getLogger(__name__)

PUBLISHED_DIR = CONFIG_DIR / "published"
#: Keys every published table carries (besides ``results``), checked on load.
TABLE_KEYS = ("table", "checkpoint", "source", "scale", "level", "results")


def load_published(name: str, table: str) -> dict[str, Any]:
    """One table of ``configs/published/<name>.yaml``, with the paper's fields merged in."""
    path = PUBLISHED_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(config_names("published"))
        raise UserError(f"reproduce.published: no file {path}; valid names: {names}")
    data = yaml.safe_load(path.read_text()) or {}
    tables = data.get("tables") or {}
    if table not in tables:
        raise UserError(
            f"reproduce.table: {path.name} has no table {table!r}; tables: {', '.join(tables)}"
        )
    entry = {k: v for k, v in data.items() if k != "tables"}
    entry.update(tables[table])
    entry["id"] = table
    absent = [k for k in TABLE_KEYS if k not in entry]
    if absent:
        raise UserError(f"{path.name}: table {table!r} lacks {', '.join(absent)}")
    return entry


def reproduce_sets(cfg: DictConfig) -> tuple[list[tuple[str, Any, str]], dict[str, str]]:
    """The ``eval_data`` sets that can be read, and why each other one cannot.

    Entries are resolved against the whole config first, so an entry may say
    ``root: ${data.root}`` (the ForenSynths generators share the run's root).
    """
    entries = OmegaConf.to_container(cfg.get("eval_data") or {}, resolve=True)
    sets: list[tuple[str, Any, str]] = []
    missing: dict[str, str] = {}
    for label, entry in entries.items():
        entry = dict(entry or {})
        if entry.get("root") in (None, "", "???"):
            missing[label] = f"no root: pass eval_data.{label}.root=<folder>"
            continue
        if not Path(str(entry["root"])).exists():
            missing[label] = f"root {entry['root']} does not exist"
            continue
        try:
            (found,) = eval_data_sets(OmegaConf.create({"eval_data": {label: entry}}))
            split_records(found[1], found[2])
        except UserError as exc:
            missing[label] = str(exc)
            continue
        sets.append(found)
    for label, reason in missing.items():
        if dist.is_main():
            log.warning("reproduce: test set %s is missing: %s", label, reason)
    return sets, missing


def write_report(
    cfg: DictConfig,
    run_dir: Path,
    results: dict[str, dict[str, Any]],
    missing: dict[str, str],
    info: dict[str, Any],
) -> dict[str, Path]:
    """reproduction.{json,md,csv,png} from the results of ``evaluate`` (keyed ``<label>/<split>``)."""
    spec = cfg.reproduce
    published = load_published(str(spec.published), str(spec.table))
    published["weights"] = info.get("weights") or info.get("checkpoint")
    published["evaluated_detector"] = info.get("detector")
    if published.get("detector") and info.get("detector") != published["detector"]:
        log.warning(
            "reproduce: the published table is of detector %s, this run evaluates %s",
            published["detector"],
            info.get("detector"),
        )
    by_label = {key.split("/", 1)[0]: metrics for key, metrics in results.items() if "/" in key}
    missing = {**{str(k): str(v) for k, v in (spec.get("unavailable") or {}).items()}, **missing}
    tolerance = (
        OmegaConf.to_container(spec.tolerance, resolve=True) if spec.get("tolerance") else None
    )
    rows = compare(published, by_label, missing, tolerance)
    published["tolerance"] = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    written = write_reproduction(run_dir, published, rows, plots=bool(cfg.metrics.plots))
    s = summarise(rows)
    print(f"\nReproduction ({written['md']}):\n{written['md'].read_text()}", flush=True)
    log.info(
        "reproduce %s/%s: %d of %d within tolerance, %d missing",
        spec.published,
        spec.table,
        s["within"],
        s["compared"],
        s["missing"],
    )
    return written

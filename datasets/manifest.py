"""Any list of labelled images: a CSV or JSONL manifest (``data=manifest``).

Columns (CSV header, or JSONL keys): ``path,label[,video,split,source,generator]`` and
any others (kept in ``Record.extra``). ``path`` is relative to the manifest's folder
or absolute; ``label`` is ``0``/``1`` or ``real``/``fake`` (any case); ``split`` is
``train``, ``val`` (also ``valid``, ``validation``) or ``test``, and rows without
one go to ``default_split``. Example::

    path,label,split,generator,video
    frames/a/000.png,real,train,,a
    gen/sdxl/17.png,1,test,sdxl,

Malformed rows (no path, a label or split not in the lists above, a JSONL line that
is not an object) are collected with their line numbers: ``on_bad_rows=error`` (the
default) raises one error naming them, ``skip`` logs them once and leaves them out
(:attr:`Manifest.bad_rows`). Rows whose file does not exist are left out, logged
once per split and listed by :meth:`Manifest.missing`.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
from pathlib import Path
from typing import Any

from datasets.splits import SPLITS, check_split, format_bad_lines
from deepsift.core.errors import UserError
from deepsift.core.records import FAKE, REAL, Record

log = logging.getLogger(__name__)

KNOWN = ("path", "label", "video", "split", "source", "generator")
SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
LABELS = {"0": REAL, "1": FAKE, "real": REAL, "fake": FAKE}


def _text(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    return None if value is None or str(value).strip() == "" else str(value).strip()


def parse_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    return LABELS.get(str(value).strip().lower())


class Manifest:
    """Records listed in a CSV / JSONL manifest (see the module docstring).

    Config (``configs/data/manifest.yaml``): ``root`` (the manifest file, or a folder
    holding ``manifest.csv`` or ``manifest.jsonl``), ``manifest`` (an explicit file,
    overriding that search), ``default_split``, ``on_bad_rows`` (``error`` | ``skip``),
    ``check_files`` (leave out rows whose file is absent; default true), ``name``.
    """

    name = "manifest"
    splits = SPLITS

    def __init__(
        self,
        root: str | None,
        manifest: str | None = None,
        default_split: str = "test",
        on_bad_rows: str = "error",
        check_files: bool = True,
        name: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser() if root else None
        self.manifest_arg = Path(manifest).expanduser() if manifest else None
        if default_split not in SPLITS:
            raise UserError(f"data.default_split={default_split!r}: use one of {', '.join(SPLITS)}")
        self.default_split = default_split
        if on_bad_rows not in ("error", "skip"):
            raise UserError(f"data.on_bad_rows={on_bad_rows!r}: use error or skip")
        self.on_bad_rows = on_bad_rows
        self.check_files = bool(check_files)
        if name:
            self.name = name
        self.bad_rows: list[tuple[int, str]] = []
        self._rows: list[tuple[str, Record]] | None = None
        self._missing: dict[str, list[str]] = {}
        self._warned: set[str] = set()

    @property
    def path(self) -> Path:
        """The manifest file."""
        if self.manifest_arg is not None:
            if not self.manifest_arg.is_file():
                raise UserError(f"data.manifest={self.manifest_arg} is not a file")
            return self.manifest_arg
        if self.root is not None and self.root.is_file():
            return self.root
        if self.root is not None and self.root.is_dir():
            for candidate in ("manifest.csv", "manifest.jsonl"):
                if (self.root / candidate).is_file():
                    return self.root / candidate
        raise UserError(
            f"no manifest at data.root={self.root}: pass data.root=<file.csv|file.jsonl> or a folder "
            "holding manifest.csv or manifest.jsonl"
        )

    def _raw_rows(self, path: Path) -> list[tuple[int, Any]]:
        """``(line number, row)`` pairs; a row is a dict, or an error string."""
        out: list[tuple[int, Any]] = []
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    out.append((n, f"not JSON ({exc.msg})"))
                    continue
                out.append((n, obj if isinstance(obj, dict) else "not a JSON object"))
            return out
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip() for f in reader.fieldnames or []]
            if not {"path", "label"} <= set(fields):
                raise UserError(
                    f"{path}: the header must name at least path and label (found {fields}); "
                    f"known columns: {', '.join(KNOWN)}"
                )
            reader.fieldnames = fields
            for row in reader:
                if None in row:
                    out.append((reader.line_num, "more values than header columns"))
                    continue
                out.append((reader.line_num, row))
        return out

    def _load(self) -> list[tuple[str, Record]]:
        if self._rows is not None:
            return self._rows
        path = self.path
        base = path.parent
        rows: list[tuple[str, Record]] = []
        bad: list[tuple[int, str]] = []
        for n, row in self._raw_rows(path):
            if isinstance(row, str):
                bad.append((n, row))
                continue
            file = str(row.get("path") or "").strip()
            label = parse_label(row.get("label"))
            split_text = str(row.get("split") or "").strip().lower()
            split = SPLIT_ALIASES.get(split_text) if split_text else self.default_split
            if not file:
                bad.append((n, "no path"))
                continue
            if label is None:
                bad.append((n, f"label {row.get('label')!r} is not 0/1/real/fake"))
                continue
            if split is None:
                bad.append((n, f"split {split_text!r} is not train/val/test"))
                continue
            full = Path(file).expanduser()
            full = full if full.is_absolute() else base / full
            text = functools.partial(_text, row)
            generator = text("generator") or ("real" if label == REAL else None)
            extra = {k: v for k, v in row.items() if k not in KNOWN and v not in (None, "")}
            rows.append(
                (
                    split,
                    Record(
                        str(full),
                        label,
                        video=text("video"),
                        generator=generator,
                        source=text("source") or file,
                        extra=extra,
                    ),
                )
            )
        self.bad_rows = bad
        if bad:
            message = f"{path}: {len(bad)} bad rows ({format_bad_lines(bad)})"
            if self.on_bad_rows == "error":
                raise UserError(f"{message}; fix them or set data.on_bad_rows=skip")
            log.warning("%s; left out (data.on_bad_rows=skip)", message)
        self._rows = rows
        return rows

    def records(self, split: str) -> list[Record]:
        check_split(split, self.splits, self.name)
        chosen = [r for s, r in self._load() if s == split]
        if not self.check_files:
            self._missing[split] = []
            return chosen
        present, missing = [], []
        for record in chosen:
            (present if Path(record.path).is_file() else missing).append(record)
        self._missing[split] = [r.path for r in missing]
        if missing and split not in self._warned:
            self._warned.add(split)
            log.warning(
                "%s/%s: %d of %d files listed in %s do not exist and are left out (first: %s)",
                self.name,
                split,
                len(missing),
                len(chosen),
                self.path,
                missing[0].path,
            )
        return present

    def missing(self, split: str) -> list[str]:
        """Files the manifest lists for ``split`` that do not exist."""
        if split not in self._missing:
            self.records(split)
        return list(self._missing[split])

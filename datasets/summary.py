"""Count a benchmark before using it, and list what its split or label files name but the folder lacks.

    python -m datasets.summary data=<name> data.root=<path> [overrides] [--out DIR] [--splits test]

The ``data`` config is composed exactly as ``train.py`` would compose it
(:func:`deepsift.core.configs.compose`) and instantiated. For each split the tool prints
a table of counts per generator (or manipulation method) and label, and writes
``summary.json`` to ``--out`` (default: the current folder)::

    {"<split>": {"unit": "videos"|"images", "real": n, "fake": n,
                 "by_generator": {"<generator>": n, ...}, "expected": n, "missing": n, ...},
     "missing": ["<path the benchmark names but the folder lacks>", ...]}

``real``, ``fake`` and ``by_generator`` count what is on disk; ``expected`` what the
split or label files name (present + missing), so a tree with 2 videos missing prints
138 real of 140 expected, never 140. Video benchmarks are counted in videos
(``unit: videos``) from their split / label files, whether or not the face-crop
cache exists; when it exists, a ``frames`` entry
adds the cached frame counts and the number of videos without crops
(``missing_crops`` lists them). A split that cannot be read gets an ``error`` entry
instead; the tool fails (exit status 2) only when no split can be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets.crop_cache import VideoItem
from datasets.splits import SPLITS
from deepsift.core.configs import config_names
from deepsift.core.errors import UserError, user_errors
from deepsift.core.records import REAL, Record

log = logging.getLogger(__name__)

SHOW_MISSING = 50


def load_source(overrides: Sequence[str]) -> Any:
    """Compose the ``train`` config with ``overrides`` and instantiate its ``data`` node."""
    from hydra.errors import HydraException

    from deepsift.core.configs import compose, instantiate

    options = config_names("data")
    if not any(o.split("=", 1)[0].lstrip("+") == "data" for o in overrides):
        raise UserError(f"pass data=<name> (one of {', '.join(options)}) and data.root=<path>")
    with tempfile.TemporaryDirectory(prefix="deepsift-summary-") as tmp:
        try:
            cfg = compose("train", overrides, run_dir=tmp)
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"cannot compose the config: {first}; data options: {', '.join(options)}"
            ) from None
    try:
        return instantiate(cfg.data, _convert_="all")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot build data={cfg.data.get('_target_')}: {exc}") from None


def _counts(items: Iterable[tuple[str | None, int]]) -> dict[str, Any]:
    pairs = Counter((g if g is not None else "(none)", label) for g, label in items)
    real = sum(n for (_, label), n in pairs.items() if label == REAL)
    fake = sum(n for (_, label), n in pairs.items() if label != REAL)
    by_generator: Counter[str] = Counter()
    by_label: dict[str, dict[str, int]] = {}
    for (g, label), n in pairs.items():
        by_generator[g] += n
        row = by_label.setdefault(g, {"real": 0, "fake": 0})
        row["real" if label == REAL else "fake"] += n
    return {
        "real": real,
        "fake": fake,
        "by_generator": dict(sorted(by_generator.items())),
        "by_generator_label": dict(sorted(by_label.items())),
    }


def summarize_split(source: Any, split: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """``(entry, missing paths, videos without crops)`` of one split."""
    if hasattr(source, "videos"):
        videos: list[VideoItem] = source.videos(split)
        present = [v for v in videos if Path(v.path).is_file()]
        missing = [v.path for v in videos if not Path(v.path).is_file()]
        # real / fake count the videos on disk; expected_* what the split files name
        entry = {"unit": "videos", **_counts((v.method, v.label) for v in present)}
        named = _counts((v.method, v.label) for v in videos)
        entry["expected"] = len(videos)
        entry["expected_by_generator_label"] = named["by_generator_label"]
        entry["missing"] = len(missing)
        no_crops: list[str] = []
        crops_root = getattr(source, "crops_root", None)
        if videos and crops_root is not None and Path(crops_root).is_dir():
            try:
                records: list[Record] = source.records(split)
                no_crops = source.missing(split)
                entry["frames"] = {
                    **_counts((r.generator, r.label) for r in records),
                    "videos_without_crops": len(no_crops),
                }
            except UserError as exc:
                no_crops = [v.rel for v in videos]
                entry["frames"] = {"error": str(exc), "videos_without_crops": len(videos)}
        return entry, missing, no_crops
    records = source.records(split)
    missing = list(source.missing(split)) if hasattr(source, "missing") else []
    entry = {"unit": "images", **_counts((r.generator, r.label) for r in records)}
    entry["expected"] = len(records) + len(missing)
    entry["missing"] = len(missing)
    return entry, missing, []


def summarize(source: Any, splits: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``summary.json`` payload for ``source`` (see the module docstring)."""
    chosen = list(splits) if splits else list(getattr(source, "splits", SPLITS))
    out: dict[str, Any] = {}
    missing: list[str] = []
    no_crops: list[str] = []
    for split in chosen:
        try:
            entry, lost, uncropped = summarize_split(source, split)
        except UserError as exc:
            out[split] = {"error": str(exc)}
            continue
        out[split] = entry
        missing.extend(p for p in lost if p not in missing)
        no_crops.extend(p for p in uncropped if p not in no_crops)
    out["missing"] = missing
    if no_crops:
        out["missing_crops"] = no_crops
    bad_rows = getattr(source, "bad_rows", None)
    if bad_rows:
        out["bad_rows"] = [{"line": n, "reason": why} for n, why in bad_rows]
    return out


def format_table(summary: dict[str, Any]) -> str:
    """Counts per split x generator x label, as aligned text."""
    rows = [("split", "unit", "generator", "real", "fake", "expected", "missing")]
    for split, entry in summary.items():
        if not isinstance(entry, dict) or split in ("missing", "missing_crops", "bad_rows"):
            continue
        if "error" in entry:
            rows.append((split, "-", "error", "-", "-", "-", "-"))
            continue
        named = entry.get("expected_by_generator_label", {})
        for g in sorted(set(entry["by_generator_label"]) | set(named)):
            counts = entry["by_generator_label"].get(g, {"real": 0, "fake": 0})
            expected = named.get(g)
            rows.append(
                (split, entry["unit"], g, str(counts["real"]), str(counts["fake"]),
                 str(expected["real"] + expected["fake"]) if expected else "", "")
            )  # fmt: skip
        rows.append(
            (split, entry["unit"], "all", str(entry["real"]), str(entry["fake"]),
             str(entry.get("expected", "")), str(entry["missing"]))
        )  # fmt: skip
        frames = entry.get("frames")
        if frames and "error" not in frames:
            rows.append(
                (split, "frames", "all", str(frames["real"]), str(frames["fake"]), "",
                 f"{frames['videos_without_crops']} videos without crops")
            )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]
    for split, entry in summary.items():
        if isinstance(entry, dict) and "error" in entry:
            lines.append(f"{split}: {entry['error']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.summary",
        description="Counts per split, label and generator of a data config; writes summary.json.",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides: data=<name> data.root=<path> ..."
    )
    parser.add_argument(
        "--out", default=".", help="folder for summary.json (default: the current folder)"
    )
    parser.add_argument(
        "--splits", default=None, help="comma-separated splits (default: all of the data's)"
    )
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with user_errors():
        source = load_source(args.overrides)
        splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
        summary = summarize(source, splits)
        split_entries = [
            v for k, v in summary.items() if k not in ("missing", "missing_crops", "bad_rows")
        ]
        if split_entries and all("error" in v for v in split_entries):
            raise UserError(split_entries[0]["error"])
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{getattr(source, 'name', 'data')} at {getattr(source, 'root', None)}")
    print(format_table(summary))
    missing = summary["missing"]
    if missing:
        print(f"\n{len(missing)} files named by the split / label files are missing:")
        for p in missing[:SHOW_MISSING]:
            print(f"  {p}")
        if len(missing) > SHOW_MISSING:
            print(f"  ... and {len(missing) - SHOW_MISSING} more (all in {path})")
    if summary.get("missing_crops"):
        print(f"\n{len(summary['missing_crops'])} videos have no face crops yet (listed in {path})")
    print(f"\nwrote {path}")
    sys.stdout.flush()
    return summary


if __name__ == "__main__":
    main()

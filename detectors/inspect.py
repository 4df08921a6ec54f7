"""What is this weights file? ``python -m detectors.inspect FILE [FILE ...] [--verify]``

For each file: its SHA-256 (and whether it matches a checksum the authors published),
how it was opened (nothing in it is run: ``torch.load(weights_only=True)``,
safetensors, HDF5, or the restricted unpickler for FaceForensics++'s whole models),
the container and a summary of its tensors, then the formats of
:mod:`detectors.formats` it matches: the detectors that read it, the architecture
arguments it needs, the official test-time protocol and where it comes from.
``--verify`` loads the file into each candidate detector strictly
(``load_detector(name, weights=FILE, **overrides)``) and says which succeed; that
builds the networks, so it takes seconds to minutes per candidate.

Exit status: 0 when every file matched a format (and, with ``--verify``, loaded into
at least one candidate), 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepsift.core.checkpoint import FORMAT, strip_prefixes, torch_load_weights_only
from deepsift.core.errors import UserError
from detectors.formats import FORMATS, WeightFormat, formats_for
from detectors.layers.keras_h5 import is_hdf5

#: containers whose one entry is the state dict (the trainers' ``torch.save({...})``)
WRAPPERS = ("model", "state_dict", "model_state_dict", "net", "netC")  # netC: PatchCraft


@dataclass
class Inspection:
    path: str
    sha256: str
    kind: str
    container: str
    tensors: int = 0
    parameters: int = 0
    example_keys: list[str] = field(default_factory=list)
    formats: list[WeightFormat] = field(default_factory=list)
    published: str | None = None
    deepsift_detector: str | None = None
    error: str | None = None
    verified: dict[str, str] = field(default_factory=dict)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_state(path: Path) -> tuple[str, str, dict[str, Any], str | None]:
    """``(kind, container, state, deepsift detector)`` of a torch or safetensors file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return "safetensors", "state dict", dict(load_file(str(path))), None
    try:
        payload = torch_load_weights_only(path)
    except Exception as exc:
        if _is_pickled_model(path):
            from detectors.layers.pickled_module import read_pickled_module

            class_name, state = read_pickled_module(path)
            return "pickled-module", f"whole pickled {class_name}", state, None
        raise UserError(
            f"{path} cannot be read safely ({type(exc).__name__}); it is not a torch, "
            "safetensors, HDF5 or pickled-model file"
        ) from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        name = (payload.get("detector") or {}).get("name")
        return "deepsift checkpoint", "deepsift checkpoint", dict(payload["state_dict"]), name
    container = "state dict"
    if isinstance(payload, dict):
        for key in WRAPPERS:
            if isinstance(payload.get(key), dict):
                others = sorted(k for k in payload if k != key)
                container = f"{{'{key}': state dict" + (
                    f", {', '.join(others)}}}" if others else "}"
                )
                payload = payload[key]
                break
    if not isinstance(payload, dict):
        raise UserError(f"{path} holds a {type(payload).__name__}, not a state dict")
    return "torch", container, strip_prefixes(payload), None


def _is_pickled_model(path: Path) -> bool:
    return path.suffix == ".p"


def inspect_file(path: str | Path) -> Inspection:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    digest = sha256_of(path)
    published = next(
        (f"{f.name}: {name}" for f in FORMATS for name, h in f.sha256.items() if h == digest),
        None,
    )
    if is_hdf5(path):
        from detectors.layers.keras_h5 import read_keras_h5

        layers = read_keras_h5(path)
        keras = [f for f in FORMATS if f.kind == "keras-h5"]
        result = Inspection(
            str(path), digest, "keras-h5", f"{len(layers)} Keras layers", formats=keras
        )
        result.example_keys = [layer.name for layer in layers[:6]]
        result.published = published
        return result
    kind, container, state, name = _open_state(path)
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    result = Inspection(
        str(path),
        digest,
        kind,
        container,
        tensors=len(tensors),
        parameters=sum(int(v.numel()) for v in tensors.values()),
        example_keys=list(tensors)[:6],
        published=published,
        deepsift_detector=name,
    )
    if kind == "pickled-module":
        result.formats = [f for f in FORMATS if f.kind == "pickled-module"]
    elif kind != "deepsift checkpoint":
        result.formats = formats_for(tensors)
    return result


def verify(result: Inspection) -> None:
    """Load the file into each candidate detector strictly; record ``ok`` or the error."""
    from detectors.factory import load_detector

    for fmt in result.formats:
        for name in fmt.detectors:
            try:
                load_detector(name, weights=result.path, **dict(fmt.overrides))
            except (UserError, RuntimeError, ValueError, KeyError) as exc:
                result.verified[name] = f"does not load: {str(exc).splitlines()[0][:200]}"
            else:
                result.verified[name] = "loads strictly"


def describe(result: Inspection) -> str:
    lines = [
        f"{result.path}",
        f"  sha256: {result.sha256}"
        + (
            f" (published checksum of {result.published})"
            if result.published
            else " (no published checksum matches)"
        ),
        f"  opened as: {result.kind}; container: {result.container}",
    ]
    if result.tensors:
        lines.append(
            f"  tensors: {result.tensors}, {result.parameters:,} values; first keys: "
            + ", ".join(result.example_keys)
        )
    if result.deepsift_detector is not None:
        lines.append(
            f"  a deepsift checkpoint of detector {result.deepsift_detector!r}: "
            f"load_detector('{result.path}') or checkpoint={result.path}"
        )
    for fmt in result.formats:
        args = "".join(f", {k}={v!r}" for k, v in fmt.overrides.items())
        lines += [
            f"  format: {fmt.name} ({fmt.source})",
            f"    detectors: {', '.join(fmt.detectors)}; "
            f"load_detector('{fmt.detectors[0]}', weights='{result.path}'{args})",
            f"    official test-time input: {fmt.protocol}",
        ]
    if not result.formats and result.deepsift_detector is None:
        lines.append("  format: none of the known formats (python -m detectors.inspect --list)")
    for name, verdict in result.verified.items():
        lines.append(f"  verify {name}: {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detectors.inspect",
        description="Which format a weights file is, which detector and protocol it implies.",
    )
    parser.add_argument("files", nargs="*", help="weights files to inspect")
    parser.add_argument("--verify", action="store_true", help="load into each candidate")
    parser.add_argument("--list", action="store_true", help="list the known formats")
    args = parser.parse_args(argv)
    if args.list or not args.files:
        for fmt in FORMATS:
            print(f"{fmt.name}: {', '.join(fmt.detectors)} ({', '.join(fmt.released)})")
        return 0
    status = 0
    for name in args.files:
        try:
            result = inspect_file(name)
        except UserError as exc:
            print(f"{name}\n  error: {exc}")
            status = 1
            continue
        if args.verify:
            verify(result)
        print(describe(result))
        known = result.formats or result.deepsift_detector is not None
        loaded = not args.verify or any(v == "loads strictly" for v in result.verified.values())
        status |= 0 if known and loaded else 1
    return status


if __name__ == "__main__":
    sys.exit(main())

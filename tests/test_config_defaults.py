"""Every value a detector YAML sets equals the Python default it shadows, unless marked.

Python is where a detector's defaults live: the constructor's signature, the
module's ``DEFAULT_PREPROCESSING`` (merged under the config's ``preprocessing``
by ``merge_preprocessing``) and ``DEFAULT_TRAIN_PREPROCESSING`` (replaced as a
whole by the config's ``train_preprocessing``, see ``train_variant``), the
optimiser or scheduler a constructor builds when given ``None``, and the objects
it builds from ``None`` (AEROBLADE's autoencoder, LGrad's gradient model:
compared as built, from the same seed).
``configs/detector/<name>.yaml`` repeats them, so that Hydra overrides such as
``detector.preprocessing.size=128`` work without a ``+`` and the file shows
what a run uses; this test keeps every copy equal to its source, so that
``load_detector(name)`` and the Python class give the same detector.

A deliberate difference (a value the default data or the reference's run
needs and the class's default should not have) is marked in the YAML by a
comment on the key's line, ``# override: <reason>``; a marker on a mapping key
(``optimizer:``) covers everything under it. A marker on a value that equals
the Python default fails too, so markers cannot go stale.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from deepsift.core.configs import instantiate
from detectors.factory import CONFIG_DIR, build_detector
from detectors.preprocessing import Preprocessing, merge_preprocessing, train_variant

DETECTOR_CONFIGS = sorted((CONFIG_DIR / "detector").glob("*.yaml"))
#: top-level keys that are not constructor arguments (``build_detector`` pops them)
NOT_ARGUMENTS = {"_target_", "input", "weights", "face_crop"}
#: arguments whose Python default is built in the constructor body from ``None``
FACTORIES = {"optimizer": "optimizer_factory", "scheduler": "scheduler_factory"}
PLAIN = (bool, int, float, str, tuple, type(None))
MARKER = re.compile(r"#\s*override:\s*(?P<reason>\S.*)$")
FIX = (
    "fix: make the YAML value equal to the Python default (or change the Python default "
    "if the YAML has the right value), or, for a deliberate difference, add "
    "`# override: <reason>` at the end of that YAML line"
)


# -- reading the YAML ---------------------------------------------------------------------
def marked_overrides(path: Path) -> dict[str, str]:
    """Dotted key -> reason, for each key whose line ends in ``# override: <reason>``."""
    lines = path.read_text().splitlines()
    found: dict[str, str] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            dotted = f"{prefix}{key.value}"
            line = lines[key.start_mark.line]
            # the comment is on the key's line (a mapping value starts on the next one)
            match = MARKER.search(line)
            if match:
                found[dotted] = match["reason"].strip()
            walk(value, dotted + ".")

    walk(yaml.compose(path.read_text()), "")
    return found


def covered(key: str, overrides: Mapping[str, str]) -> str | None:
    """The marked key covering ``key`` (itself or a parent), if any; ``a/b`` (a difference
    that cannot be told apart between keys) needs a marker for each."""
    if "/" in key:
        marks = [covered(part, overrides) for part in key.split("/")]
        return None if None in marks else "/".join(m for m in marks if m)
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in overrides:
            return ".".join(parts[:i])
    return None


# -- comparing values ---------------------------------------------------------------------
def plain(value: Any) -> Any:
    """A comparable form: tuples as lists, partials and classes by name and keywords.

    A partial without arguments is its function (``{_target_: SGD, _partial_: true}``
    in a YAML equals ``torch.optim.SGD`` in Python).
    """
    if isinstance(value, functools.partial):
        if not value.args and not value.keywords:
            return plain(value.func)
        out = {"_target_": plain(value.func), **{k: plain(v) for k, v in value.keywords.items()}}
        if value.args:
            out["_args_"] = plain(list(value.args))
        return out
    if inspect.isclass(value) or inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def target_class(config: Mapping[str, Any]) -> type:
    module, _, name = config["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)


@functools.lru_cache(maxsize=1)  # one detector alive at a time: some weigh hundreds of MB
def python_default(cls: type) -> Any:
    """The detector a user of the class gets with no arguments."""
    return cls()


def module_default(cls: type, name: str) -> dict[str, Any] | None:
    """``DEFAULT_PREPROCESSING`` / ``DEFAULT_TRAIN_PREPROCESSING`` of the class's module."""
    value = getattr(sys.modules[cls.__module__], name, None)
    return None if value is None else dict(value)


def location(cls: type, name: str) -> str:
    if module_default(cls, name) is None:
        return f"{cls.__name__}'s default (no {cls.__module__}.{name}: Preprocessing's own)"
    return f"{cls.__name__}'s default ({cls.__module__}.{name})"


def shown(path: Path) -> str:
    return (
        str(path.relative_to(CONFIG_DIR.parent)) if path.is_relative_to(CONFIG_DIR) else str(path)
    )


@dataclasses.dataclass
class Difference:
    key: str
    yaml_value: Any
    python_value: Any
    source: str
    #: replaces "but <source> is <python_value>" where there is no one value to show
    detail: str = ""

    def message(self, path: Path) -> str:
        if self.detail:
            return f"{shown(path)}: {self.key}: {self.detail}"
        return (
            f"{shown(path)}: {self.key} = {self.yaml_value!r}, but "
            f"{self.source} is {self.python_value!r}"
        )


def preprocessing_differences(cls: type, config: Mapping[str, Any]) -> Iterator[Difference]:
    """The fields the config's ``preprocessing`` sets, as ``merge_preprocessing`` applies them
    over the module's ``DEFAULT_PREPROCESSING`` (an empty one: the class takes the
    :class:`Preprocessing` defaults), and the effective ``train_preprocessing``."""
    defaults = module_default(cls, "DEFAULT_PREPROCESSING") or {}
    fields = {f.name for f in dataclasses.fields(Preprocessing)}
    given = dict(config.get("preprocessing") or {})
    for key in sorted(set(given) - fields):
        value = given.pop(key)
        yield Difference(
            f"preprocessing.{key}",
            value,
            None,
            "",
            f"{value!r}, but Preprocessing has no such field",
        )
    python = merge_preprocessing(defaults, None)
    configured = merge_preprocessing(defaults, given)
    source = location(cls, "DEFAULT_PREPROCESSING")
    ours, theirs = configured.to_dict(), python.to_dict()
    for key in given:
        if ours[key] != theirs[key]:
            yield Difference(f"preprocessing.{key}", ours[key], theirs[key], source)
    if "train_preprocessing" not in config:
        return
    # the config's train_preprocessing replaces DEFAULT_TRAIN_PREPROCESSING as a whole:
    # compare what training gets, on the same test-time base
    train_defaults = module_default(cls, "DEFAULT_TRAIN_PREPROCESSING")
    got = train_variant(configured, config["train_preprocessing"], train_defaults).to_dict()
    want = train_variant(configured, None, train_defaults).to_dict()
    source = location(cls, "DEFAULT_TRAIN_PREPROCESSING")
    for key in got:
        if got[key] != want[key]:
            yield Difference(f"train_preprocessing.{key}", got[key], want[key], source)


def argument_differences(cls: type, config: Mapping[str, Any]) -> Iterator[Difference]:
    """Constructor arguments the config sets, against the signature (or, for an argument
    whose default the constructor builds from ``None``, against what it builds)."""
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    nested: list[str] = []
    for key, value in config.items():
        if key in NOT_ARGUMENTS or key in ("preprocessing", "train_preprocessing"):
            continue
        if key not in parameters:
            if not takes_any:
                yield Difference(
                    key, value, None, "", f"{value!r}, but {cls.__name__} takes no such argument"
                )
            continue
        default = parameters[key].default
        if default is inspect.Parameter.empty:
            continue  # required: nothing to shadow
        if key in FACTORIES:
            built = instantiate(value, _convert_="all") if value is not None else None
            python = getattr(python_default(cls), FACTORIES[key])
            if plain(built) != plain(python):
                yield Difference(
                    key, plain(built), plain(python), f"what {cls.__name__}({key}=None) uses"
                )
        elif default is None and isinstance(value, Mapping):
            nested.append(key)  # a spec of an object the constructor builds from None
        elif plain(value) != plain(default):
            yield Difference(key, value, default, f"{cls.__name__}'s signature default")
    if nested:
        # objects the constructor builds from None: build the class with only these
        # arguments from the YAML and with none, from the same seed, and compare
        torch.manual_seed(0)
        configured = build_detector(
            {"_target_": config["_target_"], **{k: config[k] for k in nested}}
        )
        torch.manual_seed(0)
        ours, theirs = describe(configured), describe(cls())
        if ours != theirs:
            diff = list(difflib.unified_diff(theirs, ours, "python", "yaml", lineterm="", n=0))
            yield Difference(
                "/".join(nested),
                ours,
                theirs,
                "",
                f"builds something else than {cls.__name__}() builds from None:\n"
                + "\n".join(diff[:24]),
            )


def describe(module: nn.Module) -> list[str]:
    """A built detector as lines: each submodule's type and plain attributes, each tensor's
    shape and sum (so a seed, a factor or a layer size that differs shows). The
    detector's own attributes come from its other arguments, checked one by one."""
    lines = []
    for name, sub in module.named_modules():
        if not name:
            continue
        attrs = {
            k: v
            for k, v in sorted(vars(sub).items())
            if not k.startswith("_") and k != "training" and isinstance(v, PLAIN)
        }
        lines.append(f"{name or '.'}: {type(sub).__name__} {attrs}")
    for name, tensor in module.state_dict().items():
        lines.append(f"{name}: {tuple(tensor.shape)} sum {tensor.double().sum().item():.8g}")
    return lines


def differences(path: Path) -> tuple[list[Difference], dict[str, str]]:
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(config, dict)
    cls = target_class(config)
    found = [*argument_differences(cls, config), *preprocessing_differences(cls, config)]
    return found, marked_overrides(path)


# -- tests --------------------------------------------------------------------------------
def test_every_detector_config_is_checked() -> None:
    assert len(DETECTOR_CONFIGS) >= 20


@pytest.mark.parametrize("path", DETECTOR_CONFIGS, ids=lambda p: p.stem)
def test_yaml_repeats_the_python_defaults(path: Path) -> None:
    """Every difference is marked, and every marker marks a difference."""
    found, overrides = differences(path)
    unmarked = [d for d in found if covered(d.key, overrides) is None]
    assert not unmarked, (
        f"{len(unmarked)} value(s) in the YAML differ from the Python default they shadow:\n"
        + "\n".join(d.message(path) for d in unmarked)
        + f"\n{FIX}"
    )
    used = {mark for d in found for mark in (covered(d.key, overrides) or "").split("/")}
    stale = sorted(set(overrides) - used)
    assert not stale, (
        f"{shown(path)}: {', '.join(stale)} marked `# override:` but equal to the Python "
        f"default; drop the marker (and the YAML comment that explains it)"
    )


@pytest.mark.parametrize("path", DETECTOR_CONFIGS, ids=lambda p: p.stem)
def test_module_defaults_are_what_the_class_uses(path: Path) -> None:
    """The constants compared above are the ones the constructor applies."""
    cls = target_class(OmegaConf.to_container(OmegaConf.load(path)))
    detector = python_default(cls)
    defaults = module_default(cls, "DEFAULT_PREPROCESSING") or {}
    assert detector.preprocessing == Preprocessing(**defaults), cls.__name__
    if hasattr(detector, "train_preprocessing"):
        train = train_variant(
            detector.preprocessing, None, module_default(cls, "DEFAULT_TRAIN_PREPROCESSING")
        )
        assert detector.train_preprocessing == train, cls.__name__


@pytest.mark.parametrize(
    ("line", "drifted", "key", "marked_line"),
    [
        ("  resize: square\n", "  resize: shorter\n", "preprocessing.resize", "  resize: shorter"),
        ("loss: mse\n", "loss: bce\n", "loss", "loss: bce"),
        ("  lr: 1.0e-3\n", "  lr: 1.0e-4\n", "optimizer", "optimizer:"),
    ],
    ids=["preprocessing", "argument", "optimizer"],
)
def test_the_check_catches_a_drift(
    tmp_path: Path, line: str, drifted: str, key: str, marked_line: str
) -> None:
    """A changed preprocessing field, argument or optimiser setting of meso4.yaml is
    found, and ``# override:`` on its line (or its mapping's) makes it deliberate."""
    original = CONFIG_DIR / "detector" / "meso4.yaml"
    source = original.read_text()
    assert source.count(line) == 1
    before, _ = differences(original)
    path = tmp_path / "meso4.yaml"
    changed = source.replace(line, drifted)
    path.write_text(changed)
    found, overrides = differences(path)
    new = [d for d in found if d not in before]
    assert [d.key for d in new] == [key] and not overrides
    assert f"{key} = " in new[0].message(path)
    assert changed.count(marked_line + "\n") == 1
    path.write_text(changed.replace(marked_line + "\n", marked_line + "  # override: a test\n"))
    overrides = marked_overrides(path)
    assert overrides == {key: "a test"} and covered(key, overrides) == key

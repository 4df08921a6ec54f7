"""Robustness sweeps: perturbations, identity levels, presets, reports and determinism."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from deepsift.app.evaluation import evaluate
from deepsift.app.pipeline import Context, evaluate_split
from deepsift.core.configs import compose, config_names
from deepsift.core.errors import UserError
from deepsift.core.perturb import Perturbation, parse_perturbation, perturb
from deepsift.engine.loops import run_inference
from deepsift.engine.reporting import split_metrics
from deepsift.engine.robustness import check_metric, parse_families, run_sweep
from detectors.factory import build_detector
from tests.conftest import make_folder_tree

PRESETS = config_names("robustness")
FAST = [
    "detector=timm_classifier",
    "detector.preprocessing.size=32",
    "trainer=cpu",
    "trainer.num_workers=0",
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_tree(tmp_path_factory.mktemp("robust_tree"), per_class=6)


def image(seed: int = 0, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8))


def same_metrics(a: dict, b: dict) -> bool:
    """Equal, NaN included (JSON writes NaN as the same token)."""
    keep = ("frame", "video", "by_generator", "n_skipped")
    return json.dumps({k: a.get(k) for k in keep}, sort_keys=True) == json.dumps(
        {k: b.get(k) for k in keep}, sort_keys=True
    )


# --------------------------------------------------------------------------- perturbations


def test_jpeg_30_changes_the_image_and_identity_levels_do_not() -> None:
    img = image()
    out = perturb(img, "jpeg:30")
    assert out.size == img.size and out.mode == "RGB"
    diff = np.abs(np.asarray(out, dtype=np.int16) - np.asarray(img, dtype=np.int16))
    assert diff.mean() > 5
    for spec in ("none", None, "blur:0", "noise:0", "resize:1", "resize_back:1.0", "crop:1"):
        assert perturb(img, spec) is img, spec
        assert Perturbation(str(spec) if spec else "none").is_identity


def test_every_family_changes_the_image_as_documented() -> None:
    img = image(1)
    w, h = img.size
    assert perturb(img, "resize:0.5").size == (round(w * 0.5), round(h * 0.5))
    assert perturb(img, "resize:1.5:bilinear").size == (round(w * 1.5), round(h * 1.5))
    assert perturb(img, "resize_back:0.5").size == img.size
    assert perturb(img, "crop:0.5").size == (round(w * 0.5), round(h * 0.5))
    for spec in ("webp:30", "blur:2", "noise:10", "resize_back:0.5", "blur:2+jpeg:50"):
        out = perturb(img, spec, key="x")
        assert not np.array_equal(np.asarray(out), np.asarray(img)), spec
    # a chain applies its steps left to right
    chain = perturb(img, "resize:0.5+jpeg:75")
    by_hand = perturb(perturb(img, "resize:0.5"), "jpeg:75")
    assert np.array_equal(np.asarray(chain), np.asarray(by_hand))


def test_noise_depends_on_seed_and_key_only() -> None:
    img = image(2)
    a = np.asarray(perturb(img, "noise:8", seed=3, key="a/b.png"))
    assert np.array_equal(a, np.asarray(perturb(img, "noise:8", seed=3, key="a/b.png")))
    assert not np.array_equal(a, np.asarray(perturb(img, "noise:8", seed=4, key="a/b.png")))
    assert not np.array_equal(a, np.asarray(perturb(img, "noise:8", seed=3, key="a/c.png")))


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("jpg2000:50", "'jpg2000:50' is not a perturbation; valid names: none, jpeg"),
        ("jpeg:101", "out of range"),
        ("jpeg", "needs a value"),
        ("blur:two", "not a number"),
        ("resize:0.5:cubic", "names no filter"),
        ("crop:1.5", "out of range"),
    ],
)
def test_bad_specs_are_one_line_user_errors(spec: str, named: str) -> None:
    with pytest.raises(UserError) as info:
        parse_perturbation(spec)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_unknown_perturbation_in_a_preset_names_the_option(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(UserError) as info:
        parse_families({"jpeg": {"kind": "jpg2000", "levels": [50]}})
    message = str(info.value)
    assert message.startswith("robustness.families.jpeg.kind: 'jpg2000' is not a perturbation")
    assert "\n" not in message
    with pytest.raises(UserError, match=r"robustness.families.chain.levels: .*'sharpen:1'"):
        parse_families({"chain": {"levels": ["none", "blur:1+sharpen:1"]}})
    with pytest.raises(UserError, match=r"robustness\.metric: .accuracy. is not a metric"):
        check_metric("accuracy")
    # through evaluate.py's entry: the preset is checked before the detector is built
    cfg = compose(
        "eval",
        [*FAST, "data=folder", f"data.root={tree}", "robustness=sidbench",
         "robustness.families.jpeg.kind=jpg2000"],
        tmp_path,
    )  # fmt: skip
    with pytest.raises(UserError, match=r"^robustness.families.jpeg.kind: 'jpg2000'"):
        evaluate(cfg)
    assert not (tmp_path / "metrics_test.json").exists()


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes(preset: str, tmp_path: Path) -> None:
    cfg = compose("eval", [f"robustness={preset}"], tmp_path)
    families = parse_families(OmegaConf.to_container(cfg.robustness.families, resolve=True))
    assert families and all(len(f.levels) >= 2 for f in families)
    assert any(level.is_identity for f in families for level in f.levels)
    check_metric(cfg.robustness.metric)


def test_presets_hold_their_reference_levels(tmp_path: Path) -> None:
    def specs(preset: str) -> dict[str, list[str]]:
        cfg = compose("eval", [f"robustness={preset}"], tmp_path)
        fams = parse_families(OmegaConf.to_container(cfg.robustness.families, resolve=True))
        return {f.name: [lv.spec for lv in f.levels] for f in fams}

    assert set(PRESETS) >= {"cnndetection", "sidbench", "laundering", "full"}
    cnn = specs("cnndetection")
    assert cnn["blur"] == [f"blur:{s}" for s in range(5)]
    assert cnn["jpeg"] == ["none", *(f"jpeg:{q}" for q in range(100, 29, -10))]
    sid = specs("sidbench")
    assert sid["jpeg"][1:] == ["jpeg:95", "jpeg:90", "jpeg:50", "jpeg:30"]
    assert sid["blur"][1:] == ["blur:2", "blur:4"] and sid["blur_jpeg"][1:] == ["blur:2+jpeg:50"]
    assert "resize:0.5+jpeg:75" in specs("laundering")["social"]
    assert compose("eval", [], tmp_path).get("robustness") is None  # off by default


# --------------------------------------------------------------------------- sweeps


def test_identity_levels_give_the_plain_evaluation_exactly(tmp_path: Path, tree: Path) -> None:
    cfg = compose("eval", [*FAST, "data=folder", f"data.root={tree}"], tmp_path)
    torch.manual_seed(0)
    detector = build_detector(cfg.detector, "timm_classifier").eval()
    from datasets.folder import FolderTree

    records = FolderTree(root=str(tree)).records("test")
    ctx = Context(tmp_path, torch.device("cpu"), None, False)
    plain, _ = evaluate_split(detector, records, cfg, ctx, "test")

    batch = cfg.trainer.eval_batch_size  # as the plain evaluation: the same float sums

    def evaluate_level(perturbation):
        result = run_inference(
            detector, records, ctx.device, batch_size=batch, perturb=perturbation, log_skipped=False
        )
        return split_metrics(result, records)

    families = parse_families(
        {
            "identity": {"levels": ["none", "blur:0", "noise:0", "resize_back:1", "crop:1"]},
            "jpeg": {"kind": "jpeg", "levels": ["none", 30]},
        }
    )
    calls = []
    sweep = run_sweep(families, lambda p: calls.append(p) or evaluate_level(p), seed=0)
    assert calls[0] is None and len(calls) == 2  # the identity once, then JPEG 30
    for level in sweep["families"]["identity"]["levels"]:
        assert same_metrics(level["metrics"], plain), level["spec"]
    jpeg = sweep["families"]["jpeg"]["levels"]
    assert same_metrics(jpeg[0]["metrics"], plain)
    # JPEG 30 changes what the detector sees, so its scores
    base = run_inference(detector, records, ctx.device, batch_size=batch, log_skipped=False)
    q30 = run_inference(
        detector, records, ctx.device, batch_size=batch, perturb=Perturbation("jpeg:30")
    )
    assert np.array_equal(base.indices, q30.indices)
    assert np.abs(base.probs - q30.probs).max() > 1e-4


def test_noise_is_the_same_whatever_the_batch_order_or_worker(tmp_path: Path, tree: Path) -> None:
    cfg = compose("eval", [*FAST, "data=folder", f"data.root={tree}"], tmp_path)
    torch.manual_seed(0)
    detector = build_detector(cfg.detector, "timm_classifier").eval()
    from datasets.folder import FolderTree

    records = [r for r in FolderTree(root=str(tree)).records("test") if "broken" not in r.path]
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    noise = Perturbation("noise:6", seed=5)
    a = run_inference(detector, records, torch.device("cpu"), batch_size=1, perturb=noise)
    b = run_inference(detector, shuffled, torch.device("cpu"), batch_size=7, perturb=noise)
    by_path_a = {records[i].path: p for i, p in zip(a.indices, a.probs, strict=True)}
    by_path_b = {shuffled[i].path: p for i, p in zip(b.indices, b.probs, strict=True)}
    assert by_path_a.keys() == by_path_b.keys()
    for path, prob in by_path_a.items():
        assert prob == pytest.approx(by_path_b[path], abs=1e-6), path
    # a DataLoader worker process (the perturbation is pickled into it) draws the same noise
    c = run_inference(
        detector, records, torch.device("cpu"), batch_size=1, num_workers=1, perturb=noise
    )
    assert np.array_equal(a.probs, c.probs)


def run_preset(tree: Path, out: Path, *extra: str) -> dict:
    torch.manual_seed(0)  # the same random-init detector in every run
    cfg = compose(
        "eval", [*FAST, "data=folder", f"data.root={tree}", "robustness=sidbench", *extra], out
    )
    return evaluate(cfg)


@pytest.fixture(scope="module")
def preset_run(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("robust_run")
    run_preset(
        tree,
        out,
        "+robustness.families.noise.kind=noise",
        "+robustness.families.noise.levels=[0,4]",
        "+eval_data.again.config=folder",
        f"+eval_data.again.root={tree}",
    )
    return out


def test_a_preset_run_writes_reports_and_figures(preset_run: Path) -> None:
    for name in ("test", "again-test"):
        for ext in ("json", "csv", "md"):
            assert (preset_run / f"robustness_{name}.{ext}").is_file(), (name, ext)
        for family in ("jpeg", "blur", "blur_jpeg", "noise"):
            with Image.open(preset_run / f"robustness_{name}_{family}.png") as png:
                png.load()
                assert png.format == "PNG" and png.size[0] > 100
    for family in ("jpeg", "blur", "blur_jpeg", "noise"):  # one curve per set
        with Image.open(preset_run / f"robustness_{family}.png") as png:
            assert png.format == "PNG"
    report = json.loads((preset_run / "robustness_test.json").read_text())
    plain = json.loads((preset_run / "metrics_test.json").read_text())["metrics"]
    assert report["preset"] == "sidbench" and report["metric"] == "ap"
    jpeg = report["families"]["jpeg"]["levels"]
    assert [lv["label"] for lv in jpeg] == ["none", "95", "90", "50", "30"]
    assert same_metrics(jpeg[0]["metrics"], plain)
    assert report["families"]["blur"]["levels"][0]["perturbation"] == "none"
    assert set(jpeg[-1]["metrics"]["by_generator"]) == {"gen_a", "gen_b"}
    assert jpeg[-1]["metrics"]["n_skipped"] == 1
    csv_text = (preset_run / "robustness_test.csv").read_text()
    assert "jpeg/30/frame/gen_a" in csv_text and "blur:2+jpeg:50" in csv_text
    md = (preset_run / "robustness_test.md").read_text()
    assert "### jpeg" in md and "ap by generator" in md


def test_two_runs_give_identical_metrics(preset_run: Path, tree: Path, tmp_path: Path) -> None:
    run_preset(
        tree,
        tmp_path,
        "+robustness.families.noise.kind=noise",
        "+robustness.families.noise.levels=[0,4]",
        "metrics.plots=false",
    )
    first = json.loads((preset_run / "robustness_test.json").read_text())["families"]
    second = json.loads((tmp_path / "robustness_test.json").read_text())["families"]
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert not list(tmp_path.glob("robustness_*.png"))

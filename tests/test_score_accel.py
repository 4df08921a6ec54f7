"""--precision and channels_last selection (deepsift.scoring.accel); CI has no GPU, so the CUDA
branches are driven with torch.device("cuda") objects and a stated bf16 support."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from deepsift.app.score_cli import main
from deepsift.core.errors import UserError
from deepsift.scoring.accel import is_convolutional, resolve_precision, use_channels_last
from deepsift.scoring.calibration import DEFAULT_BANDS
from deepsift.scoring.models import Ensemble, Member
from deepsift.scoring.runner import MemorySink, RunOptions, Scorer
from tests.scoring_fixtures import TINY, noise

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("precision", "device", "bf16", "expected"),
    [
        ("auto", CPU, None, None),
        ("fp32", CPU, None, None),
        ("32", CPU, None, None),
        ("bf16", CPU, None, torch.bfloat16),  # CPU autocast supports bfloat16
        ("auto", CUDA, True, torch.bfloat16),
        ("auto", CUDA, False, torch.float16),
        ("fp16", CUDA, True, torch.float16),
        ("16", CUDA, True, torch.float16),
        ("bf16", CUDA, True, torch.bfloat16),
        ("fp32", CUDA, True, None),
    ],
)
def test_precision_per_device(
    precision: str, device: torch.device, bf16: bool | None, expected: torch.dtype | None
) -> None:
    assert resolve_precision(precision, device, bf16_supported=bf16) is expected


@pytest.mark.parametrize(
    ("precision", "device", "message"),
    [
        (
            "fp16",
            CPU,
            "--precision fp16 needs a CUDA device (scoring on cpu); use --precision bf16",
        ),
        ("16", CPU, "--precision fp16 needs a CUDA device"),
        ("bf16", CUDA, "--precision bf16 but this GPU does not support bfloat16"),
        ("fp8", CPU, "--precision 'fp8': use auto, fp32, bf16 or fp16"),
    ],
)
def test_precision_refusals(precision: str, device: torch.device, message: str) -> None:
    with pytest.raises(UserError) as exc:
        resolve_precision(precision, device, bf16_supported=False)
    assert message in str(exc.value)


class _Model(nn.Module):
    def eval_transform(self, sample: dict) -> dict:  # what the Scorer asks of a detector
        return sample


class _Conv(_Model):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3))
        self.head = nn.Linear(16, 1)


class _ViTLike(_Model):
    """A patch-embedding convolution, then mostly linear layers (as CLIP's ViT)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 8, stride=8)
        self.blocks = nn.Sequential(*(nn.Linear(32, 32) for _ in range(8)))


def test_channels_last_only_for_convolutional_models_on_cuda() -> None:
    assert is_convolutional(_Conv()) and not is_convolutional(_ViTLike())
    assert not is_convolutional(nn.Identity())  # no parameters
    assert use_channels_last(_Conv(), CUDA)
    assert not use_channels_last(_Conv(), CPU)
    assert not use_channels_last(_ViTLike(), CUDA)


def test_scorer_puts_convolutional_members_in_channels_last_on_cuda() -> None:
    """The shared Scorer (both engines) converts the weights of conv members once, and
    asks for channels_last inputs for them only; on the CPU it leaves models alone."""
    conv, vit = _Conv(), _ViTLike()
    members = [Member("conv", conv, False, {}), Member("vit", vit, False, {})]
    ensemble = Ensemble(members)
    scorer = Scorer(ensemble, DEFAULT_BANDS, RunOptions(inputs=[], device=CUDA), MemorySink())
    assert scorer.channels_last == {id(conv): True, id(vit): False}
    weight = conv.body[2].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()  # really NHWC now, not a 1x1 no-op
    assert vit.patch.weight.is_contiguous()
    cpu = _Conv()
    scorer = Scorer(
        Ensemble([Member("c", cpu, False, {})]), DEFAULT_BANDS, RunOptions(inputs=[]), MemorySink()
    )
    assert scorer.channels_last == {id(cpu): False} and cpu.body[2].weight.is_contiguous()


def test_cli_bf16_on_cpu_autocasts_and_fp16_on_cpu_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """bf16 on the CPU really runs under autocast (scores move by bf16 rounding, no more);
    fp16 on the CPU fails in one line before --out is opened."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(noise(i, 40, 40)).save(folder / f"{i}.png")
    quick = ["--workers", "0", "--quiet", "--no-provenance", "--no-pdq", "--device", "cpu"]
    scores = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)  # the same random weights in both runs
        out = tmp_path / f"{precision}.jsonl"
        main([str(folder), "--out", str(out), *TINY, *quick, "--precision", precision])
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        scores[precision] = {r["path"]: r["score"] for r in rows}
    assert scores["fp32"].keys() == scores["bf16"].keys() and len(scores["fp32"]) == 3
    deltas = [abs(scores["fp32"][p] - scores["bf16"][p]) for p in scores["fp32"]]
    assert 0 < max(deltas) < 0.05, deltas
    out = tmp_path / "fp16.jsonl"
    with pytest.raises(SystemExit) as exc:
        main([str(folder), "--out", str(out), *TINY, *quick, "--precision", "fp16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --precision fp16 needs a CUDA device"), err
    assert not out.exists()

"""The engine treats every detector alike: auxiliary inputs and losses need no special case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deepsift.core.records import Record, RecordDataset
from deepsift.engine.loops import (
    ShardSampler,
    make_loader,
    run_inference,
    train_one_epoch,
    wrap_for_training,
)
from detectors.base import Detector


class TwoViewMaskDetector(Detector):
    """A toy detector in the shape of CORE / Face X-ray: two augmented views, a mask input,
    and two auxiliary losses beside the classification loss."""

    def __init__(self) -> None:
        super().__init__(
            {"size": 16, "mean": [0.5] * 3, "std": [0.5] * 3},
            optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        )
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.mask_head = nn.Conv2d(8, 1, 1)
        self.classifier = nn.Linear(8, 1)

    def transform(self, sample: dict, train: bool = False) -> dict:
        out = {"image": self.preprocessing(sample["image"], train=train)}
        if train:
            out["image2"] = self.preprocessing(
                sample["image"].transpose(Image.FLIP_LEFT_RIGHT), train=True
            )
            record = sample["record"]
            out["mask"] = torch.full((1, 16, 16), float(record.label))
        return out

    def forward(self, batch: dict) -> dict:
        features = self.features(batch["image"])
        return {
            "logits": self.classifier(features.mean((2, 3))).squeeze(1),
            "mask_logits": self.mask_head(features),
        }

    def training_step(self, batch: dict) -> dict:
        first = self(batch)
        second = self({"image": batch["image2"]})
        cls = F.binary_cross_entropy_with_logits(first["logits"], batch["label"])
        mask = F.binary_cross_entropy_with_logits(first["mask_logits"], batch["mask"])
        consistency = F.mse_loss(torch.sigmoid(first["logits"]), torch.sigmoid(second["logits"]))
        return {
            "loss": cls + mask + consistency,
            "cls": cls,
            "mask": mask,
            "consistency": consistency,
        }


def make_records(tmp_path: Path, n: int = 16) -> list[Record]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        label = i % 2
        pixels = (
            rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            if label
            else np.full((16, 16, 3), 128, np.uint8)
        )
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        records.append(Record(str(path), label, generator="real" if label == 0 else "noise"))
    (tmp_path / "bad.png").write_bytes(b"")
    records.append(Record(str(tmp_path / "bad.png"), 1, generator="noise"))
    return records


def test_auxiliary_inputs_and_losses_go_through_the_engine(tmp_path: Path) -> None:
    torch.manual_seed(0)
    detector = TwoViewMaskDetector()
    records = make_records(tmp_path)
    optimizer, _ = detector.configure_optimizers()
    dataset = RecordDataset(records, detector.train_transform)
    loader = make_loader(
        dataset, batch_size=8, num_workers=0, sampler=ShardSampler(len(dataset), 0, 1)
    )
    step = wrap_for_training(detector, torch.device("cpu"))
    first, skipped = train_one_epoch(
        step, detector, loader, optimizer, torch.device("cpu"), None, None
    )
    assert set(first) == {"loss", "cls", "mask", "consistency"}
    assert [path for path, _ in skipped] == [str(tmp_path / "bad.png")]
    for _ in range(30):
        last, _ = train_one_epoch(
            step, detector, loader, optimizer, torch.device("cpu"), None, None
        )
    assert last["loss"] < first["loss"] * 0.5
    result = run_inference(detector, records, torch.device("cpu"), batch_size=5)
    assert len(result.probs) == 16 and result.skipped[0][0].endswith("bad.png")
    assert list(result.indices) == list(range(16))
    assert result.probs[result.labels == 1].min() > result.probs[result.labels == 0].max()


def test_predict_accepts_paths_pil_and_arrays(tmp_path: Path) -> None:
    detector = TwoViewMaskDetector()
    records = make_records(tmp_path, n=2)
    array = np.zeros((20, 24, 3), dtype=np.uint8)
    probs = detector.predict(
        [records[0].path, Image.open(records[1].path), array, array[..., 0]], batch_size=3
    )
    assert probs.shape == (4,) and ((probs >= 0) & (probs <= 1)).all()

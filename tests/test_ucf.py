"""UCF: DeepfakeBench's inference and training losses, the decoder, strict layout, training."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from deepsift.core.errors import UserError
from deepsift.core.records import Record
from detectors import load_detector
from detectors.base import count_parameters
from detectors.formats import formats_for
from detectors.ucf import UCF, ConditionalDecoder, contrastive_loss
from tests.detector_checks import random_images, transformed_batch
from tests.official.images import reference_images
from tests.official.weights import load_reference, official_state_dict, write_official_file

SMALL = 64  # the smallest input whose 1/32 map has 2 x 2 positions (AdaIN needs a variance)
#: one DeepfakeBench Xception in adjust_channel mode: the timm/Cadene Xception 20,806,952
#: + adjust_channel (1x1 conv 2048 -> 512 with bias, BatchNorm 512) + last_linear 2048 -> 2
XCEPTION = 20_806_952
ADJUST = 2048 * 512 + 512 + 2 * 512
LAST_LINEAR = 2048 * 2 + 2
#: Conditional_UNet: three double 3x3 convs 512->256->256, 256->128->128, 128->64->64, 1x1 -> 3
DECODER = sum(
    cin * cout * 9 + cout + cout * cout * 9 + cout
    for cin, cout in ((512, 256), (256, 128), (128, 64))
) + (64 * 3 + 3)
HEADS = (256 * 512 + 512 + 512 * 5 + 5) + (256 * 512 + 512 + 512 * 2 + 2)
BLOCKS = 2 * (512 * 256 + 256 + 2 * (256 * 256 + 256))
#: DeepfakeBench's UCFDetector (ucf.yaml, four FF++ methods + real); make_ucf.py counted
#: its parameters from the model itself: 46,838,430
REFERENCE_PARAMETERS = 2 * (XCEPTION + ADJUST + LAST_LINEAR) + DECODER + HEADS + BLOCKS


def test_full_size_parameter_count_on_meta() -> None:
    assert REFERENCE_PARAMETERS == 46_838_430 == load_reference("deepfakebench_ucf")["parameters"]
    with torch.device("meta"):
        det = UCF()
    # ours: the two never-called encoder last_linear layers are not built
    assert count_parameters(det) == REFERENCE_PARAMETERS - 2 * LAST_LINEAR


# -- DeepfakeBench's own outputs (tests/official/make_ucf.py) ------------------------------
@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    reference = load_reference("deepfakebench_ucf")
    path = write_official_file(reference, tmp_path_factory.mktemp("ucf") / "ucf_best.pth")
    return path, reference


def _reference_batch(det: UCF, reference: dict) -> torch.Tensor:
    images = reference_images(reference["images_seed"])
    return torch.stack(
        [det.eval_transform({"image": Image.fromarray(a), "record": None})["image"] for a in images]
    )


def test_training_losses_match_deepfakebench(official: tuple[Path, dict]) -> None:
    """DeepfakeBench's get_train_losses (eval mode, Python ``random`` seeded: the fingerprint
    shuffle and the contrastive loss's draws) on the same seeded ucf_best.pth and pictures.
    The inference logits are checked against DeepfakeBench's by test_official_parity."""
    path, reference = official
    det = load_detector("ucf", weights=str(path)).eval()
    assert det.preprocessing.resize_to == 256 and det.preprocessing.resize_backend == "cv2"
    batch = {
        "image": _reference_batch(det, reference),
        "label": torch.tensor(reference["train_batch"]["label"], dtype=torch.float32),
        "label_spe": torch.tensor(reference["train_batch"]["label_spe"]),
    }
    names = {
        "overall": "loss",
        "common": "loss_common",
        "specific": "loss_specific",
        "reconstruction": "loss_reconstruction",
        "contrastive": "loss_contrastive",
    }
    seed = "1"  # the seeds' contrastive losses differ by > 0.05: the draws must line up
    theirs = reference["train_losses"]
    assert abs(theirs["0"]["contrastive"] - theirs[seed]["contrastive"]) > 0.05
    random.seed(int(seed))
    with torch.no_grad():
        ours = det.training_step(batch)
    for their_name, our_name in names.items():
        assert float(ours[our_name]) == pytest.approx(theirs[seed][their_name], abs=2e-5, rel=1e-5)


def test_layout_is_recognised_and_strict(official: tuple[Path, dict], tmp_path: Path) -> None:
    _, reference = official
    state = official_state_dict(reference)
    assert [f.name for f in formats_for(state)] == ["DeepfakeBench UCF"]
    det = UCF()
    bad = {k: v for k, v in state.items() if k != "con_gan.dconv_up2.0.weight"}
    bad["con_gan.extra"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"con_gan\.dconv_up2\.0\.weight") as error:
        det.load_weights(tmp_path / "bad.pth")
    assert "con_gan.extra" in str(error.value)
    wrong = dict(state)
    wrong["encoder_c.last_linear.weight"] = torch.zeros(3, 2048)  # not the 2-class head
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match=r"encoder_c\.last_linear\.weight"):
        det.load_weights(tmp_path / "wrong.pth")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    det.load_weights(tmp_path / "ddp.pth")  # DataParallel's prefix is fine


# -- parts against independent forms ------------------------------------------------------
class ReferenceDecoder(nn.Module):
    """DeepfakeBench's Conditional_UNet as written there: nn.Upsample modules, AdaIN as a view."""

    def __init__(self, ours: ConditionalDecoder) -> None:
        super().__init__()
        self.ours = ours
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.up_last = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True)

    @staticmethod
    def adain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bs, ch = x.shape[:2]
        xs = (x.view(bs, ch, -1).var(-1) + 1e-5).sqrt().view(bs, ch, 1, 1)
        xm = x.view(bs, ch, -1).mean(-1).view(bs, ch, 1, 1)
        ys = (y.reshape(bs, ch, -1).var(-1) + 1e-5).sqrt().view(bs, ch, 1, 1)
        ym = y.reshape(bs, ch, -1).mean(-1).view(bs, ch, 1, 1)
        return (x - xm.expand(x.size())) / xs.expand(x.size()) * ys.expand(x.size()) + ym.expand(
            x.size()
        )

    def forward(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o = self.ours
        x = o.dconv_up3(self.up(self.adain(x, c)))
        c = o.dconv_up3(self.up(c))
        x = o.dconv_up2(self.up(self.adain(x, c)))
        c = o.dconv_up2(self.up(c))
        x = o.dconv_up1(self.up(self.adain(x, c)))
        return torch.tanh(self.up_last(o.conv_last(x)))


def test_decoder_matches_the_reference_form() -> None:
    torch.manual_seed(0)
    decoder = ConditionalDecoder().eval()
    c, x = torch.randn(2, 512, 2, 3), torch.randn(2, 512, 2, 3)
    with torch.no_grad():
        ours = decoder(c, x)
        ref = ReferenceDecoder(decoder)(c, x)
    assert ours.shape == (2, 3, 64, 96)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="64 px"):
        decoder(torch.randn(1, 512, 1, 1), torch.randn(1, 512, 1, 1))


def test_contrastive_loss_by_hand() -> None:
    # two reals then two fakes; with margin 3 and every distance below it, each triplet
    # term is (|a - p| - |a - n| + 3) averaged; identical features -> 4 * 3
    common = torch.zeros(4, 2)
    specific = torch.zeros(4, 2)
    random.seed(0)
    value = contrastive_loss(common, specific, torch.tensor([0, 0, 1, 1]), margin=3.0)
    assert value.item() == pytest.approx(12.0, abs=1e-4)
    # reals at 0 and fakes at 10 along x: the common terms vanish (negatives far), the
    # specific ones too when the methods are the classes
    common = torch.tensor([[0.0, 0], [0, 0], [10, 0], [10, 0]])
    value = contrastive_loss(common, common.clone(), torch.tensor([0, 0, 1, 1]), margin=3.0)
    assert value.item() == pytest.approx(0.0, abs=1e-4)


# -- training ---------------------------------------------------------------------------
def _records() -> list[Record]:
    return [
        Record("r0.png", 0, generator="real"),
        Record("f0.png", 1, generator="Deepfakes"),
        Record("r1.png", 0, generator="real"),
        Record("f1.png", 1, generator="NeuralTextures"),
    ]


def test_transform_gives_the_method_labels() -> None:
    det = UCF(preprocessing={"size": SMALL, "resize_to": SMALL, "jpeg_prob": 0.0})
    batch = transformed_batch(det, random_images(4, 80), [0, 1, 0, 1], _records(), train=True)
    assert batch["image"].shape == (4, 3, SMALL, SMALL)
    assert batch["label_spe"].tolist() == [0, 1, 0, 4]
    bad = [Record("x.png", 1, generator="StyleGAN")]
    with pytest.raises(UserError, match=r"detector\.methods"):
        transformed_batch(det, random_images(1, 80), [1], bad, train=True)
    assert "label_spe" not in transformed_batch(det, random_images(1, 80), [1], bad)  # eval


def test_training_reaches_every_parameter_and_overfits() -> None:
    torch.manual_seed(0)
    random.seed(0)
    det = UCF(preprocessing={"size": SMALL, "resize_to": SMALL, "hflip": 0.0, "jpeg_prob": 0.0})
    batch = transformed_batch(det, random_images(2, SMALL), [0, 1], _records()[:2], train=True)
    # a batch without a pair: the two classification terms only
    single = {k: v[:1] for k, v in batch.items()}
    assert set(det.training_step(single)) == {"loss", "loss_common", "loss_specific"}

    optimizer = torch.optim.Adam(det.parameters(), lr=1e-3)
    losses = []
    for step in range(10):
        det.train()
        out = det.training_step(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if step == 0:  # every parameter takes part in the loss
            assert {"loss_reconstruction", "loss_contrastive"} <= set(out)
            missing = [
                n
                for n, p in det.named_parameters()
                if p.grad is None or not p.grad.isfinite().all()
            ]
            assert missing == []
        optimizer.step()
        losses.append((float(out["loss"].detach()), float(out["loss_common"])))
        if losses[-1][1] < 0.05:
            break
    assert losses[-1][1] < 0.05 and losses[-1][0] < 0.6 * losses[0][0], losses
    det.eval()
    with torch.no_grad():
        logits = det({"image": batch["image"]})["logits"]
    assert logits[1] > logits[0]  # the fake scores above the real with running statistics too

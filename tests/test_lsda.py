"""LSDA: DeepfakeBench's training losses and latent augmentation, strict layout, training."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from deepsift.core.records import Record
from detectors import load_detector
from detectors.base import count_parameters
from detectors.formats import formats_for
from detectors.lsda import LSDA, IResNet, augment_domains, mixup_methods
from tests.detector_checks import random_images, transformed_batch
from tests.official.images import reference_images
from tests.official.weights import HERE, write_official_file

SMALL = 64
TRAINING_REFERENCE = HERE / "training" / "deepfakebench_lsda_efficientnet_real.json"
#: efficientnet_pytorch's EfficientNet-B4 (19,341,616 with its 1000-class _fc of 1,793,000)
#: + DeepfakeBench's 1x1 conv 1792 -> 512
EFFICIENTNET = 19_341_616 + (1792 * 512 + 512)
EFFICIENTNET_FC = 1792 * 1000 + 1000
#: DeepfakeBench's IResNet-100 (iresnet.py, counted from its stages): stem 64 + PReLU,
#: blocks (BN, conv, BN, PReLU, conv, BN; a 1x1 conv + BN shortcut first in each stage),
#: BN 512, fc 25088 -> 512, features BatchNorm1d 512
IRESNET_EMBEDDING = 512 * 512 * 49 + 512 + 2 * 512


def _iresnet100() -> int:
    total = 3 * 64 * 9 + 2 * 64 + 64
    inplanes = 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 13, 30, 3), strict=True):
        for b in range(blocks):
            cin = inplanes if b == 0 else planes
            total += 2 * cin + cin * planes * 9 + 2 * planes + planes + planes * planes * 9
            total += 2 * planes
            if b == 0:
                total += cin * planes + 2 * planes
        inplanes = planes
    return total + 2 * 512 + IRESNET_EMBEDDING


HEADS = (
    (1024 * 512 + 512 + 2 * (512 * 512 * 9 + 512))  # fc_weights
    + (512 * 256 + 256 + 256 * 5 + 5)  # mlp (5 domains)
    + (512 * 512 + 512 + 512 * 2 + 2)  # binary_classifier
)
#: DeepfakeBench's LSDADetector (lsda.yaml): 4 teachers + student + IResNet-100 + heads;
#: make_lsda.py counted 172,095,031 from the model itself
REFERENCE_PARAMETERS = 5 * EFFICIENTNET + _iresnet100() + HEADS


def test_full_size_parameter_count_on_meta() -> None:
    from tests.official.weights import load_reference

    assert REFERENCE_PARAMETERS == 172_095_031 == load_reference("deepfakebench_lsda")["parameters"]
    with torch.device("meta"):
        det = LSDA()
    # ours: the five never-called ImageNet _fc and the IResNet's embedding are not built
    assert count_parameters(det) == REFERENCE_PARAMETERS - 5 * EFFICIENTNET_FC - IRESNET_EMBEDDING
    frozen = [n for n, p in det.named_parameters() if not p.requires_grad]
    assert frozen and all(
        n.startswith(("encoder_c.layer1", "encoder_c.layer2", "encoder_c.layer3")) for n in frozen
    )


# -- DeepfakeBench's own training losses (tests/official/make_lsda.py) ---------------------
def test_training_losses_match_deepfakebench(tmp_path: Path) -> None:
    """DeepfakeBench's get_losses (eval mode; Python's and torch's generators seeded: the
    latent augmentation and mixup) on one group of the reference pictures, the same
    seeded lsda_best.pth (``real_encoder: efficientnetb4``). Inference: test_official_parity."""
    import json

    reference = json.loads(TRAINING_REFERENCE.read_text())
    path = write_official_file(reference, tmp_path / reference["filename"])
    det = load_detector("lsda", weights=str(path), real_encoder="efficientnet_b4").eval()
    assert det.preprocessing.resize_to == 256 and det.preprocessing.resize_backend == "cv2"
    images = reference_images(reference["images_seed"])
    x = torch.stack(
        [
            det.eval_transform({"image": Image.fromarray(images[i]), "record": None})["image"]
            for i in reference["train_group"]["images"]
        ]
    )
    batch = {"image": x, "label_spe": torch.tensor(reference["train_group"]["label"])}
    names = {
        "overall": "loss",
        "domain": "loss_domain",
        "deepfake": "loss_deepfake",
        "distillation": "loss_distillation",
        "real_loss": "loss_real",
    }
    theirs = reference["train_losses"]
    seed = "1"  # the seeds' distillation losses differ by > 1: the draws must line up
    assert abs(theirs["0"]["distillation"] - theirs[seed]["distillation"]) > 1.0
    random.seed(int(seed))
    torch.manual_seed(int(seed))
    with torch.no_grad():
        ours = det.training_step(batch)
    for their_name, our_name in names.items():
        assert float(ours[our_name]) == pytest.approx(theirs[seed][their_name], abs=1e-4, rel=1e-5)


def test_layout_is_recognised_and_strict(tmp_path: Path) -> None:
    from tests.official.weights import load_reference

    reference = load_reference("deepfakebench_lsda")
    state = {k: torch.empty(shape, device="meta") for k, shape, _ in reference["keys"]}
    assert [f.name for f in formats_for(state)] == ["DeepfakeBench LSDA"]
    det = LSDA(methods=("Deepfakes",), real_encoder="efficientnet_b4")
    partial = {
        "model.binary_classifier.2.weight": torch.zeros(2, 512),
        "model.extra": torch.zeros(1),
    }
    torch.save(partial, tmp_path / "lsda_best.pth")
    with pytest.raises(UserError, match=r"missing keys: binary_classifier\.2\.bias") as error:
        det.load_weights(tmp_path / "lsda_best.pth")
    assert "unexpected keys: extra" in str(error.value)


# -- parts ---------------------------------------------------------------------------------
def _reference_augment(maps: torch.Tensor) -> torch.Tensor:
    """DeepfakeBench's augment_domains as written there: lambdas over each channel map."""
    domain_number = len(maps[0])
    means, hards = [], []
    for d in range(domain_number):
        pool = torch.cat([group[d] for group in maps], dim=0)
        mean = torch.mean(pool, dim=0)
        means.append(mean)
        distances = torch.tensor([torch.norm(z - mean) for z in pool])
        hards.append(pool[torch.argmax(distances)])
    out = []
    for group in maps:
        domains = []
        for d, fm in enumerate(group):
            augs = [
                lambda z, d=d: z + random.random() * (hards[d] - z),
                lambda z, d=d: z + random.random() * (z - means[d]),
                lambda z: (
                    z
                    + (lambda s, w: w * (torch.randn_like(z) * s))(random.random(), random.random())
                ),
                lambda z, fm=fm: z + random.random() * (fm[0] - fm[1]),
            ]
            chosen = random.choice(augs)
            domains.append(torch.stack([chosen(z) for z in fm]))
        out.append(torch.stack(domains))
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(6))
def test_latent_augmentation_follows_the_reference_draws(seed: int) -> None:
    maps = torch.randn(2, 3, 8, 4, 4, generator=torch.Generator().manual_seed(seed))
    random.seed(seed)
    torch.manual_seed(seed)
    expected = _reference_augment(maps)
    random.seed(seed)
    torch.manual_seed(seed)
    torch.testing.assert_close(augment_domains(maps), expected, atol=1e-6, rtol=1e-6)


def test_mixup_mixes_within_each_group() -> None:
    maps = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2)
    torch.manual_seed(0)
    mixed = mixup_methods(maps)
    assert mixed.shape == maps.shape
    # a convex combination of the group's own maps: inside the group's range
    assert (mixed[0] <= 3 + 1e-6).all() and (mixed[1] >= 4 - 1e-6).all()


def test_iresnet_map_and_freeze() -> None:
    net = IResNet(layers=(1, 1, 1, 1)).eval()
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    assert not any(p.requires_grad for p in net.layer2.parameters())
    assert all(p.requires_grad for p in net.layer4.parameters())


# -- training ---------------------------------------------------------------------------
def test_training_reaches_every_parameter_and_overfits() -> None:
    torch.manual_seed(0)
    random.seed(0)
    det = LSDA(
        methods=("Deepfakes",),
        real_encoder="efficientnet_b4",
        preprocessing={"size": SMALL, "resize_to": SMALL, "hflip": 0.0, "jpeg_prob": 0.0},
    )
    records = [Record("r.png", 0, generator="real"), Record("f.png", 1, generator="Deepfakes")]
    batch = transformed_batch(det, random_images(2, SMALL), [0, 1], records, train=True)
    assert batch["label_spe"].tolist() == [0, 1]
    with pytest.raises(UserError, match=r"detector\.methods"):
        bad = [Record("x.png", 1, generator="FaceSwap")]
        transformed_batch(det, random_images(1, SMALL), [1], bad, train=True)
    assert set(det.training_step({k: v[:1] for k, v in batch.items()})) == {"loss", "loss_deepfake"}

    optimizer = torch.optim.Adam([p for p in det.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for step in range(10):
        det.train()
        out = det.training_step(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if step == 0:
            missing = [
                n
                for n, p in det.named_parameters()
                if p.requires_grad and (p.grad is None or not p.grad.isfinite().all())
            ]
            assert missing == []
        optimizer.step()
        history.append((float(out["loss_deepfake"]), float(out["loss_domain"])))
        if history[-1][0] < 0.05:
            break
    # the student's real/fake loss overfits the pair, and the domain loss falls (the total is
    # not the measure: L_real, pushed away for Deepfakes, goes negative, down to -2 a position)
    assert history[-1][0] < 0.05 and history[-1][1] < history[0][1], history

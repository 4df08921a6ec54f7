"""Capsule-Forensics-v2: official checkpoint parity, the reference's logit and loss, training.

``OfficialCapsuleNet`` below is ``CapsuleNet(num_class=2)`` of the official
``model_big.py`` (github.com/nii-yamagishilab/Capsule-Forensics-v2), written
from that file: StatsNet, View, the ten primary capsules, the RoutingLayer
forward with its ``squeeze``/``transpose``, and ``classes, class_``. Its VGG is
torchvision's ``vgg19().features[0:19]`` (built here with torchvision's
``make_layers``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.capsule_forensics import CapsuleForensics, capsule_loss
from tests.detector_checks import (
    overfit,
    parameters_without_gradient,
    random_images,
    transformed_batch,
)

#: official CapsuleNet(2): 10 capsules x 157,043 + route_weights 2 x 10 x 4 x 8
REFERENCE_CAPSULES = 1_571_070
#: torchvision vgg19().features[0:19] (conv1_1 ... conv3_4)
REFERENCE_VGG = 2_325_568
#: DeepfakeBench's CapsuleNetDetector holds both (its backbone is None)
REFERENCE_TOTAL = REFERENCE_CAPSULES + REFERENCE_VGG
#: the reference loss's floor: CE of softmax probabilities whose capsules have norm < 1,
#: at best d = 1 per component: 4 log(1 + exp(-tanh(1/2))) (see capsule_loss)
LOSS_FLOOR = 4 * math.log(1 + math.exp(-math.tanh(0.5)))


class StatsNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.data.shape[0], x.data.shape[1], x.data.shape[2] * x.data.shape[3])
        return torch.stack((torch.mean(x, 2), torch.std(x, 2)), dim=1)


class View(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.shape)


class OfficialFeatureExtractor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.capsules = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(256, 64, kernel_size=3, stride=1, padding=1),
                    nn.BatchNorm2d(64),
                    nn.ReLU(),
                    nn.Conv2d(64, 16, kernel_size=3, stride=1, padding=1),
                    nn.BatchNorm2d(16),
                    nn.ReLU(),
                    StatsNet(),
                    nn.Conv1d(2, 8, kernel_size=5, stride=2, padding=2),
                    nn.BatchNorm1d(8),
                    nn.Conv1d(8, 1, kernel_size=3, stride=1, padding=1),
                    nn.BatchNorm1d(1),
                    View(-1, 8),
                )
                for _ in range(10)
            ]
        )

    @staticmethod
    def squash(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        squared_norm = (tensor**2).sum(dim=dim, keepdim=True)
        return squared_norm / (1 + squared_norm) * tensor / torch.sqrt(squared_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [capsule(x.detach()) for capsule in self.capsules]
        return self.squash(torch.stack(outputs, dim=-1), dim=-1)


class OfficialRouting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.route_weights = nn.Parameter(torch.randn(2, 10, 4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(2, 1)
        priors = self.route_weights[:, None, :, :, :] @ x[None, :, :, :, None]
        priors = priors.transpose(1, 0)
        logits = torch.zeros(*priors.size())
        for i in range(2):
            probs = F.softmax(logits, dim=2)
            outputs = OfficialFeatureExtractor.squash((probs * priors).sum(dim=2, keepdim=True), 3)
            if i != 1:
                logits = logits + priors * outputs
        outputs = outputs.squeeze()
        if len(outputs.shape) == 3:
            return outputs.transpose(2, 1).contiguous()
        return outputs.unsqueeze_(dim=0).transpose(2, 1).contiguous()


class OfficialCapsuleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fea_ext = OfficialFeatureExtractor()
        self.routing_stats = OfficialRouting()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classes = F.softmax(self.routing_stats(self.fea_ext(x)), dim=-1)
        return classes, classes.detach().mean(dim=1)


def torchvision_vgg_stem() -> nn.Sequential:
    return make_layers(cfgs["E"][:11])  # 64, 64, M, 128, 128, M, 256 x 4, M: features[0:19]


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Random official weights (capsule_21.pt layout) and a torchvision VGG-19 file."""
    torch.manual_seed(0)
    vgg = torchvision_vgg_stem().eval()
    capnet = OfficialCapsuleNet()
    norms = [m for m in capnet.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for norm in norms:  # BatchNorm statistics from one training-mode pass, scales and shifts
        norm.momentum = None
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.normal_(0.0, 0.2)
    capnet.train()
    with torch.no_grad():
        capnet(vgg(torch.randn(6, 3, 64, 64)))
    for norm in norms:
        norm.momentum = 0.1
    capnet.eval()
    folder = tmp_path_factory.mktemp("capsule")
    vgg_file = folder / "vgg19-dcbb9e9d.pth"
    vgg_state = {f"features.{k}": v for k, v in vgg.state_dict().items()}
    vgg_state["features.34.weight"] = torch.zeros(512, 512, 3, 3)  # deeper VGG-19 layers
    vgg_state["classifier.6.weight"] = torch.zeros(1000, 4096)
    torch.save(vgg_state, vgg_file)
    capsule_file = folder / "capsule_21.pt"
    torch.save(capnet.state_dict(), capsule_file)
    return {"vgg": vgg, "capnet": capnet, "vgg_file": vgg_file, "capsule_file": capsule_file}


def test_parameter_count_and_official_keys(official: dict) -> None:
    capnet, vgg = official["capnet"], official["vgg"]
    assert count_parameters(capnet) == REFERENCE_CAPSULES
    assert count_parameters(vgg) == REFERENCE_VGG
    det = CapsuleForensics()
    assert count_parameters(det) == REFERENCE_TOTAL
    assert count_parameters(det, trainable_only=True) == REFERENCE_CAPSULES  # VGG frozen
    ours = {k: v.shape for k, v in det.state_dict().items()}
    theirs = {k: v.shape for k, v in capnet.state_dict().items()}
    theirs |= {f"vgg_ext.vgg_1.{k}": v.shape for k, v in vgg.state_dict().items()}
    assert ours == theirs  # DeepfakeBench's layout: official capsule keys + vgg_ext.vgg_1.*


def test_official_checkpoint_predicts_like_the_reference(official: dict) -> None:
    det = CapsuleForensics(pretrained_file=str(official["vgg_file"]))
    det.load_weights(official["capsule_file"])
    det.eval()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 64, 64)
    for batch in (images, images[:1]):  # the reference squeezes batches of one differently
        with torch.no_grad():
            classes, class_ = official["capnet"](official["vgg"](batch))
            out = det({"image": batch})
        # test_binary_ffpp.py: pred_prob = softmax(class_, dim=1)[:, 1]
        expected = torch.softmax(class_, dim=1)[:, 1]
        torch.testing.assert_close(out["classes"], classes, atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.sigmoid(out["logits"]), expected, atol=1e-6, rtol=0)
        # and its decision: fake when class_[1] >= class_[0]
        assert ((out["logits"] >= 0) == (class_[:, 1] >= class_[:, 0])).all()
        if len(batch) > 1:  # the images are told apart (probabilities are confined near 0.5)
            assert classes.std(dim=0).max() > 1e-3 and expected.std() > 1e-4


def test_checkpoint_layouts_and_wrong_files(official: dict, tmp_path: Path) -> None:
    det = CapsuleForensics()  # no ImageNet VGG: an official capsule file alone is not a model
    with pytest.raises(UserError, match=r"detector\.pretrained_file=/path/to/vgg19-dcbb9e9d\.pth"):
        det.load_weights(official["capsule_file"])
    # DeepfakeBench's checkpoints carry the (fine-tuned) VGG as vgg_ext.vgg_1.*
    full = {f"vgg_ext.vgg_1.{k}": v for k, v in official["vgg"].state_dict().items()}
    full |= official["capnet"].state_dict()
    torch.save({f"module.{k}": v for k, v in full.items()}, tmp_path / "capsule_best.pth")
    det.load_weights(tmp_path / "capsule_best.pth")
    torch.testing.assert_close(
        det.state_dict()["vgg_ext.vgg_1.16.weight"], full["vgg_ext.vgg_1.16.weight"]
    )
    broken = {k: v for k, v in official["capnet"].state_dict().items() if "capsules.9.10" not in k}
    broken["routing_stats.bias"] = torch.zeros(2)
    torch.save(broken, tmp_path / "capsule_1.pt")
    pretrained = CapsuleForensics(pretrained_file=str(official["vgg_file"]))
    with pytest.raises(UserError) as info:
        pretrained.load_weights(tmp_path / "capsule_1.pt")
    message = str(info.value)
    assert "missing keys: fea_ext.capsules.9.10.bias" in message
    assert "unexpected keys: routing_stats.bias" in message
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg16.pth")
    with pytest.raises(UserError, match=r"vgg16\.pth lacks features\.0\.bias"):
        CapsuleForensics(pretrained_file=str(tmp_path / "vgg16.pth"))
    with pytest.raises(UserError, match=r"detector\.pretrained_file .*absent\.pth does not exist"):
        CapsuleForensics(pretrained_file=str(tmp_path / "absent.pth"))


def test_loss_is_the_official_capsule_loss() -> None:
    torch.manual_seed(2)
    classes = torch.softmax(torch.randn(5, 4, 2), dim=-1)
    labels = torch.tensor([0, 1, 1, 0, 1])
    expected = nn.CrossEntropyLoss()(classes[:, 0, :], labels)
    for i in range(3):
        expected = expected + nn.CrossEntropyLoss()(classes[:, i + 1, :], labels)
    torch.testing.assert_close(capsule_loss(classes, labels.float()), expected)
    # the best squashed class capsules: +-(1/2, 1/2, 1/2, 1/2), a difference of 1 per component
    best = torch.full((5, 4), 0.5) * (2 * labels[:, None] - 1)
    classes = torch.softmax(torch.stack([-best, best], dim=-1), dim=-1)
    assert capsule_loss(classes, labels) == pytest.approx(LOSS_FLOOR, abs=1e-6)


def test_routing_noise_and_dropout_only_in_training() -> None:
    torch.manual_seed(3)
    det = CapsuleForensics()
    batch = {"image": torch.randn(2, 3, 64, 64)}
    with torch.no_grad():
        det.eval()
        assert torch.equal(det(batch)["logits"], det(batch)["logits"])
        det.train()
        first, second = det(batch)["classes"], det(batch)["classes"]
        assert not torch.equal(first, second)
        det.routing_noise, det.routing_dropout = 0.0, 0.0
        first, second = det(batch)["classes"], det(batch)["classes"]
        torch.testing.assert_close(first, second)  # only BatchNorm's batch statistics remain


def test_config_and_forward_at_native_size() -> None:
    det = load_detector("capsule_forensics")
    assert isinstance(det, CapsuleForensics) and det.freeze_vgg
    assert (det.routing_noise, det.routing_dropout) == (0.01, 0.05)
    p = det.preprocessing
    assert (p.size, p.resize, p.interpolation, p.crop) == (300, "square", "bilinear", "none")
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
    optimizer, scheduler = det.configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert (group["lr"], group["betas"], group["weight_decay"]) == (5e-4, (0.9, 0.999), 0)
    assert sum(p.numel() for p in group["params"]) == REFERENCE_CAPSULES
    batch = transformed_batch(det, random_images(1, (320, 280)), [1])
    assert batch["image"].shape == (1, 3, 300, 300)
    with torch.no_grad():
        out = det.eval()(batch)
    assert out["logits"].shape == (1,) and out["classes"].shape == (1, 4, 2)
    assert -1 <= out["logits"].item() <= 1


def test_backward_reaches_the_capsules_and_the_vgg_only_when_fine_tuned() -> None:
    torch.manual_seed(4)
    images = random_images(4, 64, seed=7)
    frozen = CapsuleForensics(preprocessing={"size": 64})
    batch = transformed_batch(frozen, images, [0, 1, 1, 0], train=True)
    assert parameters_without_gradient(frozen, batch) == []
    assert not any(p.requires_grad for p in frozen.vgg_ext.parameters())
    tuned = CapsuleForensics(freeze_vgg=False, preprocessing={"size": 64})
    assert parameters_without_gradient(tuned, batch) == []
    assert all(p.requires_grad for p in tuned.vgg_ext.parameters())


def test_overfits_a_tiny_batch_to_the_reference_losss_floor() -> None:
    """The reference loss cannot reach 0 (see LOSS_FLOOR): overfitting means reaching its floor."""
    torch.manual_seed(5)
    det = CapsuleForensics(preprocessing={"size": 32})
    labels = [0, 1, 1, 0]
    batch = transformed_batch(det, random_images(4, 32, seed=8), labels, train=True)
    start = det.training_step(batch)["loss"].item()
    assert start > LOSS_FLOOR + 0.5
    loss = overfit(det, batch, steps=60, lr=1e-2, target=LOSS_FLOOR + 0.1)
    assert loss < LOSS_FLOOR + 0.1
    det.routing_noise = det.routing_dropout = 0.0  # decisions as trained: batch statistics
    with torch.no_grad():
        logits = det.train()(batch)["logits"]
    assert ((logits > 0) == torch.tensor(labels, dtype=torch.bool)).all()
    assert logits.abs().max() < math.tanh(0.5)

"""RECCE: an independent forward pass of the official model, its losses, checkpoint layouts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.xception import Block, SeparableConv2d
from torch import nn

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.recce import Recce, metric_learning_loss, reconstruction_loss
from tests.detector_checks import (
    overfit,
    parameters_without_gradient,
    random_images,
    transformed_batch,
)

# The official Recce(num_classes=1) (VISION-SJTU/RECCE model/network/Recce.py), counted
# module by module from its definition: timm Xception encoder 20,806,952 + its unused
# ImageNet classifier encoder.fc 2,049,000; fc 2,049; GuidedAttention 531,524;
# GraphReasoning 1,944,128; decoder1-6 193,432 + 205,056 + 35,328 + 53,376 + 9,472 + 192.
ENCODER_IMAGENET_HEAD = 2048 * 1000 + 1000
REFERENCE_PARAMETERS = (
    20_806_952
    + ENCODER_IMAGENET_HEAD
    + 2_049
    + 531_524
    + 1_944_128
    + (193_432 + 205_056 + 35_328 + 53_376 + 9_472 + 192)
)
assert REFERENCE_PARAMETERS == 25_830_509
# what its forward pass uses (encoder.fc is never called): ours builds exactly that
REFERENCE_USED_PARAMETERS = REFERENCE_PARAMETERS - ENCODER_IMAGENET_HEAD
SMALL = 32  # the whole network runs at 32 px (vertex A is 2 x 2): fast backward and overfitting


# -- the official model, written from model/network/Recce.py and model/common.py -------------
class ReferenceGraphReasoning(nn.Module):
    """model/common.py ``GraphReasoning``, with its Python loop over the positions of vertex A."""

    def __init__(self) -> None:
        super().__init__()
        va_in, va_out, vb_in, vb_out, vc_in, vc_out = 728, 256, 256, 256, 128, 256
        self.ratio = [2, 4]
        self.va_embedding = nn.Sequential(
            nn.Conv2d(va_in, va_out, 1, bias=False),
            nn.ReLU(True),
            nn.Conv2d(va_out, va_out, 1, bias=False),
        )
        self.va_gated_b = nn.Sequential(nn.Conv2d(va_in, va_out, 1, bias=False), nn.Sigmoid())
        self.va_gated_c = nn.Sequential(nn.Conv2d(va_in, va_out, 1, bias=False), nn.Sigmoid())
        self.vb_embedding = nn.Sequential(
            nn.Linear(vb_in, vb_out, bias=False),
            nn.ReLU(True),
            nn.Linear(vb_out, vb_out, bias=False),
        )
        self.vc_embedding = nn.Sequential(
            nn.Linear(vc_in, vc_out, bias=False),
            nn.ReLU(True),
            nn.Linear(vc_out, vc_out, bias=False),
        )
        self.unfold_b = nn.Unfold(kernel_size=2, stride=2)
        self.unfold_c = nn.Unfold(kernel_size=4, stride=4)
        self.reweight_ab = nn.Sequential(
            nn.Linear(va_out + vb_out, 1, bias=False), nn.ReLU(True), nn.Softmax(dim=1)
        )
        self.reweight_ac = nn.Sequential(
            nn.Linear(va_out + vc_out, 1, bias=False), nn.ReLU(True), nn.Softmax(dim=1)
        )
        self.reproject = nn.Sequential(
            nn.Conv2d(va_out + vb_out + vc_out, va_in, kernel_size=1, bias=False),
            nn.ReLU(True),
            nn.Conv2d(va_in, va_in, kernel_size=1, bias=False),
            nn.Dropout(0.2),
        )

    def forward(
        self, vert_a: torch.Tensor, vert_b: torch.Tensor, vert_c: torch.Tensor
    ) -> torch.Tensor:
        emb_a = self.va_embedding(vert_a)
        emb_a = emb_a.reshape([emb_a.shape[0], emb_a.shape[1], -1])
        gate_b = (1 - self.va_gated_b(vert_a)).reshape(*emb_a.shape)
        gate_c = (1 - self.va_gated_c(vert_a)).reshape(*emb_a.shape)
        r_b, r_c = self.ratio
        vb = self.unfold_b(vert_b).reshape([vert_b.shape[0], vert_b.shape[1], r_b * r_b, -1])
        emb_b = self.vb_embedding(vb.permute([0, 2, 3, 1]))
        vc = self.unfold_c(vert_c).reshape([vert_c.shape[0], vert_c.shape[1], r_c * r_c, -1])
        emb_c = self.vc_embedding(vc.permute([0, 2, 3, 1]))
        agg_b, agg_c = [], []
        for j in range(emb_a.shape[-1]):
            v_a = torch.stack([emb_a[:, :, j]] * (r_b**2), dim=1)
            v_b = emb_b[:, :, j, :]
            w = self.reweight_ab(torch.cat([v_a, v_b], dim=-1))
            agg_b.append(torch.bmm(v_b.transpose(1, 2), w).squeeze(-1) * gate_b[:, :, j])
            v_a = torch.stack([emb_a[:, :, j]] * (r_c**2), dim=1)
            v_c = emb_c[:, :, j, :]
            w = self.reweight_ac(torch.cat([v_a, v_c], dim=-1))
            agg_c.append(torch.bmm(v_c.transpose(1, 2), w).squeeze(-1) * gate_c[:, :, j])
        agg = torch.cat([torch.stack(agg_b, dim=-1), torch.stack(agg_c, dim=-1), emb_a], dim=1)
        agg = torch.sigmoid(agg).reshape(vert_a.shape[0], -1, vert_a.shape[2], vert_a.shape[3])
        return self.reproject(agg)


class ReferenceGuidedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gated = nn.Sequential(
            nn.Conv2d(3, 3, 3, 1, 1, bias=False),
            nn.ReLU(True),
            nn.Conv2d(3, 1, 1, bias=False),
            nn.Sigmoid(),
        )
        self.h = nn.Sequential(
            nn.Conv2d(728, 728, 1, 1, bias=False), nn.BatchNorm2d(728), nn.ReLU(True)
        )
        self.dropout = nn.Dropout(0.2)

    def forward(
        self, x: torch.Tensor, pred_x: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        residual = F.interpolate(
            torch.abs(x - pred_x), size=embedding.shape[-2:], mode="bilinear", align_corners=True
        )
        return self.gated(residual) * self.h(embedding) + self.dropout(embedding)


def _decoder(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.UpsamplingNearest2d(scale_factor=2),
        SeparableConv2d(cin, cout, 3, 1, 1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ReferenceRecce(nn.Module):
    """``Recce(num_classes=1)``: timm Xception with its ImageNet head, as the official code builds it."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = timm.create_model("legacy_xception", pretrained=False, num_classes=1000)
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(2048, 1)
        self.attention = ReferenceGuidedAttention()
        self.reasoning = ReferenceGraphReasoning()
        self.decoder1 = _decoder(728, 256)
        self.decoder2 = Block(256, 256, 3, 1)
        self.decoder3 = _decoder(256, 128)
        self.decoder4 = Block(128, 128, 3, 1)
        self.decoder5 = _decoder(128, 64)
        self.decoder6 = nn.Sequential(nn.Conv2d(64, 3, 1, 1, bias=False), nn.Tanh())

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode ``Recce.forward`` up to the head: (pooled embedding, reconstruction)."""
        e = self.encoder
        out = e.act1(e.bn1(e.conv1(x)))
        out = e.act2(e.bn2(e.conv2(out)))
        embedding = e.block4(e.block3(e.block2(e.block1(out))))
        out_d2 = self.decoder2(self.decoder1(self.dropout(embedding)))
        out_d4 = self.decoder4(self.decoder3(out_d2))
        pred = self.decoder6(self.decoder5(out_d4))
        recons_x = F.interpolate(pred, size=x.shape[-2:], mode="bilinear", align_corners=True)
        embedding = e.block7(e.block6(e.block5(embedding)))
        fusion = self.reasoning(embedding, out_d2, out_d4) + embedding
        embedding = self.attention(x, recons_x, e.block8(fusion))
        embedding = e.block12(e.block11(e.block10(e.block9(embedding))))
        embedding = e.act3(e.bn3(e.conv3(embedding)))
        embedding = e.act4(e.bn4(e.conv4(embedding)))
        return self.dropout(self.global_pool(embedding).flatten(1)), recons_x


def randomise(module: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (eval-mode BN then matters)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def detector() -> Recce:
    torch.manual_seed(0)
    return Recce()


@pytest.fixture(scope="module")
def reference() -> ReferenceRecce:
    torch.manual_seed(1)
    model = ReferenceRecce()
    randomise(model, seed=2)
    return model.eval()


def deepfakebench_backbone() -> dict[str, torch.Tensor]:
    """The unused DeepfakeBench Xception that recce_detector.py also builds (``backbone.*``)."""
    with torch.device("meta"):
        shapes = timm.create_model("legacy_xception", pretrained=False, num_classes=2).state_dict()
    # zero-stride tensors: the file stays small (the values are dropped on load anyway)
    state = {
        f"backbone.{k.replace('fc.', 'last_linear.')}": torch.zeros((), dtype=v.dtype).expand(
            v.shape
        )
        for k, v in shapes.items()
    }
    adjust = nn.Sequential(nn.Conv2d(2048, 512, 1, 1), nn.BatchNorm2d(512), nn.ReLU(inplace=True))
    state.update({f"backbone.adjust_channel.{k}": v for k, v in adjust.state_dict().items()})
    return state


# -- tests -----------------------------------------------------------------------------------
def test_parameter_count_matches_the_reference(detector: Recce, reference: ReferenceRecce) -> None:
    assert sum(p.numel() for p in reference.parameters()) == REFERENCE_PARAMETERS
    count = count_parameters(detector)
    assert count == REFERENCE_USED_PARAMETERS
    assert abs(count - REFERENCE_USED_PARAMETERS) <= 0.01 * REFERENCE_USED_PARAMETERS


def test_graph_reasoning_equals_the_reference_loop(detector: Recce) -> None:
    ours = copy.deepcopy(detector.reasoning).eval()
    theirs = ReferenceGraphReasoning().eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same key layout
    torch.manual_seed(3)
    a, b, c = torch.randn(2, 728, 3, 2), torch.randn(2, 256, 6, 4), torch.randn(2, 128, 12, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(a, b, c), theirs(a, b, c), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="GraphReasoning needs maps"):
        ours(a, b, c[..., :-1])


def test_official_checkpoint_matches_an_independent_forward(
    detector: Recce, reference: ReferenceRecce, tmp_path: Path
) -> None:
    path = tmp_path / "best_model_1000.bin"  # trainer: {'model': state dict, 'step': ...}
    torch.save({"step": 1000, "model": reference.state_dict()}, path)
    det = copy.deepcopy(detector)
    det.load_weights(path)
    p = det.preprocessing  # the authors' inference.py input
    assert (p.size, p.resize_to, p.resize_backend, p.interpolation) == (299, 299, "cv2", "bilinear")
    det.eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = det({"image": x})
        pooled, recons = reference.embed(x)
        expected = reference.fc(pooled).squeeze(1)
    torch.testing.assert_close(out["logits"], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["reconstruction"], recons, atol=1e-5, rtol=1e-4)


def test_deepfakebench_checkpoint_gives_softmax_of_its_two_class_head(
    detector: Recce, reference: ReferenceRecce, tmp_path: Path
) -> None:
    torch.manual_seed(4)
    head = nn.Linear(2048, 2)
    state = {f"model.{k}": v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    state.update({"model.fc.weight": head.weight.detach(), "model.fc.bias": head.bias.detach()})
    state.update(deepfakebench_backbone())
    path = tmp_path / "recce_best.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    det = load_detector("recce", weights=path)
    p = det.preprocessing  # DeepfakeBench's test input
    assert (p.size, p.resize_backend, p.interpolation) == (256, "cv2", "bicubic")
    det.eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        got = torch.sigmoid(det({"image": x})["logits"])
        expected = torch.softmax(head(reference.embed(x)[0]), dim=1)[:, 1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    del state["model.decoder6.0.weight"]
    state["model.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(
        UserError, match=r"missing keys: model\.decoder6\.0\.weight.*unexpected keys: model\.extra"
    ):
        det.load_weights(path)


def test_native_size_forward(detector: Recce) -> None:
    det = copy.deepcopy(detector).eval()
    image = random_images(1, (300, 280))[0]
    x = det.transform({"image": image, "label": 0, "record": None, "index": 0})["image"]
    assert x.shape == (3, 256, 256)
    with torch.no_grad():
        out = det({"image": x[None]})
    assert out["logits"].shape == (1,) and out["reconstruction"].shape == (1, 3, 256, 256)
    assert out["reconstruction"].abs().max() <= 1.0  # tanh


def reference_mlloss(
    inputs: list[torch.Tensor], target: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """trainer/utils.py ``MLLoss`` as written there."""
    loss = torch.tensor(0.0)
    n = target.shape[0]
    mat_1 = torch.hstack([target.unsqueeze(-1)] * n)
    mat_2 = torch.vstack([target] * n)
    diff_mat = torch.logical_xor(mat_1, mat_2).float()
    or_mat = torch.logical_or(torch.logical_or(mat_1, mat_2), torch.eye(n)).float()
    sim_mat = 1.0 - or_mat
    for x in inputs:
        diff = torch.sum(x * diff_mat, dim=[0, 1]) / (torch.sum(diff_mat, dim=[0, 1]) + eps)
        sim = torch.sum(x * sim_mat, dim=[0, 1]) / (torch.sum(sim_mat, dim=[0, 1]) + eps)
        partial = 1.0 - sim + diff
        loss += max(partial, torch.zeros_like(partial))
    return loss


@pytest.mark.parametrize(
    "labels", [[0, 1, 0, 1, 1], [1, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]
)
def test_metric_and_reconstruction_losses_follow_the_reference(labels: list[int]) -> None:
    torch.manual_seed(5)
    y = torch.tensor(labels)
    sims = [(torch.rand(5, 5) + torch.rand(5, 5).T) / 2 for _ in range(3)]
    torch.testing.assert_close(metric_learning_loss(sims, y.float()), reference_mlloss(sims, y))
    x, rec = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)
    real = y == 0
    expected = (rec[real] - x[real]).abs().mean() if real.any() else torch.tensor(0.0)
    torch.testing.assert_close(reconstruction_loss(rec, x, y.float()), expected)


def test_training_step_combines_flooded_bce_reconstruction_and_metric_terms(
    detector: Recce,
) -> None:
    det = copy.deepcopy(detector).eval()  # eval: no noise or dropout, so terms can be recomputed
    batch = transformed_batch(det, random_images(4, 40, seed=6), [0, 1, 0, 1], train=True)
    batch["image"] = F.interpolate(batch["image"], size=SMALL)
    with torch.no_grad():
        out = det.training_step(batch)
        run = det.run(batch["image"])
    bce = F.binary_cross_entropy_with_logits(run["logits"], batch["label"])
    recons = (run["reconstruction"][[0, 2]] - batch["image"][[0, 2]]).abs().mean()
    metric = reference_mlloss(run["similarities"], batch["label"].long())
    expected = (bce - 0.04).abs() + 0.04 + 0.1 * recons + 0.1 * metric
    torch.testing.assert_close(out["loss"], expected, atol=1e-5, rtol=1e-5)
    assert set(out) == {"loss", "loss_cls", "loss_recons", "loss_metric"}
    torch.testing.assert_close(out["loss_cls"], bce)


def test_backward_reaches_every_parameter_and_overfits(detector: Recce) -> None:
    det = copy.deepcopy(detector)
    det.preprocessing.size = det.preprocessing.resize_to = SMALL
    torch.manual_seed(0)
    batch = transformed_batch(det, random_images(4, 40, seed=1), [0, 1, 0, 1], train=True)
    assert batch["image"].shape == (4, 3, SMALL, SMALL)
    assert parameters_without_gradient(det, batch) == []
    # flooding keeps the classification loss near 0.04 by design, and the reconstruction of
    # noise cannot reach zero: overfitting is checked on the classification term alone
    det.flood_level = det.lambda_recons = det.lambda_metric = 0.0
    assert overfit(det, batch, steps=60, lr=1e-3, target=0.05) < 0.05

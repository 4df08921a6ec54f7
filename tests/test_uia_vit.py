"""UIA-ViT: forward vs an independent ViT written here, the progressive patch weighting, the
patch-consistency loss against DeepfakeBench's loops, gradients and overfitting (with and
without the consistency loss), strict loading of both official layouts and the ImageNet
start, the full-size parameter count and the official test-time preprocessing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepsift.core.errors import UserError
from detectors.formats import formats_for
from detectors.uia_vit import UIAViT, consistency_targets, patch_consistency_loss
from tests.detector_checks import (
    overfit,
    parameters_without_gradient,
    random_images,
    transformed_batch,
)
from tests.official.weights import key_spec, seeded_state_dict

#: 3 blocks of width 32 on a 4 x 4 grid of 8 px patches; the last two blocks' attention
TINY = {
    "img_size": 32,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 3,
    "num_heads": 2,
    "attn_blk": [2, 3],
    "feat_blk": 1,
    "inner": [1, 3],
    "batch_per_epoch": 2,
    "epochs": 4,
    "preprocessing": {"size": 32},
}


def model(**kw) -> UIAViT:
    torch.manual_seed(0)
    return UIAViT(**{**TINY, **kw}).eval()


def dfb_state(m: UIAViT, seed: int = 3) -> dict[str, torch.Tensor]:
    return seeded_state_dict(key_spec(m.state_dict()), seed)


def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor, step: float = 1.0):
    """Independent: the ViT from the tensors (``model.*``), pre-softmax attention logits of
    blocks 1 and 2 (``attn_blk`` 2 3), CLS + weighted patch mean, ``head`` logit z1 - z0."""
    w = lambda n: state["model." + n]  # noqa: E731
    heads, dim = 2, 32
    ln = lambda t, n: F.layer_norm(t, (dim,), w(f"{n}.weight"), w(f"{n}.bias"), 1e-6)  # noqa: E731
    h = F.conv2d(x, w("patch_embed.proj.weight"), w("patch_embed.proj.bias"), stride=8)
    h = torch.cat([w("cls_token").expand(len(x), 1, dim), h.flatten(2).transpose(1, 2)], 1)
    h = h + w("pos_embed")
    maps = []
    for i in range(3):
        p = f"blocks.{i}."
        qkv = F.linear(ln(h, p + "norm1"), w(p + "attn.qkv.weight"), w(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(len(x), 17, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)
        if i >= 1:
            maps.append(logits)
        o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(len(x), 17, dim)
        h = h + F.linear(o, w(p + "attn.proj.weight"), w(p + "attn.proj.bias"))
        m = F.gelu(F.linear(ln(h, p + "norm2"), w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias")))
        h = h + F.linear(m, w(p + "mlp.fc2.weight"), w(p + "mlp.fc2.bias"))
    h = ln(h, "norm")
    a = torch.sigmoid(torch.cat(maps, 1)[:, :, 0, 1:].mean(1))  # (B, 16)
    g = 1 / (1 + math.exp(12 * (step - 0.7)))
    weights = (g + (1 - g) * a) / 16
    pooled = (weights[:, :, None] * h[:, 1:]).sum(1)
    scores = F.linear(torch.cat([h[:, 0], pooled], -1), w("head.weight"), w("head.bias"))
    return scores[:, 1] - scores[:, 0]


@pytest.mark.parametrize("layout", ["deepfakebench", "authors"])
def test_forward_equals_independent_vit(tmp_path, layout: str) -> None:
    m = model()
    state = dfb_state(m)
    saved = state if layout == "deepfakebench" else {
        k.removeprefix("model."): v for k, v in state.items() if not k.startswith("model.c_")
    }  # fmt: skip
    torch.save(saved, tmp_path / "w.pth")
    m.load_weights(tmp_path / "w.pth")
    if layout == "authors":  # no c_* in their model: the initial values
        assert (m.model.c_real.item(), m.model.c_cross.item()) == pytest.approx((0.6, 0.2))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = m({"image": x})
        ref = reference_logits(state, x)
    assert out["logits"].shape == (3,)
    assert out["localization"].shape == (3, 4, 4)
    assert out["patch_features"].shape == (3, 4, 4, 32)
    assert out["logits"].std() > 0.01
    assert torch.allclose(out["logits"], ref, atol=1e-5)
    # a test of the parity test: the attention logits matter (block 2's keys)
    state["model.blocks.2.attn.qkv.weight"][32:64] *= 3.0
    assert not torch.allclose(ref, reference_logits(state, x), atol=1e-4)


def test_progressive_weighting_follows_the_step(tmp_path) -> None:
    m = model()
    state = dfb_state(m)
    m.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    m.train()  # step = batch_count / (batch_per_epoch * epochs) = 3 / 8
    m.batch_count = 3
    with torch.no_grad():
        out = m({"image": x})
    assert torch.allclose(out["logits"], reference_logits(state, x, step=3 / 8), atol=1e-5)
    m.batch_count = 0  # the first eighth: uniform weights
    with torch.no_grad():
        uniform = m({"image": x})["localization"]
    assert torch.allclose(uniform, torch.ones(2, 4, 4))
    assert not torch.allclose(out["localization"], uniform)


def test_consistency_loss_matches_deepfakebench_loops() -> None:
    torch.manual_seed(0)
    p = 6
    real, fake = torch.rand(2, p, p), torch.rand(3, p, p)
    forged = torch.rand(3, p) > 0.5
    c_real, c_fake, c_cross = (torch.tensor(v, requires_grad=True) for v in (0.6, 0.7, 0.2))
    # DeepfakeBench's PatchConsistencyLoss, written out with its loops
    eye = torch.eye(p)
    expected = (real - ((1 - c_real) * eye + c_real)).abs().sum() / (2 * (p * p - p))
    targets = []
    for b in range(3):
        tmp = torch.zeros(p, p) + c_cross
        fakes, reals = torch.where(forged[b])[0], torch.where(~forged[b])[0]
        for i in fakes:
            tmp[i, fakes] = c_fake
        for i in reals:
            tmp[i, reals] = c_real
        targets.append(tmp)
    expected = expected + (fake - torch.stack(targets)).abs().sum() / (3 * (p * p - p))
    assert torch.allclose(
        consistency_targets(forged, c_real, c_fake, c_cross), torch.stack(targets)
    )
    got = patch_consistency_loss(real, fake, forged, c_real, c_fake, c_cross)
    assert torch.allclose(got, expected)
    got.backward()
    assert all(c.grad is not None and c.grad != 0 for c in (c_real, c_fake, c_cross))


def test_gradients_overfit_and_consistency_stage() -> None:
    m = model()
    images = random_images(8, 40)
    labels = [0, 1] * 4
    batch = transformed_batch(m, images, labels, seed=0)
    assert batch["image"].shape == (8, 3, 32, 32)
    assert set(m.training_step(batch)) == {"loss"}  # the first epoch: cross-entropy only
    assert not m.model.norm_middle.weight.requires_grad  # the reference never updates it
    # the c_* enter the loss only in the consistency stage
    stage1 = [n for n in parameters_without_gradient(m, batch) if not n.startswith("model.c_")]
    assert stage1 == []
    staged = model()
    staged.train()
    for _ in range(4):  # Gaussians fitted at step 1 (half an epoch), the stage from step 3
        out = staged.training_step(batch)
    assert staged.gaussians is not None
    assert staged.gaussians["real_precision"].shape == (32, 32)
    assert set(out) == {"loss", "bce", "pcl"} and out["pcl"] > 0
    assert parameters_without_gradient(staged, batch) == []
    # cross-entropy alone (the stage-2 terms have a floor: 0.05 (1/0.6 + 1/0.6) at the start)
    assert overfit(model(batch_per_epoch=1000), batch, steps=150, lr=1e-3) < 0.05


def test_official_layouts_load_strictly(tmp_path) -> None:
    m = model()
    state = dfb_state(m)
    (found,) = formats_for(state)
    assert found.name.startswith("DeepfakeBench UIA-ViT")
    authors = {k.removeprefix("model."): v for k, v in state.items() if ".c_" not in f".{k}"}
    authors = {k: v for k, v in authors.items() if not k.startswith("c_")}
    (found,) = formats_for(authors)
    assert found.name.startswith("UIA-ViT (the authors'")
    # the authors' checkpoint.pth.tar container, with its Gaussians as plain lists
    torch.save(
        {"epoch": 3, "state_dict": authors, "gauss_param_real": {"mean": [0.0]}},
        tmp_path / "checkpoint.pth.tar",
    )
    m.load_weights(tmp_path / "checkpoint.pth.tar")
    assert (m.preprocessing.resize_backend, m.preprocessing.interpolation) == ("pil", "bilinear")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "uia_vit_best.pth")
    fresh = UIAViT(**{**TINY, "preprocessing": None})
    fresh.load_weights(tmp_path / "uia_vit_best.pth")
    assert (fresh.preprocessing.resize_backend, fresh.preprocessing.size) == ("cv2", 224)
    assert torch.equal(fresh.model.c_fake, state["model.c_fake"])
    del state["model.norm_middle.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"missing keys: model\.norm_middle\.bias"):
        m.load_weights(tmp_path / "bad.pth")
    torch.save({"fc.weight": torch.zeros(1, 2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"not a UIA-ViT state dict.*model_bestacc\.pt"):
        m.load_weights(tmp_path / "other.pth")


def test_imagenet_start_and_bad_options(tmp_path) -> None:
    source = model().model.state_dict()
    timm_file = {
        k: v + 1 for k, v in source.items() if not k.startswith(("norm_middle.", "head.", "c_"))
    }
    timm_file["head.weight"], timm_file["head.bias"] = torch.zeros(1000, 32), torch.zeros(1000)
    torch.save(timm_file, tmp_path / "jx_vit.pth")
    m = model(pretrained_file=str(tmp_path / "jx_vit.pth"))
    assert torch.equal(m.model.blocks[1].attn.qkv.weight, timm_file["blocks.1.attn.qkv.weight"])
    assert torch.equal(m.model.norm_middle.weight, torch.ones(32))  # not in the file
    del timm_file["norm.bias"]
    torch.save(timm_file, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"pretrained_file.*missing keys: norm\.bias"):
        model(pretrained_file=str(tmp_path / "bad.pth"))
    with pytest.raises(UserError, match=r"detector\.batch_per_epoch"):
        model(batch_per_epoch=1)
    with pytest.raises(UserError, match=r"detector\.attn_blk"):
        model(attn_blk=[7])({"image": torch.zeros(1, 3, 32, 32)})


def test_full_size_reference() -> None:
    with torch.device("meta"):
        m = UIAViT()
    # timm's vit_base_patch16_224 (86,567,656) - its 1000-class head (769,000)
    # + norm_middle (1,536) + head 1536 -> 2 (3,074) + c_real, c_fake, c_cross
    assert sum(p.numel() for p in m.parameters()) == 85_803_269
    assert m.model.pos_embed.shape == (1, 197, 768)
    assert m.preprocessing.size == 224

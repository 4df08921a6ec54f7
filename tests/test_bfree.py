"""B-Free: five-crop forward vs timm's own forward on pixel crops, gradients, overfitting,
strict loading of the official ``{'model': ...}`` layout, full-size reference figures."""

from __future__ import annotations

import pytest
import torch

from deepsift.core.errors import UserError
from detectors.bfree import BFree, load_dinov2
from tests.detector_checks import (
    overfit,
    parameters_without_gradient,
    random_images,
    transformed_batch,
)
from tests.official.weights import key_spec, seeded_state_dict

#: a 4 x 4 patch grid of 14 px patches (56 px crops), 2 blocks of width 32
TINY = {
    "crop_size": 56,
    "model_args": {"img_size": 56, "embed_dim": 32, "depth": 2, "num_heads": 2},
}


def model(**kw) -> BFree:
    """Tiny B-Free with seeded fan-in-scaled weights (timm's init leaves the head near 0,
    which would make any two forwards agree to 1e-5)."""
    torch.manual_seed(0)
    m = BFree(**TINY, **kw).eval()
    m.model.load_state_dict(seeded_state_dict(key_spec(m.model.state_dict()), seed=7))
    return m


def pixel_crops_reference(m: BFree, x: torch.Tensor) -> torch.Tensor:
    """Independent: the wrapper's crops taken in pixels (H, W multiples of 14), each run
    through timm's unmodified ``VisionTransformer.forward``, logits averaged."""
    s, p = 56, 14
    h, w = x.shape[-2:]
    if h < s or w < s:  # tile the picture, keep its top-left s x s
        x = x.repeat(1, 1, max(-(-s // h), 1), max(-(-s // w), 1))[..., :s, :s]
        h, w = s, s
    top, left = (h // p - s // p) // 2 * p, (w // p - s // p) // 2 * p
    crops = [
        x[..., top : top + s, left : left + s],
        x[..., :s, :s],
        x[..., h - s :, :s],
        x[..., h - s :, w - s :],
        x[..., :s, w - s :],
    ]
    with torch.no_grad():
        return torch.stack([m.model(c)[:, 0] for c in crops]).mean(0)


@pytest.mark.parametrize("size", [(84, 98), (56, 56), (28, 42), (28, 98)])
def test_five_crops_equal_timm_on_pixel_crops(size: tuple[int, int]) -> None:
    m = model()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = m({"image": x})
    assert out["logits"].shape == (2,)
    assert out["embedding"].shape == (2, 32)
    assert out["logits"].abs().min() > 0.05  # logits of order 1, not an untrained head's 0
    assert torch.allclose(out["logits"], pixel_crops_reference(m, x), atol=1e-5)


def test_crops_differ_on_a_large_image() -> None:
    """The mean is over five distinct crops (a test of the parity test): one crop alone is off."""
    m = model()
    x = torch.randn(1, 3, 84, 98)
    with torch.no_grad():
        centre = m.model(x[..., 14:70, 14:70])[:, 0]
        assert not torch.allclose(m({"image": x})["logits"], centre, atol=1e-2)


def test_gradients_and_overfit() -> None:
    m = model()
    batch = transformed_batch(m, random_images(4, 56), [0, 1, 0, 1], seed=0)
    assert batch["image"].shape == (4, 3, 56, 56)  # crop none: the whole image
    assert parameters_without_gradient(m, batch) == []
    assert overfit(m, batch, steps=80, lr=1e-3) < 0.05


def test_official_layout_loads_strictly(tmp_path) -> None:
    m = model()
    state = seeded_state_dict(key_spec(m.model.state_dict()), seed=3)
    assert {"cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight", "head.weight"} <= set(
        state
    )
    torch.save({"model": state}, tmp_path / "model_epoch_best.pth")
    m.load_weights(tmp_path / "model_epoch_best.pth")
    assert torch.equal(m.model.reg_token, state["reg_token"])
    assert torch.equal(m.model.head.bias, state["head.bias"])
    # a deepsift checkpoint of the detector (``model.`` keys) loads too
    torch.save({"state_dict": m.state_dict()}, tmp_path / "ours.pth")
    model().load_weights(tmp_path / "ours.pth")
    del state["reg_token"]
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="reg_token"):
        m.load_weights(tmp_path / "bad.pth")
    torch.save({"model": {"fc.weight": torch.zeros(1, 2)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"model_epoch_best\.pth"):
        m.load_weights(tmp_path / "other.pth")


def test_dinov2_from_local_file_only(tmp_path) -> None:
    with pytest.raises(UserError, match=r"detector\.pretrained_file"):
        BFree(pretrained=True)
    with pytest.raises(UserError, match="model_args"):
        BFree(pretrained=True, pretrained_file="x", **TINY)
    # timm's file carries its own (ImageNet-size) head: dropped, every other tensor strict
    import timm

    torch.manual_seed(1)
    source = timm.create_model("vit_base_patch14_reg4_dinov2", num_classes=10, **TINY["model_args"])
    torch.save(source.state_dict(), tmp_path / "dinov2.pth")
    m = model()
    head = m.model.head.weight.clone()
    load_dinov2(m.model, "tiny", str(tmp_path / "dinov2.pth"))
    assert torch.equal(m.model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert torch.equal(m.model.head.weight, head)
    state = source.state_dict()
    del state["norm.bias"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(UserError, match=r"norm\.bias"):
        load_dinov2(m.model, "tiny", str(tmp_path / "short.pth"))


def test_full_size_reference_figures() -> None:
    # timm vit_base_patch14_reg4_dinov2 at 504 px with one logit: 86,526,721 parameters,
    # pos_embed for the 36 x 36 grid without prefix tokens, 4 registers
    with torch.device("meta"):
        m = BFree()
    assert sum(p.numel() for p in m.parameters()) == 86_526_721
    state = m.model.state_dict()
    assert len(state) == 177
    assert tuple(state["pos_embed"].shape) == (1, 1296, 768)
    assert tuple(state["reg_token"].shape) == (1, 4, 768)
    assert tuple(state["patch_embed.proj.weight"].shape) == (768, 3, 14, 14)
    assert tuple(state["head.weight"].shape) == (1, 768)
    assert m.preprocessing.crop == "none" and m.preprocessing.resize == "none"


def test_format_registered() -> None:
    from detectors.formats import formats_for

    with torch.device("meta"):
        state = BFree().model.state_dict()
    assert [f.detectors for f in formats_for(state)] == [("bfree",)]

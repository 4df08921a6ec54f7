"""RINE: shapes, gradients, strict official-layout loading, an independent forward pass."""

from __future__ import annotations

import pytest
import torch

from deepsift.core.errors import UserError
from detectors.rine import RINE

pytest.importorskip("open_clip")

TINY_VISION = {"image_size": 224, "layers": 3, "width": 64, "patch_size": 32, "head_width": 32}
TINY = {"model_name": "ViT-L-14", "vision_cfg": TINY_VISION, "embed_dim": 16, "random_init": True}


def model(**kw) -> RINE:
    torch.manual_seed(0)
    return RINE(nproj=2, proj_dim=8, **TINY, **kw).eval()


def test_shapes_gradients_and_independent_forward() -> None:
    m = model()
    x = torch.randn(2, 3, 224, 224)
    out = m({"image": x})
    assert out["logits"].shape == (2,)
    assert out["embedding"].shape == (2, 8)
    # independent: run the blocks by hand, take ln_2(residual) CLS of each block
    v = m.backbone
    h = v.conv1(x).flatten(2).transpose(1, 2)
    h = torch.cat([v.class_embedding.expand(2, 1, -1), h], dim=1) + v.positional_embedding
    h = v.ln_pre(h)
    tokens = []
    with torch.no_grad():
        for blk in v.transformer.resblocks:
            h = h + blk.ls_1(blk.attention(blk.ln_1(h)))
            tokens.append(blk.ln_2(h)[:, 0])
            h = h + blk.ls_2(blk.mlp(blk.ln_2(h)))
        g = m.proj1(torch.stack(tokens, 1))
        z = m.proj2((torch.softmax(m.alpha, 1) * g).sum(1))
        ref = m.head(z).squeeze(1)
    assert torch.allclose(out["logits"], ref, atol=1e-5)
    m.train()
    m({"image": x})["logits"].sum().backward()
    assert m.alpha.grad is not None and m.alpha.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.backbone.parameters())


def test_official_layout_loads_strictly(tmp_path) -> None:
    m = model()
    keys = {"alpha", "proj1.1.weight", "proj1.4.bias", "proj2.4.weight", "head.6.weight"}
    assert keys <= set(m.state_dict())
    assert not any(k.startswith("_backbone") for k in m.state_dict())
    state = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    torch.save(state, tmp_path / "model_2class_trainable.pth")
    m.load_weights(tmp_path / "model_2class_trainable.pth")
    assert torch.equal(m.alpha, state["alpha"])
    del state["head.6.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"head\.6\.bias"):
        m.load_weights(tmp_path / "bad.pth")


def test_released_sizes_load_as_they_are(tmp_path) -> None:
    """The four released files differ in nproj/proj_dim (4/128, 4/1024, 2/1024): the file wins."""
    other = RINE(nproj=3, proj_dim=12, **TINY)
    state = {k: torch.randn_like(v) for k, v in other.state_dict().items()}
    torch.save(state, tmp_path / "model_4class_trainable.pth")
    m = model()
    assert (m.nproj, m.proj_dim) == (2, 8)
    m.load_weights(tmp_path / "model_4class_trainable.pth")
    assert (m.nproj, m.proj_dim) == (3, 12)
    assert torch.equal(m.proj1[7].weight, state["proj1.7.weight"])
    assert m.eval()({"image": torch.randn(1, 3, 224, 224)})["embedding"].shape == (1, 12)
    state["alpha"] = torch.randn(1, 5, 12)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"alpha has shape \(1, 5, 12\).*3 blocks"):
        m.load_weights(tmp_path / "bad.pth")


def test_full_size_trainable_parameters() -> None:
    # model_2class_trainable.pth: alpha (1, 24, 128), proj1 1024->128 + 3x128, proj2 4x128, head
    with torch.device("meta"):
        m = RINE(random_init=True)
    n = sum(p.numel() for p in m.parameters())
    d = 128
    assert (
        n == 24 * d + (1024 * d + d) + 3 * (d * d + d) + 4 * (d * d + d) + 2 * (d * d + d) + d + 1
    )


#: keys and shapes of the released ckpt/model_2class_trainable.pth (mever-team/rine at
#: 9b7fd5857cc205d0412be6aeee0d7611b95bd620, sha256 680d301b6d191da85b9dabcebf42cd3d
#: f20c5c669fa8320c498f835d02bf5ccb), read from the file itself
RELEASED_2CLASS = [("alpha", (1, 24, 128))] + [
    (
        f"{part}.{i}.{leaf}",
        (128, 1024 if (part, i) == ("proj1", 1) else 128) if leaf == "weight" else (128,),
    )
    for part in ("proj1", "proj2")
    for i in (1, 4, 7, 10)
    for leaf in ("weight", "bias")
]
RELEASED_2CLASS += [
    ("head.0.weight", (128, 128)),
    ("head.0.bias", (128,)),
    ("head.3.weight", (128, 128)),
    ("head.3.bias", (128,)),
    ("head.6.weight", (1, 128)),
    ("head.6.bias", (1,)),
]


def test_full_size_state_dict_is_the_released_file() -> None:
    with torch.device("meta"):
        m = RINE(random_init=True)
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == RELEASED_2CLASS


def test_format_registered() -> None:
    from detectors.formats import formats_for

    with torch.device("meta"):
        state = RINE(random_init=True).state_dict()
    assert [f.detectors for f in formats_for(state)] == [("rine",)]


#: keys and shapes of the released ckpt/model_2class_trainable.pth (mever-team/rine 9b7fd58)
OFFICIAL_2CLASS = {
    "alpha": (1, 24, 128),
    **{f"proj1.{i}.weight": (128, 1024 if i == 1 else 128) for i in (1, 4, 7, 10)},
    **{f"proj1.{i}.bias": (128,) for i in (1, 4, 7, 10)},
    **{f"proj2.{i}.weight": (128, 128) for i in (1, 4, 7, 10)},
    **{f"proj2.{i}.bias": (128,) for i in (1, 4, 7, 10)},
    "head.0.weight": (128, 128),
    "head.0.bias": (128,),
    "head.3.weight": (128, 128),
    "head.3.bias": (128,),
    "head.6.weight": (1, 128),
    "head.6.bias": (1,),
}


def test_full_size_matches_released_2class_layout() -> None:
    with torch.device("meta"):
        state = RINE(random_init=True).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == OFFICIAL_2CLASS

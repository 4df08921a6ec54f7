"""Effort: the SVD split, forward vs an independent ViT written here, gradients, overfitting,
the regularisers, strict loading of both official layouts, CLIP from a local file only, the
full-size parameter counts and the official test-time preprocessing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from detectors.effort import Effort, SVDResidualLinear
from detectors.formats import formats_for
from tests.detector_checks import (
    overfit,
    parameters_without_gradient,
    random_images,
    transformed_batch,
)
from tests.hf_clip_checks import TINY_VISION, clip_vit_pooled
from tests.official.weights import key_spec, seeded_state_dict

#: a 2 x 2 grid of 14 px patches, 2 layers of width 32 (rank 32: 31 frozen, 1 trained)
VISION = TINY_VISION
TINY = {"vision": VISION, "preprocessing": {"size": 28}}
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def model(**kw) -> Effort:
    torch.manual_seed(0)
    return Effort(**TINY, **kw).eval()


def official_state(m: Effort, seed: int = 3, principal: bool = False) -> dict[str, torch.Tensor]:
    """``EffortDetector.state_dict()``: DeepfakeBench's, or the authors' (with U_r/S_r/V_r)."""
    m.set_principal_factors(principal)
    state = seeded_state_dict(key_spec(m.state_dict()), seed)
    m.set_principal_factors(False)
    return state


def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Independent: OpenAI CLIP's ViT from the file's tensors, each attention weight rebuilt
    as ``weight_main + U_residual diag(S_residual) V_residual``; ``head`` logit z1 - z0."""
    w = lambda name: state["backbone." + name]  # noqa: E731

    def linear(t: torch.Tensor, name: str) -> torch.Tensor:
        weight = w(f"{name}.weight_main") + w(f"{name}.U_residual") @ torch.diag(
            w(f"{name}.S_residual")
        ) @ w(f"{name}.V_residual")
        return t @ weight.T + w(f"{name}.bias")

    pooled = clip_vit_pooled(
        x,
        w,
        VISION["num_hidden_layers"],
        VISION["num_attention_heads"],
        VISION["patch_size"],
        linear,
    )
    scores = pooled @ state["head.weight"].T + state["head.bias"]
    return scores[:, 1] - scores[:, 0]


@pytest.mark.parametrize("principal", [False, True], ids=["deepfakebench", "authors"])
def test_forward_equals_independent_vit(tmp_path, principal: bool) -> None:
    m = model()
    state = official_state(m, principal=principal)
    torch.save(state, tmp_path / "effort_best.pth")
    m.load_weights(tmp_path / "effort_best.pth")
    assert all(layer.principal_factors == principal for layer in m.svd_layers())
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        out = m({"image": x})
        ref = reference_logits(state, x)
    assert out["logits"].shape == (3,)
    assert out["embedding"].shape == (3, 32)
    assert out["logits"].std() > 0.01  # the logits depend on the picture
    assert torch.allclose(out["logits"], ref, atol=1e-5)
    # a test of the parity test: the one trained direction of one matrix changes the logits
    state["backbone.encoder.layers.1.self_attn.v_proj.S_residual"] += 5.0
    assert not torch.allclose(ref, reference_logits(state, x), atol=1e-3)


def test_svd_split_and_regularisers() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 32)
    layer = SVDResidualLinear(32, 32, residual_rank=2)
    layer.decompose(linear.weight, linear.bias)
    _u, s, _vh = torch.linalg.svd(linear.weight.detach())
    assert torch.allclose(layer.weight(), linear.weight, atol=1e-5)  # same function at start
    assert torch.allclose(layer.S_residual, s[-2:], atol=1e-6)  # the two smallest
    assert torch.linalg.matrix_rank(layer.weight_main).item() == 30
    x = torch.randn(5, 32)
    assert torch.allclose(layer(x), linear(x), atol=1e-5)
    # both losses vanish at the decomposition and grow when the residual leaves it
    assert layer.orthogonal_loss().item() < 1e-4
    assert layer.keepsv_loss().item() < 1e-3
    with torch.no_grad():
        layer.U_residual.mul_(2.0)
        layer.S_residual.mul_(10.0)
    assert layer.orthogonal_loss().item() > 0.5
    assert layer.keepsv_loss().item() > 0.1
    # the principal factors held as parameters (authors' layout) give the same loss
    held = SVDResidualLinear(32, 32, residual_rank=2, principal_factors=True)
    u, s, vh = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
    factors = {"U_r": u[:, :30], "S_r": s[:30], "V_r": vh[:30]}
    held.load_state_dict({**layer.state_dict(), **factors})
    assert torch.allclose(held.orthogonal_loss(), layer.orthogonal_loss(), atol=1e-4)
    with pytest.raises(UserError, match="residual_rank"):
        SVDResidualLinear(32, 32, residual_rank=32)


def test_only_the_residual_and_head_train() -> None:
    m = model()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    expected = {
        f"backbone.encoder.layers.{i}.self_attn.{proj}.{leaf}"
        for i in range(2)
        for proj in ATTENTION
        for leaf in ("U_residual", "S_residual", "V_residual")
    } | {"head.weight", "head.bias"}
    assert trainable == expected
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        before = m({"image": x})["logits"]
    optimizer, _ = m.configure_optimizers()  # decomposes, in place
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert ids == {id(p) for p in m.parameters() if p.requires_grad}
    assert all(layer.S_residual.abs().min() > 0 for layer in m.svd_layers())
    with torch.no_grad():
        assert torch.allclose(m({"image": x})["logits"], before, atol=1e-5)
    # a checkpoint of a pretrained=true run: its weights win, CLIP is not read again, and
    # the trained split is kept (no second decomposition)
    with torch.no_grad():
        m.backbone.encoder.layers[0].self_attn.q_proj.S_residual.add_(0.5)
    resumed = model()
    resumed._clip_pending, resumed.backbone_file = True, "/nonexistent/clip.safetensors"
    resumed.load_state_dict(m.state_dict())
    resumed.configure_optimizers()
    assert torch.equal(resumed.state_dict()["head.weight"], m.head.weight)
    key = "backbone.encoder.layers.0.self_attn.q_proj.S_residual"
    assert torch.equal(resumed.state_dict()[key], m.state_dict()[key])


def test_gradients_overfit_and_regularised_loss() -> None:
    m = model()
    batch = transformed_batch(m, random_images(4, 40), [0, 1, 0, 1], seed=0)
    assert batch["image"].shape == (4, 3, 28, 28)
    assert parameters_without_gradient(m, batch) == []
    assert overfit(m, batch, steps=200, lr=5e-2) < 0.05
    regularised = model(reg_weight=1.0)
    out = regularised.training_step(batch)
    assert set(out) == {"loss", "bce", "orthogonal", "keepsv"}
    expected = out["bce"] + out["orthogonal"] + out["keepsv"]
    assert torch.allclose(out["loss"], expected)
    assert parameters_without_gradient(regularised, batch) == []


def test_official_layouts_load_strictly(tmp_path) -> None:
    m = model()
    for principal, name in ((False, "DeepfakeBench Effort"), (True, "Effort (the authors'")):
        state = official_state(m, principal=principal)
        (found,) = formats_for(state)  # one format, and the right one
        assert found.name.startswith(name)
        # DDP prefix and the position_ids of transformers < 4.31 are accepted
        saved = {f"module.{k}": v for k, v in state.items()}
        saved["module.backbone.embeddings.position_ids"] = torch.arange(5)[None]
        torch.save(saved, tmp_path / "effort.pth")
        m.load_weights(tmp_path / "effort.pth")
        key = "backbone.encoder.layers.1.self_attn.k_proj.U_residual"
        assert torch.equal(m.backbone.encoder.layers[1].self_attn.k_proj.U_residual, state[key])
        del state[key]
        torch.save(state, tmp_path / "bad.pth")
        with pytest.raises(UserError, match=r"missing keys: .*k_proj\.U_residual"):
            m.load_weights(tmp_path / "bad.pth")
    # the file brings DeepfakeBench's test input; a field the user set wins
    user = Effort(vision=VISION, preprocessing={"size": 28, "interpolation": "bilinear"})
    user.load_weights(tmp_path / "effort.pth")
    assert (user.preprocessing.size, user.preprocessing.interpolation) == (28, "bilinear")
    assert user.preprocessing.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    # a deepsift checkpoint of the detector loads too
    torch.save({"state_dict": m.state_dict()}, tmp_path / "ours.pth")
    model().load_weights(tmp_path / "ours.pth")
    torch.save({"fc.weight": torch.zeros(1, 2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"not an Effort state dict.*effort_best\.pth"):
        m.load_weights(tmp_path / "other.pth")
    wider = official_state(model(residual_rank=2))
    torch.save(wider, tmp_path / "wide.pth")
    with pytest.raises(UserError, match="other shapes"):
        m.load_weights(tmp_path / "wide.pth")


def test_clip_from_local_file_only(tmp_path) -> None:
    with pytest.raises(UserError, match=r"detector\.vision"):
        Effort(pretrained=True, **TINY)
    # building needs no file; the first use fails in one line naming the option
    source = model()
    pending = model()
    pending._clip_pending = True  # what pretrained=true builds (full size only), on the tiny tower
    with pytest.raises(UserError, match=r"detector\.backbone_file=") as info:
        pending({"image": torch.zeros(1, 3, 28, 28)})
    assert "\n" not in str(info.value)
    # a Hugging Face CLIPModel file: text tower, projection, logit_scale, position_ids dropped
    plain = {}
    for name, tensor in source.backbone.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight_main":
            plain[f"vision_model.{owner}.weight"] = torch.randn_like(tensor) / 6
        elif leaf not in ("U_residual", "S_residual", "V_residual"):
            plain[f"vision_model.{name}"] = tensor.clone() + 0.5
    plain["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    plain["visual_projection.weight"] = torch.zeros(16, 32)
    plain["text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 32)
    plain["logit_scale"] = torch.tensor(2.6)
    from safetensors.torch import save_file

    (tmp_path / "clip").mkdir()
    save_file(plain, str(tmp_path / "clip" / "model.safetensors"))
    pending.backbone_file = str(tmp_path / "clip")
    head = pending.head.weight.clone()
    pending.configure_optimizers()  # reads CLIP, then decomposes
    q = pending.backbone.encoder.layers[0].self_attn.q_proj
    w_q = plain["vision_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert torch.allclose(q.weight(), w_q, atol=1e-5)
    assert torch.allclose(q.S_residual, torch.linalg.svdvals(w_q)[-1:], atol=1e-6)
    assert torch.equal(
        pending.backbone.post_layernorm.bias, plain["vision_model.post_layernorm.bias"]
    )
    assert torch.equal(pending.head.weight, head)
    del plain["vision_model.post_layernorm.bias"]
    save_file(plain, str(tmp_path / "clip" / "model.safetensors"))
    again = model()
    again._clip_pending, again.backbone_file = True, str(tmp_path / "clip")
    with pytest.raises(UserError, match=r"missing keys: .*post_layernorm\.bias"):
        again.load_backbone()
    again.backbone_file = str(tmp_path / "none.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        again.load_backbone()


def test_default_preprocessing() -> None:
    """effort.yaml / test.py: 224 x 224 (cv2 INTER_CUBIC), CLIP normalisation."""
    m = Effort(vision=VISION)
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    batch = transformed_batch(m, [image], [0])
    assert batch["image"].shape == (1, 3, 224, 224)
    red = (1 - 0.48145466) / 0.26862954
    assert torch.allclose(batch["image"][0, 0], torch.full((224, 224), red), atol=1e-4)


def test_full_size_reference() -> None:
    with torch.device("meta"):
        m = Effort()
    total = sum(p.numel() for p in m.parameters())
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    # CLIP ViT-L/14's tower (303,179,776) + 96 x (1024 + 1 + 1024) residual + head 2 x 1025
    assert (total, trainable) == (303_378_530, 198_754)
    assert len(list(m.svd_layers())) == 96
    q = m.backbone.encoder.layers[0].self_attn.q_proj
    assert (q.weight_main.shape, q.U_residual.shape, q.V_residual.shape) == (
        (1024, 1024),
        (1024, 1),
        (1, 1024),
    )
    m.set_principal_factors(True)  # the authors' layout: + U_r, S_r, V_r
    assert sum(p.numel() for p in m.parameters()) == 303_378_530 + 96 * (2 * 1024 * 1023 + 1023)

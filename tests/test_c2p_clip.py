"""C2P-CLIP: forward vs an independent ViT written here, gradients, overfitting, strict
loading of the official ``C2P_CLIP`` state-dict layout, CLIP from a local file only, the
full-size reference figures and the official test-time preprocessing."""

from __future__ import annotations

import zipfile

import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from detectors.c2p_clip import C2PCLIP
from detectors.formats import format_named, formats_for
from tests.detector_checks import (
    overfit,
    parameters_without_gradient,
    random_images,
    transformed_batch,
)
from tests.hf_clip_checks import TINY_VISION, clip_vit_pooled
from tests.official.weights import key_spec, seeded_state_dict

#: a 2 x 2 grid of 14 px patches, 2 layers of width 32, 16-d projection
VISION = {**TINY_VISION, "projection_dim": 16}
TINY = {"vision": VISION, "preprocessing": {"size": 28, "resize_to": 28}}


def model(**kw) -> C2PCLIP:
    """Tiny C2P-CLIP with seeded fan-in-scaled weights (an N(0, 0.02) head is near 0)."""
    torch.manual_seed(0)
    m = C2PCLIP(**TINY, **kw).eval()
    m.model.load_state_dict(seeded_state_dict(key_spec(m.model.state_dict()), seed=7))
    return m


def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """Independent: OpenAI CLIP's ViT written out from the official tensors (``model.*``)."""
    v = "model.vision_model."
    w = lambda name: state[v + name]  # noqa: E731
    pooled = clip_vit_pooled(x, w, VISION["num_hidden_layers"], heads, VISION["patch_size"])
    e = pooled @ state["model.visual_projection.weight"].T
    e = e / e.norm(dim=-1, keepdim=True)
    return (e @ state["model.fc.weight"].T + state["model.fc.bias"])[:, 0]


def official_state(m: C2PCLIP, seed: int = 3) -> dict[str, torch.Tensor]:
    """The authors' ``C2P_CLIP.state_dict()`` layout, seeded: every key under ``model.``."""
    return seeded_state_dict(
        key_spec({f"model.{k}": v for k, v in m.model.state_dict().items()}), seed
    )


def test_forward_equals_independent_vit(tmp_path) -> None:
    m = model()
    state = official_state(m)
    torch.save(state, tmp_path / "c2p.pth")
    m.load_weights(tmp_path / "c2p.pth")
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        out = m({"image": x})
        ref = reference_logits(state, x, VISION["num_attention_heads"])
    assert out["logits"].shape == (3,)
    assert out["embedding"].shape == (3, 16)
    assert torch.allclose(out["embedding"].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert out["logits"].std() > 0.01  # the logits depend on the picture
    assert torch.allclose(out["logits"], ref, atol=1e-5)
    # a test of the parity test: another layer's weights give other logits
    state["model.vision_model.encoder.layers.1.mlp.fc2.weight"] *= 1.5
    assert not torch.allclose(ref, reference_logits(state, x, 2), atol=1e-3)


def test_gradients_and_overfit() -> None:
    m = model()
    batch = transformed_batch(m, random_images(4, 40), [0, 1, 0, 1], seed=0)
    assert batch["image"].shape == (4, 3, 28, 28)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable == ["model.fc.weight", "model.fc.bias"]  # the reference freezes the encoder
    assert parameters_without_gradient(m, batch) == []
    full = model(train_encoder=True)
    assert parameters_without_gradient(full, batch) == []
    assert sum(p.requires_grad for p in full.parameters()) == len(list(full.parameters()))
    assert overfit(full, batch, steps=150, lr=1e-2) < 0.05


def test_official_layout_loads_strictly(tmp_path) -> None:
    m = model()
    state = official_state(m)
    assert format_named(formats_for(state)[0].name).detectors == ("c2p_clip",)
    torch.save(state, tmp_path / "c2p.pth")
    # the release name is a zip holding one torch file (torch.hub's legacy zip) ...
    with zipfile.ZipFile(tmp_path / "C2P_CLIP_release_20240901.zip", "w") as archive:
        archive.write(tmp_path / "c2p.pth", "C2P_CLIP_release_20240901.pth")
    m.load_weights(tmp_path / "C2P_CLIP_release_20240901.zip")
    assert torch.equal(m.model.fc.weight, state["model.fc.weight"])
    key = "model.vision_model.encoder.layers.1.self_attn.k_proj.weight"
    assert torch.equal(m.model.vision_model.encoder.layers[1].self_attn.k_proj.weight, state[key])
    # ... or a plain torch.save file; a deepsift checkpoint of the detector loads too
    m.load_weights(tmp_path / "c2p.pth")
    torch.save({"state_dict": m.state_dict()}, tmp_path / "ours.pth")
    model().load_weights(tmp_path / "ours.pth")
    del state[key]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="k_proj"):
        m.load_weights(tmp_path / "bad.pth")
    torch.save({"fc.weight": torch.zeros(1, 2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"C2P_CLIP_release_20240901\.zip"):
        m.load_weights(tmp_path / "other.pth")


def test_clip_from_local_file_only(tmp_path) -> None:
    with pytest.raises(UserError, match=r"detector\.clip_file=") as info:
        C2PCLIP(pretrained=True)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"detector\.vision"):
        C2PCLIP(pretrained=True, clip_file="x", **TINY)
    # a Hugging Face CLIPModel file: text tower, position_ids and logit_scale dropped
    source = model().model
    hf = {f"vision_model.{k}": v * 2 for k, v in source.vision_model.state_dict().items()}
    hf["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    hf["visual_projection.weight"] = source.visual_projection.weight * 2
    hf["text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 32)
    hf["logit_scale"] = torch.tensor(2.6)
    from safetensors.torch import save_file

    (tmp_path / "clip").mkdir()
    save_file(hf, str(tmp_path / "clip" / "model.safetensors"))
    from detectors.c2p_clip import load_clip_vision

    m = model()
    fc = m.model.fc.weight.clone()
    load_clip_vision(m.model, str(tmp_path / "clip"))
    assert torch.equal(m.model.visual_projection.weight, hf["visual_projection.weight"])
    assert torch.equal(
        m.model.vision_model.post_layernorm.bias, hf["vision_model.post_layernorm.bias"]
    )
    assert torch.equal(m.model.fc.weight, fc)
    del hf["vision_model.post_layernorm.bias"]
    save_file(hf, str(tmp_path / "clip" / "model.safetensors"))
    with pytest.raises(UserError, match=r"post_layernorm\.bias"):
        load_clip_vision(m.model, str(tmp_path / "clip"))
    with pytest.raises(UserError, match="does not exist"):
        load_clip_vision(m.model, str(tmp_path / "none.safetensors"))


def test_official_preprocessing() -> None:
    """data.py: Resize(224) on the shorter side, CenterCrop(224), CLIP normalisation."""
    m = C2PCLIP(**{"vision": VISION})  # the default protocol, a tiny tower
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    batch = transformed_batch(m, [image], [0])
    assert batch["image"].shape == (1, 3, 224, 224)
    red = (1 - 0.48145466) / 0.26862954
    assert torch.allclose(batch["image"][0, 0], torch.full((224, 224), red), atol=1e-4)


def test_full_size_reference() -> None:
    with torch.device("meta"):
        m = C2PCLIP()
    counts = {n: sum(p.numel() for p in c.parameters()) for n, c in m.model.named_children()}
    # OpenAI CLIP ViT-L/14's image tower (Hugging Face openai/clip-vit-large-patch14)
    assert counts == {"vision_model": 303_179_776, "visual_projection": 786_432, "fc": 769}
    assert m.model.vision_model.embeddings.position_embedding.weight.shape == (257, 1024)

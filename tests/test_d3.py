"""D3: patch shuffle, official head file, an independent forward pass, frozen backbone."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.d3 import D3, shuffle_patches
from detectors.formats import formats_for
from detectors.layers.clip import build_visual
from tests.detector_checks import overfit, parameters_without_gradient, random_images
from tests.detector_checks import transformed_batch as engine_batch
from tests.official.weights import key_spec, seeded_state_dict

open_clip = pytest.importorskip("open_clip")  # PyPI open_clip_torch

TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32}
TINY_TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
TINY_EMBED, TINY_WIDTH = 16, 64
TINY = {"model_name": "ViT-L-14", "vision_cfg": TINY_VISION, "embed_dim": TINY_EMBED}

# OpenAI CLIP ViT-L/14 image encoder without its projection (D3 reads ln_post's output):
# width 1024, 24 layers, patch 14, 224 px; then the head: query/key/value Linear(1024,
# 1024) and fc Linear(2 * 1024, 1)
W, LAYERS, TOKENS = 1024, 24, (224 // 14) ** 2 + 1
PER_BLOCK = 2 * 2 * W + (3 * W * W + 3 * W) + (W * W + W) + (4 * W * W + 4 * W) + (4 * W * W + W)
ENCODER = 3 * 14 * 14 * W + W + TOKENS * W + 2 * W + LAYERS * PER_BLOCK + 2 * W
HEAD = 3 * (W * W + W) + 2 * W + 1
assert ENCODER == 303_179_776 and HEAD == 3_150_849

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(TINY_EMBED, TINY_VISION, TINY_TEXT, quick_gelu=True).eval()


def reference_shuffle(x: torch.Tensor, patch: int, order: torch.Tensor) -> torch.Tensor:
    """The reference's way: F.unfold, index the patch axis, F.fold."""
    patches = F.unfold(x, kernel_size=patch, stride=patch)
    return F.fold(patches[:, :, order], output_size=x.shape[-2:], kernel_size=patch, stride=patch)


def reference_input(image) -> torch.Tensor:
    """validate_for_robustness.py: Resize((224, 224)), ToTensor, CLIP Normalize."""
    pipeline = transforms.Compose(
        [transforms.Resize((224, 224)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    return pipeline(image)


def head_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """classifier.pth for the tiny width, in the reference's key order."""
    spec = [
        [f"{name}.{leaf}", [TINY_WIDTH, TINY_WIDTH] if leaf == "weight" else [TINY_WIDTH]]
        for name in ("query", "key", "value")
        for leaf in ("weight", "bias")
    ] + [["fc.weight", [1, 2 * TINY_WIDTH]], ["fc.bias", [1]]]
    return seeded_state_dict([[k, s, "float32"] for k, s in spec], seed=seed)


def test_full_size_parameter_count_on_meta() -> None:
    with torch.device("meta"):
        visual = build_visual("ViT-L-14", quick_gelu=True)
        det = D3(random_init=True)
    visual.proj = None
    assert sum(p.numel() for p in visual.parameters()) == ENCODER
    assert det.feature_dim == W
    assert sum(p.numel() for p in det.parameters()) == HEAD
    assert sorted(det.state_dict()) == sorted(f"attention_head.{k}" for k in head_state())


def test_shuffle_matches_unfold_fold_and_is_a_permutation() -> None:
    x = torch.randn(2, 3, 224, 224)
    order = torch.randperm(256, generator=torch.Generator().manual_seed(5))
    got = shuffle_patches(x, 14, order)
    torch.testing.assert_close(got, reference_shuffle(x, 14, order), rtol=0, atol=0)
    assert not torch.equal(got, x)
    assert torch.equal(got.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    # tile (0, 0) of the output is input tile order[0]
    r, c = divmod(int(order[0]), 16)
    assert torch.equal(got[..., :14, :14], x[..., r * 14 : r * 14 + 14, c * 14 : c * 14 + 14])
    with pytest.raises(UserError, match="multiple of 14"):
        shuffle_patches(torch.zeros(1, 3, 225, 224), 14, order)


def test_evaluation_order_is_fixed_and_is_the_references_seeded_randperm() -> None:
    det = D3(random_init=True, **TINY).eval()
    torch.manual_seed(418)  # make_d3.py seeds the global RNG before the reference forward
    expected = torch.randperm(256)
    assert torch.equal(det.shuffle_order(256, torch.device("cpu")), expected)
    assert torch.equal(det.shuffle_order(256, torch.device("cpu")), expected)
    det.train()
    drawn = {tuple(det.shuffle_order(256, torch.device("cpu")).tolist()) for _ in range(3)}
    assert len(drawn) == 3  # training: a fresh order every step


def test_official_head_matches_independent_forward(tmp_path: Path) -> None:
    clip = tiny_clip()
    backbone = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), backbone)
    head = head_state()
    head_file = tmp_path / "classifier.pth"
    torch.save(head, head_file)

    det = load_detector("d3", weights=head_file, backbone_file=str(backbone), **TINY)
    pics = random_images(3, (300, 260), seed=0) + random_images(1, (180, 240), seed=1)
    got = torch.from_numpy(det.predict(pics, device="cpu", batch_size=3))

    # independent: resize, shuffle as the reference does, CLIP's ln_post CLS token, the head
    x = torch.stack([reference_input(p) for p in pics])
    order = torch.randperm(256, generator=torch.Generator().manual_seed(418))
    visual = clip.visual

    def ln_post_cls(images: torch.Tensor) -> torch.Tensor:
        h = visual.conv1(images).flatten(2).transpose(1, 2)
        h = torch.cat([visual.class_embedding.expand(len(h), 1, -1), h], 1)
        h = visual.ln_pre(h + visual.positional_embedding)
        for block in visual.transformer.resblocks:
            h = h + block.attention(block.ln_1(h))
            h = h + block.mlp(block.ln_2(h))
        return visual.ln_post(h[:, 0])

    with torch.no_grad():
        views = torch.stack([ln_post_cls(reference_shuffle(x, 14, order)), ln_post_cls(x)], 1)
        q = views @ head["query.weight"].T + head["query.bias"]
        k = views @ head["key.weight"].T + head["key.bias"]
        v = views @ head["value.weight"].T + head["value.bias"]
        attention = torch.softmax(q @ k.transpose(1, 2) / TINY_WIDTH**0.5, dim=1)
        logits = (attention @ v).reshape(len(x), -1) @ head["fc.weight"].T + head["fc.bias"]
    torch.testing.assert_close(got, torch.sigmoid(logits.squeeze(1)), atol=1e-5, rtol=1e-5)
    # a picture's score does not depend on its batch
    alone = det.predict(pics[1:2], device="cpu")
    torch.testing.assert_close(torch.from_numpy(alone), got[1:2], atol=1e-6, rtol=0)


def test_full_size_official_layout_is_recognised_and_loads_strictly(tmp_path: Path) -> None:
    with torch.device("meta"):
        det = D3(random_init=True)
    spec = key_spec(det.attention_head.state_dict())
    state = seeded_state_dict([[k, s, "float32"] for k, s, _ in spec])
    names = [f.name for f in formats_for(state)]
    assert len(names) == 1 and names[0].startswith("D3 ")
    path = tmp_path / "classifier.pth"
    torch.save(state, path)
    det = D3(random_init=True)
    det.load_weights(path)
    assert torch.equal(det.attention_head.fc.weight, state["fc.weight"])
    assert det.preprocessing.resize == "square" and det.preprocessing.crop == "none"


def test_wrong_head_files_are_one_clear_error(tmp_path: Path) -> None:
    univfd = tmp_path / "fc_weights.pth"
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, univfd)
    with pytest.raises(UserError, match=r"not a D3 attention head.*backbone_file"):
        load_detector("d3", weights=univfd, random_init=True, **TINY)
    shaped = tmp_path / "classifier_other.pth"
    torch.save({k: torch.zeros(2, *v.shape[1:]) for k, v in head_state().items()}, shaped)
    with pytest.raises(UserError, match="other shapes"):
        load_detector("d3", weights=shaped, random_init=True, **TINY)
    missing = tmp_path / "classifier_partial.pth"
    torch.save({k: v for k, v in head_state().items() if k != "fc.bias"}, missing)
    with pytest.raises(UserError, match=r"not a D3 attention head"):
        load_detector("d3", weights=missing, random_init=True, **TINY)


def test_offline_without_backbone_file_fails_fast_and_clearly() -> None:
    det = load_detector("d3")  # builds instantly: the encoder is resolved on first use
    start = time.monotonic()
    with pytest.raises(UserError, match=r"detector\.backbone_file="):
        det.predict(random_images(1, 224), device="cpu")
    assert time.monotonic() - start < 10


def test_only_the_head_trains_and_it_overfits_a_tiny_batch() -> None:
    det = D3(random_init=True, seed=2, **TINY)
    pics = random_images(4, (260, 300), seed=5)
    batch = engine_batch(det, pics, [0, 1, 0, 1], train=True, seed=0)
    assert batch["image"].shape == (4, 3, 224, 224)
    assert parameters_without_gradient(det, batch) == []
    assert all(not p.requires_grad for p in det.backbone.parameters())
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == (
        3 * (TINY_WIDTH**2 + TINY_WIDTH) + 2 * TINY_WIDTH + 1
    )
    before = [p.detach().clone() for p in det.backbone.parameters()]
    assert overfit(det, batch, steps=200, lr=1e-2, target=0.05) < 0.05
    assert all(torch.equal(a, b) for a, b in zip(before, det.backbone.parameters(), strict=True))


def test_official_head_keeps_the_protocol_and_warns_on_an_override(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    head = tmp_path / "classifier.pth"
    torch.save(head_state(), head)
    with caplog.at_level(logging.INFO, logger="detectors.base"):
        det = load_detector("d3", weights=head, random_init=True, **TINY)
    assert det.preprocessing.resize == "square" and det.preprocessing.size == 224
    assert any("D3 classifier.pth weights" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detectors.base"):
        load_detector(
            "d3", weights=head, random_init=True, preprocessing={"crop": "center"}, **TINY
        )
    assert any("departs from the protocol" in r.getMessage() for r in caplog.records)

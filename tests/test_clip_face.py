"""ClipFace: CLIP preprocessing, the pooled pre-projection feature, a frozen encoder, head files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.clip_face import ClipFace
from detectors.layers.clip import build_visual
from tests.detector_checks import overfit, transformed_batch

open_clip = pytest.importorskip("open_clip")  # PyPI open_clip_torch

#: a CLIP small enough for CPU tests (random weights)
TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32}
TINY_TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
TINY_EMBED = 16
TINY = {"vision_cfg": TINY_VISION, "embed_dim": TINY_EMBED}

# DeepfakeBench's CLIPDetector: Hugging Face CLIPVisionTransformer of openai/clip-vit-base-patch16
# (patch embedding without bias, class and 197 position embeddings, pre-LayerNorm, 12 layers of
# LayerNorm + attention (q, k, v, out with biases) + LayerNorm + MLP 768-3072-768, post-LayerNorm)
# and head Linear(768, 2).
W, LAYERS, TOKENS = 768, 12, (224 // 16) ** 2 + 1
PER_LAYER = 2 * W + 4 * (W * W + W) + 2 * W + (W * 4 * W + 4 * W) + (4 * W * W + W)
HF_VISION = 3 * 16 * 16 * W + W + TOKENS * W + 2 * W + LAYERS * PER_LAYER + 2 * W
assert HF_VISION == 85_799_424
REFERENCE_PARAMETERS = HF_VISION + W * 2 + 2

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip(seed: int = 0) -> nn.Module:
    """A whole open_clip CLIP (image and text towers), as in open_clip_pytorch_model.bin."""
    torch.manual_seed(seed)
    return open_clip.CLIP(TINY_EMBED, TINY_VISION, TINY_TEXT, quick_gelu=True).eval()


def faces(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(256, 256), (300, 260), (180, 180)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)
    ]


def clip_input(image: Image.Image) -> torch.Tensor:
    """CLIP's own preprocess: Resize(224, bicubic), CenterCrop(224), ToTensor, Normalize."""
    pipeline = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    return pipeline(image)


def test_parameter_count_matches_deepfakebench_clip() -> None:
    with torch.device("meta"):
        visual = build_visual("ViT-B-16", quick_gelu=True)
    encoder = sum(p.numel() for p in visual.parameters()) - visual.proj.numel()  # proj unused
    count = encoder + W + 1  # fc = Linear(768, 1)
    assert encoder == HF_VISION
    assert abs(count - REFERENCE_PARAMETERS) <= 0.01 * REFERENCE_PARAMETERS


def test_feature_is_the_pooled_token_before_the_projection(tmp_path: Path) -> None:
    clip = tiny_clip()
    backbone = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), backbone)
    det = ClipFace(backbone_file=str(backbone), **TINY)
    torch.manual_seed(1)
    nn.init.normal_(det.fc.weight, 0.0, 0.5)
    pics = faces(3)
    got = torch.from_numpy(det.predict(pics, device="cpu"))

    x = torch.stack([clip_input(p) for p in pics])
    with torch.no_grad():
        pooled = det.features(x)
        projected = clip.encode_image(x)  # = pooled @ proj, computed by open_clip's CLIP
    assert pooled.shape == (3, TINY_VISION["width"])
    torch.testing.assert_close(pooled @ clip.visual.proj, projected, atol=1e-5, rtol=1e-5)
    expected = torch.sigmoid(pooled @ det.fc.weight.detach().T + det.fc.bias.detach()).squeeze(1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert set(det.state_dict()) == {"fc.weight", "fc.bias"}


def test_native_size_forward_with_the_real_architecture() -> None:
    det = ClipFace(random_init=True)  # ViT-B/16, random weights: shapes and speed only
    image = faces(1)[0]
    x = det.transform({"image": image, "label": 0, "record": None, "index": 0})["image"]
    assert x.shape == (3, 224, 224)
    with torch.no_grad():
        logits = det({"image": x[None]})["logits"]
    assert logits.shape == (1,) and torch.isfinite(logits).all()
    assert det.feature_dim == 768


def test_frozen_encoder_trains_the_head_alone_and_overfits() -> None:
    det = ClipFace(random_init=True, seed=2, **TINY)
    batch = transformed_batch(det, faces(4, seed=5), [0, 1, 0, 1], train=True, seed=0)
    assert batch["image"].shape == (4, 3, 224, 224)
    before = [p.detach().clone() for p in det.backbone.parameters()]
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["weight_decay"] == 5e-4
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 64 + 1
    assert overfit(det, batch, steps=400, lr=0.3, target=0.05) < 0.05
    assert all(not p.requires_grad and p.grad is None for p in det.backbone.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, det.backbone.parameters(), strict=True))
    assert not det.backbone.training


def test_head_files_load_strictly(tmp_path: Path) -> None:
    head = tmp_path / "head.pth"
    torch.save({"weight": torch.full((1, 64), 0.1), "bias": torch.tensor([0.5])}, head)
    det = load_detector("clip_face", weights=head, random_init=True, **TINY)
    assert torch.equal(det.fc.bias.detach(), torch.tensor([0.5]))
    wrong = tmp_path / "wrong.pth"
    torch.save({"head.weight": torch.zeros(2, 768), "head.bias": torch.zeros(2)}, wrong)
    with pytest.raises(UserError, match=r"backbone_file.*missing keys: fc\.bias, fc\.weight"):
        load_detector("clip_face", weights=wrong, random_init=True, **TINY)


def test_offline_without_backbone_file_fails_fast_and_clearly() -> None:
    det = load_detector("clip_face")  # builds instantly: the encoder is resolved on first use
    start = time.monotonic()
    with pytest.raises(UserError, match=r"detector\.backbone_file="):
        det.predict(faces(1), device="cpu")
    assert time.monotonic() - start < 10

"""TALL: thumbnail layout, clip transform, gradients, overfitting, full-size parameter count."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.formats import format_named, formats_for
from detectors.tall import TALL, thumbnail
from tests.official.weights import seeded_state_dict
from tests.video_detectors import TINY

# Swin-B (patch 4, window 7, 224 px): 87,768,224 parameters with timm's 1000-class head
# (1024 x 1000 + 1000); deepsift keeps the backbone and one 1024 -> 1 logit.
REFERENCE_PARAMETERS = 87_768_224 - (1024 * 1000 + 1000) + 1024 + 1


def tiny(**overrides: object) -> TALL:
    torch.manual_seed(0)
    return load_detector("tall", **{**TINY["tall"], **overrides})


def frames(n: int, seed: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def test_thumbnail_tiles_frames_row_major() -> None:
    clip = torch.randn(2, 6, 3, 5, 7)
    grid = thumbnail(clip, rows=2, cols=3)
    expected = torch.cat(
        [torch.cat([clip[:, r * 3 + c] for c in range(3)], dim=-1) for r in range(2)], dim=-2
    )
    assert grid.shape == (2, 3, 10, 21)
    torch.testing.assert_close(grid, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not fill"):
        thumbnail(clip[:, :5], 2, 3)


def test_forward_is_backbone_on_the_thumbnail() -> None:
    det = tiny().eval()
    assert det.input_kind == "clip" and det.clip_len == 4 and not det.needs_mouth
    clip = torch.stack([det.transform({"frames": frames(4, s)})["clip"] for s in range(3)])
    assert clip.shape == (3, 4, 3, 28, 28)
    with torch.no_grad():
        logits = det({"clip": clip})["logits"]
        top = torch.cat([clip[:, 0], clip[:, 1]], dim=-1)
        bottom = torch.cat([clip[:, 2], clip[:, 3]], dim=-1)
        image = torch.cat([top, bottom], dim=-2)
        expected = det.head(det.backbone(image)).squeeze(-1)
    assert logits.shape == (3,)
    torch.testing.assert_close(logits, expected)


def test_eval_transform_is_deepfakebench_cv2_resize_and_imagenet_normalise() -> None:
    det = tiny()
    clip = det.transform({"frames": frames(4, 7)})["clip"]
    cv2 = pytest.importorskip("cv2")
    # abstract_dataset.py load_rgb: cv2.resize (INTER_CUBIC); ToTensor; Normalize(ImageNet)
    last = cv2.resize(np.asarray(frames(4, 7)[-1]), (28, 28), interpolation=cv2.INTER_CUBIC)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    want = (torch.from_numpy(last).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(clip[-1], want)


def test_train_transform_masks_one_square_in_all_frames() -> None:
    det = tiny(hflip=0.0, crop_scale=[1.0, 1.0], frame_size=40, mask_size=16)
    clip = frames(4, 3)
    plain = det.transform({"frames": clip})["clip"]
    torch.manual_seed(0)
    for _ in range(5):
        masked = det.transform({"frames": clip}, train=True)["clip"]
        changed = (masked != plain).any(dim=1)  # (T, H, W)
        assert changed.any()
        for t in range(1, 4):  # one place for the clip
            torch.testing.assert_close(changed[t], changed[0])
        rows, cols = changed[0].nonzero().unbind(1)
        assert rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16
        assert (masked[:, :, rows, cols] == -1).all()


def test_train_transform_applies_one_flip_to_all_frames() -> None:
    det = tiny(hflip=1.0, crop_scale=[1.0, 1.0], mask_size=0)
    same = frames(1, 0) * 4
    clip = det.transform({"frames": same}, train=True)["clip"]
    plain = det.transform({"frames": same})["clip"]
    for t in range(4):
        torch.testing.assert_close(clip[t], clip[0])
    torch.testing.assert_close(clip[0], plain[0].flip(-1), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="clip_len=4"):
        det.transform({"frames": same[:3]})


def test_gradients_reach_every_parameter_and_a_tiny_batch_overfits() -> None:
    det = tiny().train()
    clip = torch.stack([det.transform({"frames": frames(4, s)})["clip"] for s in range(4)])
    batch = {"clip": clip, "label": torch.tensor([0, 1, 0, 1])}
    det.training_step(batch)["loss"].backward()
    missing = [n for n, p in det.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    opt = torch.optim.Adam(det.parameters(), lr=1e-3)
    for _ in range(40):
        opt.zero_grad()
        loss = det.training_step(batch)["loss"]
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_full_size_parameter_count_on_meta() -> None:
    with torch.device("meta"):
        det = TALL()
    assert sum(p.numel() for p in det.parameters()) == REFERENCE_PARAMETERS


def test_pretrained_file_loads_strictly(tmp_path) -> None:
    det = tiny()
    path = tmp_path / "swin.pth"
    torch.save({k: v.clone() + 1 for k, v in det.backbone.state_dict().items()}, path)
    loaded = tiny(pretrained_file=str(path))
    torch.testing.assert_close(
        loaded.backbone.patch_embed.proj.weight, det.backbone.patch_embed.proj.weight + 1
    )
    torch.save({"extra": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="extra"):
        tiny(pretrained_file=str(path))
    with pytest.raises(UserError, match="pretrained_file"):
        tiny(pretrained_file=str(tmp_path / "missing.pth"))


def test_default_optimiser_is_deepfakebench_tall_adam() -> None:
    optimizer, scheduler = tiny().configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert (group["lr"], group["weight_decay"]) == (2e-5, 5e-4)
    optimizer, _ = TALL(**TINY["tall"]).configure_optimizers()
    assert optimizer.param_groups[0]["lr"] == 2e-5


def deepfakebench_layout(det: TALL, seed: int) -> dict[str, torch.Tensor]:
    """A DeepfakeBench ``tall_best.pth`` for ``det``'s Swin: ``model.`` prefix, Microsoft
    Swin names (``layers.i.downsample`` ends stage i, ``head`` without ``.fc``), 2 classes."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for k, v in det.backbone.state_dict().items():
        if "relative_position_index" in k or "attn_mask" in k:
            continue
        m = re.match(r"layers\.(\d+)\.downsample(.*)", k)
        if m:
            k = f"layers.{int(m.group(1)) - 1}.downsample{m.group(2)}"
        state[f"model.{k}"] = torch.randn(v.shape, generator=gen) * 0.1
    width = det.backbone.num_features
    state["model.head.weight"] = torch.randn(2, width, generator=gen)
    state["model.head.bias"] = torch.randn(2, generator=gen)
    state["model.frame_pos_embed"] = torch.randn(1, 4, 16, generator=gen)
    return state


def test_deepfakebench_layout_loads_strictly(tmp_path) -> None:
    overrides = {"frame_pos_embed": True, "thumbnail_size": 56, "frame_size": 40}
    det = tiny(**overrides)
    state = deepfakebench_layout(det, seed=1)
    assert [f.name for f in formats_for(state)] == ["DeepfakeBench TALL"]
    path = tmp_path / "tall_best.pth"
    torch.save(state, path)
    loaded = tiny(weights=str(path), **overrides).eval()
    torch.testing.assert_close(loaded.frame_pos_embed, state["model.frame_pos_embed"])
    w = state["model.head.weight"]
    torch.testing.assert_close(loaded.head.weight[0], w[1] - w[0])
    torch.testing.assert_close(
        loaded.backbone.layers[1].downsample.reduction.weight,
        state["model.layers.0.downsample.reduction.weight"],
    )
    clip = torch.randn(2, 4, 3, 40, 40)
    with torch.no_grad():
        logits = loaded({"clip": clip})["logits"]
        # independent: tile, resize 80 -> 56, patchify, add each frame's embedding to its cell
        image = F.interpolate(thumbnail(clip, 2, 2), size=(56, 56), mode="bilinear")
        x = loaded.backbone.patch_embed(image)
        pos = state["model.frame_pos_embed"][0]
        x = x.clone()
        for i in range(4):
            r, c = divmod(i, 2)
            x[:, r * 7 : (r + 1) * 7, c * 7 : (c + 1) * 7] += pos[i]
        feats = loaded.backbone.forward_head(loaded.backbone.norm(loaded.backbone.layers(x)))
        two = feats @ w.T + state["model.head.bias"]
    torch.testing.assert_close(logits, two[:, 1] - two[:, 0], atol=1e-5, rtol=1e-5)
    state["model.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(UserError, match="extra"):
        tiny(weights=str(path), **overrides)


# DeepfakeBench's TALL SwinTransformer (tall.yaml: embed 128, depths (2, 2, 18, 2), windows
# (14, 14, 14, 7), ape, 2 classes) has 86,920,506 parameters (built from its
# tall_detector.py at commit 8a4a7bf); deepsift's has one 1024 + 1 head row fewer.
DEEPFAKEBENCH_PARAMETERS = 86_920_506 - (1024 + 1)


def test_deepfakebench_size_parameter_count_on_meta() -> None:
    with torch.device("meta"):
        det = TALL(
            frame_size=224,
            thumbnail_size=224,
            frame_pos_embed=True,
            model_kwargs={
                "embed_dim": 128,
                "depths": [2, 2, 18, 2],
                "num_heads": [4, 8, 16, 32],
                "window_size": 14,
            },
        )
    assert sum(p.numel() for p in det.parameters()) == DEEPFAKEBENCH_PARAMETERS


AUTHORS = json.loads((Path(__file__).parent / "official/video/tall_dfb.json").read_text())


def test_matches_the_authors_code(tmp_path: Path) -> None:
    """DeepfakeBench's TALLDetector (its own Swin copy) run by tests/official/make_tall.py."""
    tiny = AUTHORS["tiny"]
    config = tiny["config"]
    spec = [[k, shape, dtype] for k, shape, dtype in tiny["key_spec"]]
    # tall_best.pth holds the buffers too (relative_position_index, attn_mask): the file's
    # own values are not needed (deepsift rebuilds them), so placeholders stand in here
    state = seeded_state_dict(spec, AUTHORS["seed"])
    path = tmp_path / "tall_best.pth"
    torch.save(state, path)
    size = config["resolution"]
    det = tiny_detector_like(config, path).eval()
    assert sum(p.numel() for p in det.parameters()) == tiny["parameters"] - (16 * 2 + 1)
    torch.manual_seed(0)
    x = torch.randn(2, config["clip_size"], 3, size, size)
    with torch.no_grad():
        logits = det({"clip": x})["logits"].double()
    cls = torch.tensor(tiny["cls"], dtype=torch.float64)
    torch.testing.assert_close(logits, cls[:, 1] - cls[:, 0], atol=1e-5, rtol=0)


def tiny_detector_like(config: dict, weights: Path | None = None) -> TALL:
    """deepsift's TALL with the architecture of a DeepfakeBench TALL config."""
    size = config["resolution"]
    return load_detector(
        "tall",
        weights=weights,
        clip_len=config["clip_size"],
        rows=config["thumbnail_rows"],
        frame_size=size,
        thumbnail_size=size,
        frame_pos_embed=config["ape"],
        model_kwargs={
            "embed_dim": config["embed_dim"],
            "depths": config["depths"],
            "num_heads": config["num_heads"],
            "window_size": config["window_size"],
        },
    )


def test_full_size_parameters_are_the_authors() -> None:
    full = AUTHORS["full"]
    assert full["parameters"] == 86_920_506 == DEEPFAKEBENCH_PARAMETERS + 1024 + 1
    assert len(full["key_spec"]) == 356


@pytest.mark.slow
def test_matches_the_authors_code_at_full_size(tmp_path: Path) -> None:
    """DeepfakeBench's 224 px TALL (Swin-B, windows 14/14/14/7, 18-block stage 3) on seeded
    weights: the configuration of a released tall_best.pth (about 10 s on one core)."""
    full = AUTHORS["full"]
    config = full["config"]
    spec = [[k, shape, dtype] for k, shape, dtype in full["key_spec"]]
    path = tmp_path / "tall_best.pth"
    torch.save(seeded_state_dict(spec, AUTHORS["seed"]), path)
    det = load_detector("tall", weights=path, **format_named("DeepfakeBench TALL").overrides)
    det.eval()
    assert sum(p.numel() for p in det.parameters()) == full["parameters"] - (1024 + 1)
    size = config["resolution"]
    torch.manual_seed(0)
    x = torch.randn(2, config["clip_size"], 3, size, size)
    with torch.no_grad():
        logits = det({"clip": x})["logits"].double()
    cls = torch.tensor(full["cls"], dtype=torch.float64)
    torch.testing.assert_close(logits, cls[:, 1] - cls[:, 0], atol=1e-4, rtol=0)

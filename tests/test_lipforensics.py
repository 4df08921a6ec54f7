"""LipForensics: mouth-clip transform, shapes, gradients, overfitting, official layout and
parity with the authors' Lipreading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.formats import formats_for
from detectors.lipforensics import MEAN, STD, LipForensics
from tests.official.weights import HERE, seeded_state_dict
from tests.video_detectors import TINY

# The authors' Lipreading(num_classes=1) with lrw_resnet18_mstcn.json (ResNet-18 + 4-level
# MS-TCN, 3 x 256 channels) has 35,990,785 parameters (models/spatiotemporal_net.py at
# commit d0bf555, counted outside the tests); deepsift's network is the same.
REFERENCE_PARAMETERS = 35_990_785


def tiny(**overrides: object) -> LipForensics:
    torch.manual_seed(0)
    return load_detector("lipforensics", **{**TINY["lipforensics"], **overrides})


def mouths(n: int, seed: int, size: int = 36) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def test_transform_reads_grayscale_mouth_frames_with_the_authors_normalisation() -> None:
    det = tiny().eval()
    assert det.input_kind == "clip" and det.needs_mouth and det.clip_len == 5
    frames = mouths(5, 0)
    clip = det.transform({"frames": [], "mouth_frames": frames})["clip"]
    assert clip.shape == (5, 1, 32, 32)
    # PIL convert("L"), centre 32 of 36, /255, (x - 0.421) / 0.165
    gray = np.asarray(frames[2].convert("L"), dtype=np.float32)[2:34, 2:34] / 255
    torch.testing.assert_close(clip[2, 0], torch.from_numpy((gray - MEAN) / STD))
    with pytest.raises(UserError, match="mouth_frames"):
        det.transform({"frames": frames})
    with pytest.raises(UserError, match="clip_len=5"):
        det.transform({"mouth_frames": frames[:4]})
    # other sizes are resized to `resize` first
    assert det.transform({"mouth_frames": mouths(5, 1, 50)})["clip"].shape == (5, 1, 32, 32)


def test_train_transform_flips_and_crops_all_frames_together() -> None:
    det = tiny(hflip=1.0, resize=32)
    same = mouths(1, 0, 32) * 5
    clip = det.transform({"mouth_frames": same}, train=True)["clip"]
    plain = det.transform({"mouth_frames": same})["clip"]
    for t in range(5):
        torch.testing.assert_close(clip[t], plain[0].flip(-1))
    # one random 32 x 32 box of the 36 x 36 frames, the same for all 5 frames
    frames = mouths(5, 3)
    full = [(np.asarray(f.convert("L"), dtype=np.float32) / 255 - MEAN) / STD for f in frames]
    det = tiny(hflip=0.0)
    boxes = set()
    for _ in range(4):
        crops = det.transform({"mouth_frames": frames}, train=True)["clip"].numpy()
        offsets = [
            {
                (i, j)
                for i in range(5)
                for j in range(5)
                if np.allclose(crops[t, 0], full[t][i : i + 32, j : j + 32], atol=1e-5)
            }
            for t in range(5)
        ]
        assert len(offsets[0]) == 1 and all(o == offsets[0] for o in offsets)
        boxes |= offsets[0]
    assert len(boxes) > 1  # the box is random per clip


def test_shapes_and_the_clip_mixes_frames() -> None:
    det = tiny().eval()
    clip = torch.randn(2, 5, 1, 32, 32)
    with torch.no_grad():
        out = det({"clip": clip})["logits"]
        other = clip.clone()
        other[:, 4] = 0
        changed = det({"clip": other})["logits"]
    assert out.shape == (2,)
    assert (changed - out).abs().max() > 1e-4
    with pytest.raises(UserError, match="grayscale"):
        det({"clip": torch.randn(2, 5, 3, 32, 32)})


def test_gradients_reach_every_parameter_and_a_tiny_batch_overfits() -> None:
    det = tiny().train()
    clip = torch.stack([det.transform({"mouth_frames": mouths(5, s)})["clip"] for s in range(4)])
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


def test_freeze_features_trains_only_the_tcn() -> None:
    det = tiny(freeze_features=True)
    trainable = {n.split(".")[0] for n, p in det.named_parameters() if p.requires_grad}
    assert trainable == {"tcn"}


def test_full_size_parameter_count_on_meta() -> None:
    with torch.device("meta"):
        det = LipForensics()
    assert sum(p.numel() for p in det.parameters()) == REFERENCE_PARAMETERS


def test_default_optimiser_is_adam_2e4() -> None:
    optimizer, scheduler = tiny().configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert optimizer.param_groups[0]["lr"] == 2e-4


def test_official_layout_loads_strictly_and_matches_the_authors_forward(tmp_path) -> None:
    """Seeded weights in ``lipforensics_ff.pth`` layout (``{"model": state_dict}``, keys
    of the authors' ``Lipreading``); logits of the authors' model on them
    (tests/official/make_lipforensics.py) against deepsift's forward. Measured: max
    |dlogit| 0.0 here and at full size (T = 25, 88 px) outside the tests."""
    ref = json.loads((HERE / "video" / "lipforensics_ff.json").read_text())
    state = seeded_state_dict(ref["keys"], ref["seed"])
    assert [f.name for f in formats_for(state)] == [ref["format"]]
    path = tmp_path / ref["filename"]
    torch.save({ref["container"]: state}, path)
    det = load_detector("lipforensics", weights=str(path), **ref["overrides"]).eval()
    torch.testing.assert_close(det.tcn.tcn_output.weight, state["tcn.tcn_output.weight"])
    clip = torch.randn(ref["clip_shape"], generator=torch.Generator().manual_seed(ref["clip_seed"]))
    with torch.no_grad():
        logits = det({"clip": clip})["logits"]
    expected = torch.tensor(ref["outputs"]["logits"])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    # the two clips score apart by more than the tolerance: the check can fail
    assert (expected[0] - expected[1]).abs() > 1e-2
    state["tcn.extra"] = torch.zeros(1)
    torch.save({"model": state}, path)
    with pytest.raises(UserError, match=r"tcn\.extra"):
        load_detector("lipforensics", weights=str(path), **ref["overrides"])
    del state["tcn.extra"], state["trunk.layer1.0.relu1.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(UserError, match=r"trunk\.layer1\.0\.relu1\.weight"):
        load_detector("lipforensics", weights=str(path), **ref["overrides"])
    with pytest.raises(UserError, match="does not exist"):
        load_detector("lipforensics", weights=str(tmp_path / "missing.pth"))


def test_pretrained_file_takes_the_lrw_lipreading_layout(tmp_path) -> None:
    det = tiny()
    own = det.state_dict()
    lrw = {k: v + 1 for k, v in own.items() if not k.startswith("tcn.tcn_output.")}
    lrw["tcn.tcn_output.weight"] = torch.zeros(500, own["tcn.tcn_output.weight"].shape[1])
    lrw["tcn.tcn_output.bias"] = torch.zeros(500)
    path = tmp_path / "lrw_resnet18_mstcn.pth.tar"
    torch.save({"model_state_dict": lrw}, path)
    loaded = tiny(pretrained_file=str(path))
    torch.testing.assert_close(loaded.frontend3D[0].weight, own["frontend3D.0.weight"] + 1)
    torch.testing.assert_close(loaded.tcn.tcn_output.weight, own["tcn.tcn_output.weight"])
    del lrw["trunk.layer2.0.downsample.0.weight"]
    torch.save({"model_state_dict": lrw}, path)
    with pytest.raises(UserError, match=r"missing \['trunk\.layer2\.0\.downsample\.0\.weight'\]"):
        tiny(pretrained_file=str(path))
    with pytest.raises(UserError, match="pretrained_file"):
        tiny(pretrained_file=str(tmp_path / "missing.pth"))

"""AltFreezing: clip transform, the alternate freezing schedule, the official layout, parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.altfreezing import AltFreezing
from detectors.formats import formats_for
from tests.detector_checks import overfit, parameters_without_gradient
from tests.official.weights import seeded_state_dict
from tests.test_i3d import REFERENCE_PARAMETERS, official_spec, reference_logits
from tests.video_detectors import TINY

SMALL = TINY["altfreezing"]
T, SIZE = SMALL["clip_len"], SMALL["preprocessing"]["size"]
# reference_logits (an independent functional SlowFast I3D forward) is written for I3D's tiny size
assert (TINY["i3d"]["clip_len"], TINY["i3d"]["preprocessing"]["size"]) == (T, SIZE)


def frames(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)) for _ in range(n)]


def clip_batch(det: AltFreezing, n: int, train: bool = False, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    clips = [
        det.transform({"frames": frames(T, seed=seed + i)}, train=train)["clip"] for i in range(n)
    ]
    return {"clip": torch.stack(clips), "label": torch.tensor([float(i % 2) for i in range(n)])}


def test_full_size_parameter_count_on_meta() -> None:
    with torch.device("meta"):
        det = AltFreezing()
    # I3D8x8: SlowFast's I3D R50 with NUM_CLASSES 1 (= DeepfakeBench I3D's count)
    assert sum(p.numel() for p in det.parameters()) == REFERENCE_PARAMETERS == 27_225_921
    assert det.clip_len == 32 and det.input_kind == "clip" and det.preprocessing.size == 224
    assert det.alter_freq == 20
    spec = {k: shape for k, shape, _ in official_spec([3, 4, 6, 3], 64, 1)}
    assert {k.removeprefix("resnet."): list(v.shape) for k, v in det.state_dict().items()} == spec


def test_transform_imagenet_normalisation_and_one_draw_per_clip() -> None:
    det = load_detector("altfreezing", **SMALL)
    clip = det.transform({"frames": frames(T)})["clip"]
    assert clip.shape == (T, 3, SIZE, SIZE) and clip.dtype == torch.float32
    cv2 = pytest.importorskip("cv2")
    first = cv2.resize(np.asarray(frames(T)[0]), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = torch.from_numpy(((first / 255.0 - mean) / std).transpose(2, 0, 1)).float()
    torch.testing.assert_close(clip[0], want, atol=1e-5, rtol=0)
    # identical frames stay identical under the training augmentation (one draw per clip)
    same = [frames(1)[0]] * T
    for seed in range(4):
        torch.manual_seed(seed)
        aug = det.transform({"frames": same}, train=True)["clip"]
        assert all(torch.equal(aug[0], aug[t]) for t in range(T))
    with pytest.raises(UserError, match="no 'frames'"):
        det.transform({"frames": []})


def test_parameter_groups_follow_the_kernel_shapes() -> None:
    det = load_detector("altfreezing", **SMALL)
    groups = det.parameter_groups()
    spatial, temporal = set(groups["spatial"]), set(groups["temporal"])
    names = {n for n, _ in det.named_parameters()}
    # spatial: 1 x 3 x 3 convs; temporal: 3 x 1 x 1 convs; both: stem 5 x 7 x 7, 1 x 1 x 1, BN
    assert "resnet.s2.pathway0_res0.branch2.b.weight" in spatial - temporal
    assert "resnet.s2.pathway0_res0.branch2.a.weight" in temporal - spatial  # kt 3
    assert "resnet.s5.pathway0_res0.branch2.a.weight" in spatial & temporal  # 1 x 1 x 1
    assert "resnet.s1.pathway0_stem.conv.weight" in spatial & temporal
    assert "resnet.s3.pathway0_res0.branch2.b_bn.weight" in spatial & temporal
    head = {"resnet.head.projection.weight", "resnet.head.projection.bias"}
    assert names == spatial | temporal and head <= spatial & temporal  # optimizer.py: by name
    convs = {
        f"{n}.weight": m.kernel_size
        for n, m in det.named_modules()
        if isinstance(m, torch.nn.Conv3d)
    }
    for name, (kt, kh, _) in convs.items():
        assert (name in spatial) == (not (kt > 1 and kh == 1)), name
        assert (name in temporal) == (not (kt == 1 and kh > 1)), name


def test_alternate_freezing_updates_only_the_active_group() -> None:
    det = load_detector("altfreezing", **SMALL)
    groups = det.parameter_groups()
    only_spatial = set(groups["spatial"]) - set(groups["temporal"])
    only_temporal = set(groups["temporal"]) - set(groups["spatial"])
    assert [det.phase_at(s) for s in range(6)] == ["spatial"] * 2 + ["temporal"] * 2 + [
        "spatial"
    ] * 2
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]) == (0.05, 0.9)
    with torch.no_grad():  # ZERO_INIT_FINAL_BN would block the gradient into each branch2
        for module in det.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.fill_(1.0)
    optimizer = torch.optim.SGD(det.parameters(), lr=0.1)  # no momentum: frozen means unchanged
    batch = clip_batch(det, 2)
    det.train()
    for step in range(4):
        before = {n: p.detach().clone() for n, p in det.named_parameters()}
        optimizer.zero_grad(set_to_none=True)
        det.training_step(batch)["loss"].backward()
        optimizer.step()
        changed = {n for n, p in det.named_parameters() if not torch.equal(p, before[n])}
        phase = "spatial" if step < 2 else "temporal"
        assert det.phase == phase
        frozen, active = (
            (only_temporal, only_spatial) if phase == "spatial" else (only_spatial, only_temporal)
        )
        assert not changed & frozen, step
        assert active <= changed, step
        assert "resnet.head.projection.weight" in changed
    det.set_phase(None)
    assert all(p.requires_grad for p in det.parameters())
    with pytest.raises(UserError, match="alter_freq"):
        load_detector("altfreezing", **{**SMALL, "alter_freq": -1})


def test_forward_gradients_and_overfit() -> None:
    det = load_detector("altfreezing", **{**SMALL, "alter_freq": 0})
    batch = clip_batch(det, 4)
    det.eval()
    out = det(batch)["logits"]
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert parameters_without_gradient(det, batch) == []
    # with the alternation on (phase every 2 steps)
    det = load_detector("altfreezing", **SMALL)
    assert overfit(det, batch, steps=80, lr=3e-3) < 0.05
    with pytest.raises(UserError, match=r"\(B, T, 3, H, W\)"):
        det({"clip": batch["clip"][:, 0]})


def test_official_checkpoint_loads_strictly_and_matches_independent_forward(
    tmp_path: Path,
) -> None:
    """model.pth: ``I3D8x8.state_dict()`` (``resnet.`` + SlowFast's keys)."""
    spec = official_spec(SMALL["blocks"], SMALL["width_per_group"], 1)
    state = seeded_state_dict(spec, seed=5)
    path = tmp_path / "model.pth"
    torch.save({f"network.resnet.{k}": v for k, v in state.items()}, path)
    names = [f.name for f in formats_for({f"resnet.{k}": v for k, v in state.items()})]
    assert "AltFreezing I3D8x8 (official)" in names
    det = load_detector("altfreezing", weights=path, **SMALL).eval()
    batch = clip_batch(det, 3, seed=11)
    with torch.no_grad():
        got = det(batch)["logits"]
        want = reference_logits(state, batch["clip"].permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(got, want[:, 0], atol=1e-5, rtol=1e-5)
    assert got.std() > 1e-3
    del state["s3.pathway0_res0.branch2.b.weight"]
    torch.save({"state_dict": {f"resnet.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(UserError, match=r"s3\.pathway0_res0\.branch2\.b\.weight"):
        load_detector("altfreezing", weights=path, **SMALL)
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="not an AltFreezing file"):
        load_detector("altfreezing", weights=path, **SMALL)


REFERENCE = Path(__file__).parent / "official" / "video" / "altfreezing.json"


def test_matches_the_authors_code(tmp_path: Path) -> None:
    """The authors' ``I3D8x8`` backbone (SlowFast ``ResNet`` of their repo) on seeded weights,
    run outside the project by ``tests/official/make_altfreezing.py``."""
    ref = json.loads(REFERENCE.read_text())
    tiny = ref["tiny"]
    spec = tiny["key_spec"]
    assert spec == official_spec(tiny["blocks"], tiny["width"], 1)
    assert ref["full"]["parameters"] == REFERENCE_PARAMETERS
    path = tmp_path / "model.pth"
    torch.save(
        {f"resnet.{k}": v for k, v in seeded_state_dict(spec, seed=ref["seed"]).items()}, path
    )
    det = load_detector(
        "altfreezing",
        weights=path,
        **{**SMALL, "blocks": tiny["blocks"], "width_per_group": tiny["width"]},
    ).eval()
    torch.manual_seed(0)
    x = torch.randn(2, tiny["frames"], 3, tiny["size"], tiny["size"])
    with torch.no_grad():
        got = det({"clip": x})["logits"]
    want = torch.tensor(tiny["logit"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want[0] - want[1]).abs() > 1e-3

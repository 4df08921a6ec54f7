"""I3D (DeepfakeBench): clip transform, official layouts, an independent forward pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.formats import formats_for
from detectors.i3d import I3D
from tests.detector_checks import overfit, parameters_without_gradient
from tests.official.weights import seeded_state_dict
from tests.video_detectors import TINY

SMALL = TINY["i3d"]
T, SIZE = SMALL["clip_len"], SMALL["preprocessing"]["size"]

#: SlowFast's ``_TEMPORAL_KERNEL_BASIS["i3d"]`` per stage, cycled over its blocks
KERNELS = ([3], [3, 1], [3, 1], [1, 3])


def official_spec(blocks: list[int], width: int, classes: int) -> list[list[Any]]:
    """``[[key, shape, dtype]]`` of SlowFast's ``ResNet`` (ARCH i3d) ``state_dict``, written
    from ``video_model_builder.py``/``resnet_helper.py``/``stem_helper.py``/``head_helper.py``."""
    spec: list[list[Any]] = []

    def bn(name: str, c: int) -> None:
        spec.extend([[f"{name}.weight", [c], "float32"], [f"{name}.bias", [c], "float32"]])
        spec.extend(
            [[f"{name}.running_mean", [c], "float32"], [f"{name}.running_var", [c], "float32"]]
        )
        spec.append([f"{name}.num_batches_tracked", [], "int64"])

    spec.append(["s1.pathway0_stem.conv.weight", [width, 3, 5, 7, 7], "float32"])
    bn("s1.pathway0_stem.bn", width)
    dim_in = width
    for stage, n in enumerate(blocks):
        inner, out = width * 2**stage, width * 4 * 2**stage
        for i in range(n):
            name = f"s{stage + 2}.pathway0_res{i}"
            kt = KERNELS[stage][i % len(KERNELS[stage])]
            if i == 0:
                spec.append([f"{name}.branch1.weight", [out, dim_in, 1, 1, 1], "float32"])
                bn(f"{name}.branch1_bn", out)
            spec.append([f"{name}.branch2.a.weight", [inner, dim_in, kt, 1, 1], "float32"])
            bn(f"{name}.branch2.a_bn", inner)
            spec.append([f"{name}.branch2.b.weight", [inner, inner, 1, 3, 3], "float32"])
            bn(f"{name}.branch2.b_bn", inner)
            spec.append([f"{name}.branch2.c.weight", [out, inner, 1, 1, 1], "float32"])
            bn(f"{name}.branch2.c_bn", out)
            dim_in = out
    spec.append(["head.projection.weight", [classes, dim_in], "float32"])
    spec.append(["head.projection.bias", [classes], "float32"])
    return spec


def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SlowFast's I3D forward (eval) on (B, C, T, H, W), functionally, before the sigmoid."""

    def bn(y: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            y,
            state[f"{name}.running_mean"],
            state[f"{name}.running_var"],
            state[f"{name}.weight"],
            state[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    w = state["s1.pathway0_stem.conv.weight"]
    y = F.relu(bn(F.conv3d(x, w, stride=(1, 2, 2), padding=(2, 3, 3)), "s1.pathway0_stem.bn"))
    y = F.max_pool3d(y, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for stage in range(2, 6):
        i = 0
        while f"s{stage}.pathway0_res{i}.branch2.a.weight" in state:
            name = f"s{stage}.pathway0_res{i}"
            stride = 2 if stage > 2 and i == 0 else 1
            a = state[f"{name}.branch2.a.weight"]
            z = F.relu(bn(F.conv3d(y, a, padding=(a.shape[2] // 2, 0, 0)), f"{name}.branch2.a_bn"))
            z = F.conv3d(
                z, state[f"{name}.branch2.b.weight"], stride=(1, stride, stride), padding=(0, 1, 1)
            )
            z = F.relu(bn(z, f"{name}.branch2.b_bn"))
            z = bn(F.conv3d(z, state[f"{name}.branch2.c.weight"]), f"{name}.branch2.c_bn")
            if f"{name}.branch1.weight" in state:
                short = F.conv3d(y, state[f"{name}.branch1.weight"], stride=(1, stride, stride))
                short = bn(short, f"{name}.branch1_bn")
            else:
                short = y
            y = F.relu(short + z)
            i += 1
        if stage == 2:
            y = F.max_pool3d(y, (2, 1, 1), (2, 1, 1))
    # head_helper.ResNetBasicHead: AvgPool3d([T // 2, S // 32, S // 32], stride=1) covers the map
    assert y.shape[2:] == (T // 2, SIZE // 32, SIZE // 32)
    y = F.avg_pool3d(y, (T // 2, SIZE // 32, SIZE // 32), stride=1).permute(0, 2, 3, 4, 1)
    y = F.linear(y, state["head.projection.weight"], state["head.projection.bias"])
    return y.reshape(y.shape[0], -1)  # the sigmoid (HEAD_ACT) would follow


def full_size_parameters() -> int:
    """I3D R50 with a 1-class head, counted from :func:`official_spec`."""
    spec = official_spec([3, 4, 6, 3], 64, 1)
    return sum(
        int(np.prod(shape))
        for key, shape, _ in spec
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )


#: with Kinetics' 400-way head that is 28,043,472: SlowFast's MODEL_ZOO lists I3D 8x8 R50 at 28.04 M
REFERENCE_PARAMETERS = 27_225_921
assert round((REFERENCE_PARAMETERS + 399 * 2049) / 1e4) / 100 == 28.04


def frames(
    n: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((40, 48), (36, 36))
) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8))
        for i in range(n)
    ]


def clip_batch(det: I3D, n: int, train: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    clips = [
        det.transform({"frames": frames(T, seed=seed + i)}, train=train)["clip"] for i in range(n)
    ]
    return {"clip": torch.stack(clips), "label": torch.tensor([float(i % 2) for i in range(n)])}


def test_full_size_parameter_count_on_meta() -> None:
    assert full_size_parameters() == REFERENCE_PARAMETERS
    with torch.device("meta"):
        det = I3D()
    assert sum(p.numel() for p in det.parameters()) == REFERENCE_PARAMETERS
    assert det.clip_len == 16 and det.input_kind == "clip" and det.preprocessing.size == 224
    spec = {k: shape for k, shape, _ in official_spec([3, 4, 6, 3], 64, 1)}
    state = {k.removeprefix("resnet."): list(v.shape) for k, v in det.state_dict().items()}
    assert state == spec


def test_transform_shapes_and_one_augmentation_per_clip() -> None:
    det = load_detector("i3d", **SMALL)
    clip = det.transform({"frames": frames(T)})["clip"]
    assert clip.shape == (T, 3, SIZE, SIZE) and clip.dtype == torch.float32
    # abstract_dataset.py: load_rgb's cv2.resize (INTER_CUBIC), ToTensor, Normalize(0.5, 0.5)
    cv2 = pytest.importorskip("cv2")
    first = cv2.resize(np.asarray(frames(T)[0]), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    want = (torch.from_numpy(first).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(clip[0], want)
    same = frames(1, seed=4) * T  # T copies of one frame: every frame must get the same draw
    torch.manual_seed(0)
    views = [det.transform({"frames": same}, train=True)["clip"] for _ in range(8)]
    plain = det.transform({"frames": same})["clip"]
    for view in views:
        assert view.shape == (T, 3, SIZE, SIZE)
        for t in range(1, T):
            torch.testing.assert_close(view[t], view[0])
    assert any(not torch.allclose(view, plain) for view in views)  # the augmentation does act
    with pytest.raises(UserError, match="frames"):
        det.transform({"image": same[0]})


def test_forward_gradients_and_overfit() -> None:
    det = load_detector("i3d", **SMALL)
    batch = clip_batch(det, 4)
    det.eval()
    out = det(batch)["logits"]
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert parameters_without_gradient(det, batch) == []
    assert overfit(det, batch, steps=80, lr=3e-3) < 0.05
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        2e-4,
        (0.9, 0.999),
        1e-8,
        5e-4,
    )
    with pytest.raises(UserError, match=r"\(B, T, 3, H, W\)"):
        det({"clip": batch["clip"][:, 0]})


def test_deepfakebench_checkpoint_matches_independent_forward(tmp_path: Path) -> None:
    """i3d_best.pth: the I3DDetector's state_dict (``resnet.`` + SlowFast's keys)."""
    spec = official_spec(SMALL["blocks"], SMALL["width_per_group"], 1)
    state = seeded_state_dict(spec, seed=3)
    path = tmp_path / "i3d_best.pth"
    torch.save({f"module.resnet.{k}": v for k, v in state.items()}, path)
    # AltFreezing's model.pth has the same keys
    assert [f.name for f in formats_for({f"resnet.{k}": v for k, v in state.items()})] == [
        "DeepfakeBench I3D",
        "AltFreezing I3D8x8 (official)",
    ]
    det = load_detector("i3d", weights=path, **SMALL).eval()
    batch = clip_batch(det, 3, seed=7)
    with torch.no_grad():
        got = det(batch)["logits"]
        want = reference_logits(state, batch["clip"].permute(0, 2, 1, 3, 4))
    assert want.shape == (3, 1)
    torch.testing.assert_close(got, want[:, 0], atol=1e-5, rtol=1e-5)
    assert got.std() > 1e-3  # the seeded weights tell the clips apart


def test_kinetics_pretrained_file_keeps_row_zero(tmp_path: Path) -> None:
    """I3D_8x8_R50.pth: SlowFast's keys, a 400-way head; DeepfakeBench keeps row 0."""
    state = seeded_state_dict(official_spec(SMALL["blocks"], SMALL["width_per_group"], 400), seed=5)
    path = tmp_path / "I3D_8x8_R50.pth"
    torch.save(state, path)
    assert [f.name for f in formats_for(state)] == [
        "SlowFast Kinetics-400 I3D R50 (DeepfakeBench's I3D pretraining)"
    ]
    det = load_detector("i3d", pretrained_file=str(path), **SMALL).eval()
    torch.testing.assert_close(
        det.resnet.head.projection.weight, state["head.projection.weight"][:1]
    )
    also = load_detector("i3d", weights=path, **SMALL).eval()  # as weights=: the same
    batch = clip_batch(det, 2, seed=2)
    with torch.no_grad():
        want = reference_logits(state, batch["clip"].permute(0, 2, 1, 3, 4))[:, 0]
        torch.testing.assert_close(det(batch)["logits"], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(also(batch)["logits"], want, atol=1e-5, rtol=1e-5)


def test_bad_files_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"detector\.pretrained_file .*does not exist"):
        load_detector("i3d", pretrained_file=str(tmp_path / "missing.pth"), **SMALL)
    other = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(UserError, match="not an I3D file"):
        load_detector("i3d", weights=other, **SMALL)
    spec = official_spec(SMALL["blocks"], SMALL["width_per_group"], 1)
    state = {f"resnet.{k}": v for k, v in seeded_state_dict(spec).items()}
    del state["resnet.s5.pathway0_res0.branch1.weight"]
    partial = tmp_path / "i3d_partial.pth"
    torch.save(state, partial)
    with pytest.raises(
        UserError, match=r"missing keys: resnet\.s5\.pathway0_res0\.branch1\.weight"
    ):
        load_detector("i3d", weights=partial, **SMALL)
    with pytest.raises(UserError, match="other shapes"):
        load_detector("i3d", weights=_wider(tmp_path), **SMALL)


def _wider(tmp_path: Path) -> Path:
    """A width_per_group 16 file for an 8-wide model."""
    state = seeded_state_dict(official_spec(SMALL["blocks"], 16, 1))
    path = tmp_path / "i3d_wide.pth"
    torch.save({f"resnet.{k}": v for k, v in state.items()}, path)
    return path


AUTHORS = json.loads((Path(__file__).parent / "official/video/deepfakebench_i3d.json").read_text())


def test_matches_the_authors_code(tmp_path: Path) -> None:
    """DeepfakeBench's SlowFast ResNet run by tests/official/make_deepfakebench_i3d.py."""
    tiny = AUTHORS["tiny"]
    spec = [[k, shape, dtype] for k, shape, dtype in tiny["key_spec"]]
    assert spec == official_spec(tiny["blocks"], tiny["width"], 1)  # the keys, in order
    assert AUTHORS["full"]["parameters"] == REFERENCE_PARAMETERS
    path = tmp_path / "i3d_best.pth"
    torch.save(
        {f"resnet.{k}": v for k, v in seeded_state_dict(spec, AUTHORS["seed"]).items()}, path
    )
    frames_, size = tiny["frames"], tiny["size"]
    det = load_detector(
        "i3d",
        weights=path,
        clip_len=frames_,
        blocks=tiny["blocks"],
        width_per_group=tiny["width"],
        preprocessing={"size": size, "resize_to": size},
    ).eval()
    torch.manual_seed(0)
    x = torch.randn(2, frames_, 3, size, size)
    with torch.no_grad():
        logits = det({"clip": x})["logits"].double()
    prob = torch.tensor(tiny["prob"], dtype=torch.float64)
    torch.testing.assert_close(logits, torch.logit(prob), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sigmoid(logits), prob, atol=1e-6, rtol=0)


def test_kinetics_pretrained_file_matches_the_authors_code(tmp_path: Path) -> None:
    """I3D_8x8_R50.pth read by DeepfakeBench's own ``I3DDetector.__init__`` (row 0 of the
    400-way head kept, strict load), run by tests/official/make_deepfakebench_i3d.py."""
    kin = AUTHORS["kinetics"]
    spec = official_spec(kin["blocks"], kin["width"], kin["classes"])
    assert len(spec) == kin["keys"]
    path = tmp_path / "I3D_8x8_R50.pth"
    torch.save(seeded_state_dict(spec, seed=kin["seed"]), path)
    frames_, size = kin["frames"], kin["size"]
    det = load_detector(
        "i3d",
        pretrained_file=str(path),
        clip_len=frames_,
        blocks=kin["blocks"],
        width_per_group=kin["width"],
        preprocessing={"size": size, "resize_to": size},
    ).eval()
    torch.manual_seed(0)
    x = torch.randn(2, frames_, 3, size, size)
    with torch.no_grad():
        logits = det({"clip": x})["logits"].double()
    prob = torch.tensor(kin["prob"], dtype=torch.float64)
    torch.testing.assert_close(logits, torch.logit(prob), atol=1e-5, rtol=0)
    assert float(prob.max() - prob.min()) > 1e-3  # the seeded weights tell the clips apart

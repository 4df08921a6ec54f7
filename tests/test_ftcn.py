"""FTCN (+ Temporal Transformer): clip transform, official layout, an independent forward pass."""

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
from detectors.ftcn import FTCN
from tests.detector_checks import overfit, parameters_without_gradient
from tests.official.weights import seeded_state_dict
from tests.video_detectors import TINY

SMALL = TINY["ftcn"]
T, SIZE = SMALL["clip_len"], SMALL["preprocessing"]["size"]

#: ``_TEMPORAL_KERNEL_BASIS["i3d"]`` of res2-res4, cycled over each stage's blocks
KERNELS = ([3], [3, 1], [3, 1])
#: 1024-d transformer, 16 heads x 64, mlp 2048 (the released model)
FULL = {"blocks": [3, 4, 6], "width": 64, "frames": 32, "heads": 16, "dim_head": 64, "mlp": 2048}


def official_spec(
    blocks: list[int], width: int, frames: int, heads: int, dim_head: int, mlp: int
) -> list[list[Any]]:
    """``[[key, shape, dtype]]`` of FTCN's ``I3D8x8`` ``state_dict`` (as ``ftcn_tt.pth``), written
    from ``i3d_temporal_var_fix_dropout_tt_cfg.py`` (``temporal_only_conv``: spatial kernels 1,
    strided BNs as ``Sequential(bn, MaxPool3d)``; res5 removed) and ``time_transformer.py``."""
    spec: list[list[Any]] = []

    def bn(name: str, c: int) -> None:
        spec.extend([[f"{name}.weight", [c], "float32"], [f"{name}.bias", [c], "float32"]])
        spec.extend(
            [[f"{name}.running_mean", [c], "float32"], [f"{name}.running_var", [c], "float32"]]
        )
        spec.append([f"{name}.num_batches_tracked", [], "int64"])

    spec.append(["resnet.s1.pathway0_stem.conv.weight", [width, 3, 5, 1, 1], "float32"])
    bn("resnet.s1.pathway0_stem.bn.0", width)
    dim_in = width
    for stage, n in enumerate(blocks):
        inner, out = width * 2**stage, width * 4 * 2**stage
        strided = ".0" if stage > 0 else ""
        for i in range(n):
            name = f"resnet.s{stage + 2}.pathway0_res{i}"
            kt = KERNELS[stage][i % len(KERNELS[stage])]
            if i == 0:
                spec.append([f"{name}.branch1.weight", [out, dim_in, 1, 1, 1], "float32"])
                bn(f"{name}.branch1_bn{strided}", out)
            spec.append([f"{name}.branch2.a.weight", [inner, dim_in, kt, 1, 1], "float32"])
            bn(f"{name}.branch2.a_bn", inner)
            spec.append([f"{name}.branch2.b.weight", [inner, inner, 1, 1, 1], "float32"])
            bn(f"{name}.branch2.b_bn{strided if i == 0 else ''}", inner)
            spec.append([f"{name}.branch2.c.weight", [out, inner, 1, 1, 1], "float32"])
            bn(f"{name}.branch2.c_bn", out)
            dim_in = out
    h, d, inner = "resnet.head.time_T", dim_in, heads * dim_head
    layer = f"{h}.transformer.layers.0"
    spec += [
        [f"{h}.pos_embedding", [1, frames // 2 + 1, d], "float32"],
        [f"{h}.cls_token", [1, 1, d], "float32"],
        [f"{layer}.0.fn.norm.weight", [d], "float32"],
        [f"{layer}.0.fn.norm.bias", [d], "float32"],
        [f"{layer}.0.fn.fn.to_qkv.weight", [3 * inner, d], "float32"],
        [f"{layer}.0.fn.fn.to_out.0.weight", [d, inner], "float32"],
        [f"{layer}.0.fn.fn.to_out.0.bias", [d], "float32"],
        [f"{layer}.1.fn.norm.weight", [d], "float32"],
        [f"{layer}.1.fn.norm.bias", [d], "float32"],
        [f"{layer}.1.fn.fn.net.0.weight", [mlp, d], "float32"],
        [f"{layer}.1.fn.fn.net.0.bias", [mlp], "float32"],
        [f"{layer}.1.fn.fn.net.3.weight", [d, mlp], "float32"],
        [f"{layer}.1.fn.fn.net.3.bias", [d], "float32"],
        [f"{h}.mlp_head.0.weight", [d], "float32"],
        [f"{h}.mlp_head.0.bias", [d], "float32"],
        [f"{h}.mlp_head.1.weight", [1, d], "float32"],
        [f"{h}.mlp_head.1.bias", [1], "float32"],
    ]
    return spec


def small_spec() -> list[list[Any]]:
    return official_spec(
        SMALL["blocks"],
        SMALL["width_per_group"],
        T,
        SMALL["heads"],
        SMALL["dim_head"],
        SMALL["mlp_dim"],
    )


def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """FTCN's forward (eval) on (B, C, T, H, W), functionally, before the head's sigmoid."""

    def bn(y: torch.Tensor, name: str) -> torch.Tensor:
        pooled = f"{name}.0.weight" in state  # Sequential(bn, MaxPool3d((1, 2, 2)))
        p = f"{name}.0" if pooled else name
        y = F.batch_norm(
            y,
            state[f"{p}.running_mean"],
            state[f"{p}.running_var"],
            state[f"{p}.weight"],
            state[f"{p}.bias"],
            training=False,
            eps=1e-5,
        )
        return F.max_pool3d(y, (1, 2, 2)) if pooled else y

    def conv(y: torch.Tensor, key: str) -> torch.Tensor:
        w = state[key]
        assert w.shape[3:] == (1, 1)  # fully temporal: every spatial kernel is 1
        return F.conv3d(y, w, padding=(w.shape[2] // 2, 0, 0))

    y = F.relu(bn(conv(x, "resnet.s1.pathway0_stem.conv.weight"), "resnet.s1.pathway0_stem.bn"))
    y = F.max_pool3d(y, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for stage in range(2, 5):
        i = 0
        while f"resnet.s{stage}.pathway0_res{i}.branch2.a.weight" in state:
            name = f"resnet.s{stage}.pathway0_res{i}"
            z = F.relu(bn(conv(y, f"{name}.branch2.a.weight"), f"{name}.branch2.a_bn"))
            z = F.relu(bn(conv(z, f"{name}.branch2.b.weight"), f"{name}.branch2.b_bn"))
            z = bn(conv(z, f"{name}.branch2.c.weight"), f"{name}.branch2.c_bn")
            if f"{name}.branch1.weight" in state:
                short = bn(conv(y, f"{name}.branch1.weight"), f"{name}.branch1_bn")
            else:
                short = y
            y = F.relu(short + z)
            i += 1
        if stage == 2:
            y = F.max_pool3d(y, (2, 1, 1), (2, 1, 1))
    b, c, t, hh, ww = y.shape
    # TransformerHead, patch_type time: AvgPool3d((1, S, S)), reshape(-1, C, T'), permute
    tokens = F.avg_pool3d(y, (1, hh, ww)).reshape(b, c, t).permute(0, 2, 1)
    h = "resnet.head.time_T"
    layer = f"{h}.transformer.layers.0"
    z = torch.cat([state[f"{h}.cls_token"].expand(b, 1, c), tokens], 1)
    z = z + state[f"{h}.pos_embedding"][:, : t + 1]
    n = F.layer_norm(z, (c,), state[f"{layer}.0.fn.norm.weight"], state[f"{layer}.0.fn.norm.bias"])
    q, k, v = F.linear(n, state[f"{layer}.0.fn.fn.to_qkv.weight"]).chunk(3, -1)
    q, k, v = (u.reshape(b, t + 1, heads, -1).permute(0, 2, 1, 3) for u in (q, k, v))
    dots = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
    out = torch.einsum("bhij,bhjd->bhid", dots.softmax(-1), v).permute(0, 2, 1, 3)
    out = out.reshape(b, t + 1, -1)
    z = z + F.linear(
        out, state[f"{layer}.0.fn.fn.to_out.0.weight"], state[f"{layer}.0.fn.fn.to_out.0.bias"]
    )
    n = F.layer_norm(z, (c,), state[f"{layer}.1.fn.norm.weight"], state[f"{layer}.1.fn.norm.bias"])
    n = F.gelu(
        F.linear(n, state[f"{layer}.1.fn.fn.net.0.weight"], state[f"{layer}.1.fn.fn.net.0.bias"])
    )
    z = z + F.linear(
        n, state[f"{layer}.1.fn.fn.net.3.weight"], state[f"{layer}.1.fn.fn.net.3.bias"]
    )
    cls = F.layer_norm(
        z[:, 0], (c,), state[f"{h}.mlp_head.0.weight"], state[f"{h}.mlp_head.0.bias"]
    )
    return F.linear(cls, state[f"{h}.mlp_head.1.weight"], state[f"{h}.mlp_head.1.bias"])


#: the authors' I3D8x8 built by tests/official/make_ftcn.py reports the same count
REFERENCE_PARAMETERS = 14_765_889


def frames(
    n: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((40, 48), (36, 36))
) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8))
        for i in range(n)
    ]


def clip_batch(det: FTCN, n: int, train: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    clips = [
        det.transform({"frames": frames(T, seed=seed + i)}, train=train)["clip"] for i in range(n)
    ]
    return {"clip": torch.stack(clips), "label": torch.tensor([float(i % 2) for i in range(n)])}


def test_full_size_parameter_count_on_meta() -> None:
    spec = official_spec(**FULL)
    counted = sum(
        int(np.prod(shape))
        for key, shape, _ in spec
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert counted == REFERENCE_PARAMETERS
    with torch.device("meta"):
        det = FTCN()
    assert sum(p.numel() for p in det.parameters()) == REFERENCE_PARAMETERS
    assert det.clip_len == 32 and det.input_kind == "clip" and det.preprocessing.size == 224
    assert {k: list(v.shape) for k, v in det.state_dict().items()} == {k: s for k, s, _ in spec}


def test_transform_shapes_and_one_augmentation_per_clip() -> None:
    det = load_detector("ftcn", **SMALL)
    clip = det.transform({"frames": frames(T)})["clip"]
    assert clip.shape == (T, 3, SIZE, SIZE) and clip.dtype == torch.float32
    # test_on_raw_video.py: (x - 255 * mean) / (255 * std) with ImageNet mean/std
    cv2 = pytest.importorskip("cv2")
    first = cv2.resize(np.asarray(frames(T)[0]), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    mean = 255 * torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = 255 * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(clip[0], (torch.from_numpy(first).permute(2, 0, 1) - mean) / std)
    same = frames(1, seed=4) * T  # T copies of one frame: every frame must get the same draw
    torch.manual_seed(0)
    views = [det.transform({"frames": same}, train=True)["clip"] for _ in range(8)]
    plain = det.transform({"frames": same})["clip"]
    for view in views:
        for t in range(1, T):
            torch.testing.assert_close(view[t], view[0])
    assert any(not torch.allclose(view, plain) for view in views)  # the augmentation does act
    with pytest.raises(UserError, match="frames"):
        det.transform({"image": same[0]})


def test_forward_gradients_and_overfit() -> None:
    det = load_detector("ftcn", **SMALL)
    batch = clip_batch(det, 4)
    det.eval()
    out = det(batch)["logits"]
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert parameters_without_gradient(det, batch) == []
    assert overfit(det, batch, steps=80, lr=3e-3) < 0.05
    optimizer, scheduler = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert optimizer.param_groups[0]["lr"] == 3e-4
    with pytest.raises(UserError, match=r"\(B, T, 3, H, W\)"):
        det({"clip": batch["clip"][:, 0]})
    with pytest.raises(UserError, match="clips of 4 frames"):
        det({"clip": torch.cat([batch["clip"]] * 2, 1)})


def test_official_checkpoint_matches_independent_forward(tmp_path: Path) -> None:
    """ftcn_tt.pth: the I3D8x8 network's state_dict (saved from DataParallel: ``module.``)."""
    state = seeded_state_dict(small_spec(), seed=3)
    path = tmp_path / "ftcn_tt.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    assert [f.name for f in formats_for(state)] == ["FTCN + Temporal Transformer (official)"]
    det = load_detector("ftcn", weights=path, **SMALL).eval()
    batch = clip_batch(det, 3, seed=7)
    with torch.no_grad():
        got = det(batch)["logits"]
        want = reference_logits(state, batch["clip"].permute(0, 2, 1, 3, 4), SMALL["heads"])
    assert want.shape == (3, 1)
    torch.testing.assert_close(got, want[:, 0], atol=1e-5, rtol=1e-5)
    assert got.std() > 1e-3  # the seeded weights tell the clips apart


def test_bad_files_are_one_clear_error(tmp_path: Path) -> None:
    other = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(UserError, match="not an FTCN file"):
        load_detector("ftcn", weights=other, **SMALL)
    state = seeded_state_dict(small_spec())
    del state["resnet.s4.pathway0_res0.branch2.b_bn.0.weight"]
    partial = tmp_path / "ftcn_partial.pth"
    torch.save(state, partial)
    with pytest.raises(
        UserError, match=r"missing keys: resnet\.s4\.pathway0_res0\.branch2\.b_bn\.0\.weight"
    ):
        load_detector("ftcn", weights=partial, **SMALL)
    with pytest.raises(UserError, match="clip_len must be even"):
        load_detector("ftcn", **{**SMALL, "clip_len": 3})


AUTHORS = json.loads((Path(__file__).parent / "official/video/ftcn_tt.json").read_text())


def test_matches_the_authors_code(tmp_path: Path) -> None:
    """FTCN's I3D8x8 (ftcn_tt.yaml over root_setting.yaml) run by tests/official/make_ftcn.py."""
    tiny = AUTHORS["tiny"]
    tr = tiny["transformer"]
    spec = [[k, shape, dtype] for k, shape, dtype in tiny["key_spec"]]
    assert spec == official_spec(
        tiny["blocks"], tiny["width"], tiny["frames"], tr["heads"], tr["dim_head"], tr["mlp_dim"]
    )  # the keys, in order
    assert AUTHORS["full"]["parameters"] == REFERENCE_PARAMETERS
    assert AUTHORS["full"]["keys"] == len(official_spec(**FULL))
    path = tmp_path / "ftcn_tt.pth"
    torch.save(seeded_state_dict(spec, AUTHORS["seed"]), path)
    frames_, size = tiny["frames"], tiny["size"]
    det = load_detector(
        "ftcn",
        weights=path,
        clip_len=frames_,
        blocks=tiny["blocks"],
        width_per_group=tiny["width"],
        heads=tr["heads"],
        dim_head=tr["dim_head"],
        mlp_dim=tr["mlp_dim"],
        preprocessing={"size": size, "resize_to": size},
    ).eval()
    torch.manual_seed(0)
    x = torch.randn(2, frames_, 3, size, size)
    with torch.no_grad():
        logits = det({"clip": x})["logits"].double()
    prob = torch.tensor(tiny["prob"], dtype=torch.float64)
    torch.testing.assert_close(logits, torch.logit(prob), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sigmoid(logits), prob, atol=1e-6, rtol=0)

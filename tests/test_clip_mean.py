"""ClipMean: the frame-averaging clip baseline (input_kind == "clip")."""

import numpy as np
import torch
from PIL import Image

from detectors.base import count_parameters
from detectors.clip_mean import ClipMean


def _tiny(**kw) -> ClipMean:
    torch.manual_seed(0)
    return ClipMean(backbone="resnet10t", clip_len=3, size=32, **kw)


def test_transform_and_forward_shapes():
    model = _tiny().eval()
    frames = [Image.fromarray(np.full((40, 40, 3), 30 * i, np.uint8)) for i in range(3)]
    clip = model.transform({"frames": frames, "record": None})["clip"]
    assert clip.shape == (3, 3, 32, 32)
    out = model({"clip": torch.stack([clip, clip])})
    assert out["logits"].shape == (2,)
    assert model.input_kind == "clip" and model.clip_len == 3


def test_logit_is_mean_of_independent_per_frame_logits():
    model = _tiny().eval()
    clip = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        got = model({"clip": clip})["logits"]
        ref = torch.stack([model.backbone(clip[:, t]).squeeze(1) for t in range(3)], 1).mean(1)
    assert torch.allclose(got, ref, atol=1e-5)


def test_gradients_flow_and_overfits_tiny_batch():
    model = _tiny()
    clip = torch.randn(4, 3, 3, 32, 32)
    label = torch.tensor([0.0, 1.0, 0.0, 1.0])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss = model.training_step({"clip": clip, "label": label})["loss"]
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        opt.step()
        first = first if first is not None else float(loss)
    assert float(loss) < 0.5 * first


def test_full_size_parameter_count():
    with torch.device("meta"):
        model = ClipMean()
    # timm resnet18 with a 1-logit head: 11,176,512 + 513
    assert count_parameters(model) == 11_177_025


def test_clip_cost_benchmark_finds_clip_detectors(tmp_path):
    from benchmarks.clip_cost import clip_cost, clip_detectors, write_video

    names = clip_detectors()
    assert "clip_mean" in names and "univfd" not in names
    video = tmp_path / "v.avi"
    write_video(video)
    cost = clip_cost("clip_mean", video, batch=1, repeats=1, device="cpu", overrides={})
    assert cost["T"] == 8 and cost["input"] == (8, 3, 112, 112)
    assert cost["prepare"] > 0 and cost["forward"] > 0

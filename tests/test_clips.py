"""ClipPreprocessing: one crop / flip / JPEG quality / blur per clip, shared by all T frames."""

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.layers.clips import ClipPreprocessing


def _frames(t: int = 4, side: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    return [Image.fromarray(base) for _ in range(t)]


def test_shape_and_eval_is_deterministic():
    pre = ClipPreprocessing(
        size=32, resize=40, crop="random", hflip=0.5, jpeg_quality=(30, 90), jpeg_p=1.0
    )
    clip = pre(_frames(), train=False)
    assert clip.shape == (4, 3, 32, 32) and clip.dtype == torch.float32
    assert torch.equal(clip, pre(_frames(), train=False))


def test_identical_frames_stay_identical_under_train_augmentation():
    # Identical input frames must stay identical: a per-frame draw would differ.
    pre = ClipPreprocessing(
        size=32,
        resize=40,
        crop="random",
        hflip=0.5,
        jpeg_quality=(20, 95),
        jpeg_p=1.0,
        blur_sigma=(0.1, 2.0),
        blur_p=1.0,
    )
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(12):
        params = pre.draw(True, g)
        seen.add((params["top"], params["left"], params["flip"], params["quality"]))
        clip = pre.apply(_frames(), params)
        for t in range(1, clip.shape[0]):
            assert torch.equal(clip[0], clip[t])
    assert len(seen) > 1  # the draws do vary between clips


def test_flip_and_crop_match_independent_ops():
    frames = _frames(2)
    pre = ClipPreprocessing(size=32, resize=40, crop="random", mean=(0, 0, 0), std=(1, 1, 1))
    params = {"top": 3, "left": 5, "flip": True, "quality": None, "sigma": None}
    clip = pre.apply(frames, params)
    ref = np.asarray(frames[0].resize((40, 40), Image.BILINEAR), dtype=np.float32) / 255
    ref = ref[3:35, 5:37][:, ::-1].transpose(2, 0, 1)
    assert np.abs(clip[0].numpy() - ref).max() < 0.05


def test_bad_options():
    with pytest.raises(ValueError, match="crop"):
        ClipPreprocessing(size=32, crop="corner")
    with pytest.raises(ValueError, match="resize"):
        ClipPreprocessing(size=32, resize=16)
    with pytest.raises(ValueError, match="no frames"):
        ClipPreprocessing(size=32)([], train=False)

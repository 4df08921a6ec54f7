"""Any-resolution input: native-size preprocessing with mixed image sizes batches by shape.

``Detector.predict`` groups the transformed tensors by shape
(:func:`deepsift.core.inference.batches_by_shape`) and returns the scores in input order;
a mixed-size list must give the same score per image as scoring each image alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.core.inference import batches_by_shape
from detectors import load_detector


def test_batches_by_shape_groups_and_keeps_positions() -> None:
    shapes = [(3, 8, 8), (3, 9, 7), (3, 8, 8), (3, 9, 7), (3, 8, 8), (3, 5, 5)]
    samples = [
        (i, {"image": torch.full(s, float(i)), "record": None}) for i, s in enumerate(shapes)
    ]
    seen: list[int] = []
    for positions, batch in batches_by_shape(iter(samples), batch_size=2):
        assert 1 <= len(positions) <= 2
        image = batch["image"]
        assert image.shape[0] == len(positions)
        assert {tuple(shapes[p]) for p in positions} == {tuple(image.shape[1:])}
        # each row is the sample at its position, in the input order of that shape
        assert [int(row.flatten()[0]) for row in image] == positions
        assert positions == sorted(positions)
        seen += positions
    assert sorted(seen) == list(range(len(shapes)))
    with pytest.raises(ValueError, match="batch_size"):
        next(batches_by_shape(iter(samples), batch_size=0))


def test_predict_at_native_size_takes_mixed_sizes() -> None:
    torch.manual_seed(0)
    det = load_detector("npr", preprocessing={"resize": "none"}).eval()
    rng = np.random.default_rng(0)
    sizes = [(40, 48), (33, 29), (40, 48), (64, 32), (33, 29)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    # the transformed tensors keep the native sizes, so one batch could not stack them
    shapes = {
        tuple(det.eval_transform({"image": im, "record": None})["image"].shape) for im in images
    }
    assert len(shapes) == 3
    mixed = det.predict(images, batch_size=2, device="cpu")
    alone = np.array([det.predict(im, device="cpu")[0] for im in images], dtype=np.float32)
    assert mixed.shape == (len(images),) and mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, alone, atol=1e-5)
    # the scores differ between images, so a mix-up of the order would show
    assert len({round(float(s), 6) for s in mixed}) > 1

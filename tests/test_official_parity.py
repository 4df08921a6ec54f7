"""Official weights give the official outputs: deepsift against the authors' own code.

For every reference in ``tests/official/`` (made by running the authors' model and
test-time preprocessing on seeded random weights; see its README), the weights are
rebuilt in the official container, loaded with ``load_detector(name, weights=file)``
and only the architecture arguments the README names (never a preprocessing
override: the file's format must bring its protocol), and the outputs on the same
pictures are compared, in the dtype the reference states.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectors import load_detector
from tests.official.images import reference_images
from tests.official.weights import (
    load_reference,
    reference_names,
    write_companions,
    write_official_file,
)

NAMES = reference_names()


def _logits(detector, images: list[np.ndarray], dtype: torch.dtype) -> np.ndarray:
    detector = detector.to(dtype).eval()
    out = []
    with torch.no_grad():
        for array in images:
            sample = detector.eval_transform({"image": Image.fromarray(array), "record": None})
            batch = {
                k: v[None].to(dtype) if v.is_floating_point() else v[None]
                for k, v in sample.items()
                if torch.is_tensor(v)
            }
            out.append(float(detector(batch)["logits"].reshape(-1)[0]))
    return np.array(out, dtype=np.float64)


@pytest.mark.skipif(not NAMES, reason="no official references in tests/official")
@pytest.mark.parametrize("name", NAMES)
def test_official_weights_give_the_official_outputs(name: str, tmp_path: Path) -> None:
    reference = load_reference(name)
    overrides = dict(reference.get("overrides", {}))
    assert "preprocessing" not in overrides, "the file's format must bring its protocol"
    path = write_official_file(reference, tmp_path / reference.get("filename", f"{name}.pth"))
    overrides = write_companions(reference, tmp_path, overrides)  # e.g. CLIP's backbone_file
    detector = load_detector(reference["detector"], weights=str(path), **overrides)
    images = reference_images(reference.get("images_seed", 0))
    expected = np.array(reference["outputs"]["logits"], dtype=np.float64)
    dtype = torch.float64 if reference.get("dtype") == "float64" else torch.float32
    tolerance = reference.get("tolerance", {})
    got = _logits(detector, images, dtype)
    np.testing.assert_allclose(got, expected, rtol=0, atol=float(tolerance.get("logit", 2e-3)))
    if dtype == torch.float32:  # the user's path: predict, through the one inference pass
        probs = load_detector(reference["detector"], weights=str(path), **overrides).predict(
            images, device="cpu", batch_size=2
        )
        np.testing.assert_allclose(
            probs,
            np.array(reference["outputs"]["probs"]),
            rtol=0,
            atol=float(tolerance.get("prob", 1e-4)),
        )

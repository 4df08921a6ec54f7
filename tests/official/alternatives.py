"""The other documented test-time protocols of a reference (its ``alternatives``).

A reference made by ``make_cnndetection.py`` also holds the authors' outputs under the
other flags their README documents (e.g. CNNDetection ``--no_crop``), each with the
deepsift preprocessing fields that express it. :func:`check_alternatives` loads the
official file with those fields (a user's override: the protocol is not the file's
default) and compares the logits and fake probabilities image by image; ``null``
outputs (the authors' code fails on that picture) are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detectors import load_detector
from tests.official.images import reference_images
from tests.official.weights import load_reference, write_official_file


def check_alternatives(name: str, tmp_path: Path) -> None:
    from tests.test_official_parity import _logits

    reference = load_reference(name)
    alternatives = reference["alternatives"]
    assert alternatives, name
    path = write_official_file(reference, tmp_path / reference["filename"])
    images = reference_images(reference.get("images_seed", 0))
    tolerance = reference.get("tolerance", {})
    for alt, expected in alternatives.items():
        detector = load_detector(
            reference["detector"], weights=str(path), preprocessing=expected["deepsift"]
        )
        kept = [i for i, v in enumerate(expected["logits"]) if v is not None]
        got = _logits(detector, [images[i] for i in kept], torch.float32)
        want = np.array([expected["logits"][i] for i in kept])
        np.testing.assert_allclose(
            got, want, rtol=0, atol=float(tolerance.get("logit", 2e-3)), err_msg=alt
        )
        np.testing.assert_allclose(
            1 / (1 + np.exp(-got)),
            np.array([expected["probs"][i] for i in kept]),
            rtol=0,
            atol=float(tolerance.get("prob", 1e-4)),
            err_msg=alt,
        )

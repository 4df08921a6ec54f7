"""RFM: FAM = |d logit / d x|, FAM-guided erasing (against DeepfakeBench's code), layout, count."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepsift.core.errors import UserError
from detectors import load_detector
from detectors.base import count_parameters
from detectors.rfm import RFM, forgery_attention_map, rfm_erase
from tests.detector_checks import overfit, parameters_without_gradient
from tests.official.images import reference_images
from tests.official.make_rfm import erased_runs
from tests.official.make_rfm import pictures as rfm_pictures
from tests.official.weights import HERE, load_reference, write_official_file
from tests.test_official_parity import _logits

SMALL = 32
# DeepfakeBench's Xception with a two-class head (20,811,050) less one row: one fake logit
PARAMETERS = 20_811_050 - 2049


@pytest.fixture(scope="module")
def detector() -> RFM:
    torch.manual_seed(0)
    return RFM()


def test_parameter_count(detector: RFM) -> None:
    assert count_parameters(detector) == PARAMETERS


def test_fam_is_the_input_gradient_of_the_logit(detector: RFM) -> None:
    """Central finite differences in float64 at one pixel, max over the three channels."""
    det = copy.deepcopy(detector).double().eval()
    x = torch.randn(2, 3, SMALL, SMALL, dtype=torch.float64)
    fam = forgery_attention_map(det, x)
    assert fam.shape == (2, 1, SMALL, SMALL)
    eps, numeric = 1e-5, []
    for c in range(3):
        xp, xm = x.clone(), x.clone()
        xp[0, c, 5, 7] += eps
        xm[0, c, 5, 7] -= eps
        with torch.no_grad():
            diff = det({"image": xp})["logits"][0] - det({"image": xm})["logits"][0]
        numeric.append(abs(float(diff)) / (2 * eps))
    assert fam[0, 0, 5, 7].item() == pytest.approx(max(numeric), rel=1e-4, abs=1e-8)
    assert det.training is False


def test_erasing_covers_the_top_fam_points() -> None:
    random.seed(0)
    torch.manual_seed(0)
    x = torch.zeros(1, 3, 64, 64)
    fam = torch.zeros(1, 1, 64, 64)
    fam[0, 0, 10, 20] = 3.0
    fam[0, 0, 50, 40] = 2.0
    fam[0, 0, 30, 5] = 1.0
    out = rfm_erase(x, fam)
    changed = (out != 0).any(dim=1)[0]
    assert changed.any() and out.abs().max() <= 1
    # DeepfakeBench's box: rows [px - sh, px + mh - sh), sh in [1, mh], mh <= 120 * 64 / 256
    rows, cols = torch.nonzero(changed, as_tuple=True)
    near = torch.zeros_like(rows, dtype=torch.bool)
    for px, py in ((10, 20), (50, 40), (30, 5)):
        near |= ((rows - px).abs() <= 30) & ((cols - py).abs() <= 30)
    assert near.all()
    assert (changed == (out != 0).all(dim=1)[0]).all()  # boxes span all channels
    assert (rfm_erase(x, fam, points=0) == x).all()


def test_backward_and_overfit(detector: RFM) -> None:
    det = copy.deepcopy(detector)
    torch.manual_seed(0)
    batch = {"image": torch.randn(4, 3, SMALL, SMALL), "label": torch.tensor([0, 1, 0, 1])}
    assert parameters_without_gradient(det, batch) == []
    assert overfit(det, batch, steps=60, lr=1e-3, target=0.1) < 0.1


def test_deepfakebench_rfm_best_loads_strictly(detector: RFM, tmp_path: Path) -> None:
    """rfm_best.pth: backbone.<Cadene Xception>, backbone.last_linear (two classes)."""
    state = {
        f"backbone.{k}": v.clone()
        for k, v in detector.backbone.state_dict().items()
        if "num_batches_tracked" not in k
    }
    generator = torch.Generator().manual_seed(3)
    for k, v in state.items():  # non-trivial BatchNorm statistics, so eval-mode BN matters
        if "running_mean" in k:
            v.copy_(torch.randn(v.shape, generator=generator) * 0.1)
        elif "running_var" in k:
            v.copy_(torch.rand(v.shape, generator=generator) + 0.5)
    state["backbone.last_linear.weight"] = torch.randn(2, 2048) * 0.01
    state["backbone.last_linear.bias"] = torch.tensor([0.1, -0.2])
    torch.save(state, tmp_path / "rfm_best.pth")
    det = load_detector("rfm", weights=tmp_path / "rfm_best.pth")
    assert isinstance(det, RFM)
    w = state["backbone.last_linear.weight"]
    torch.testing.assert_close(det.head.weight[0], w[1] - w[0])
    det.eval()
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        feats = F.relu(det.backbone.forward_features(x)).mean(dim=(2, 3))
        two = feats @ w.T + state["backbone.last_linear.bias"]
        got = det({"image": x})["logits"]
    torch.testing.assert_close(got, two[:, 1] - two[:, 0], atol=1e-4, rtol=1e-4)
    del state["backbone.conv1.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(Exception, match=r"backbone\.conv1\.weight"):
        det.load_weights(tmp_path / "bad.pth")


# -- against DeepfakeBench's own RFMDetector (tests/official/rfm/, make_rfm.py) ----------
RFM_DFB = json.loads((HERE / "rfm" / "rfm_dfb.json").read_text())


@pytest.fixture(scope="module")
def dfb_rfm(tmp_path_factory: pytest.TempPathFactory) -> RFM:
    path = write_official_file(
        RFM_DFB["weights"], tmp_path_factory.mktemp("rfm_dfb") / RFM_DFB["weights"]["filename"]
    )
    return load_detector("rfm", weights=str(path))


def _erase_as_deepfakebench(det: RFM, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = rfm_pictures()
    det.train()
    random.seed(RFM_DFB["seed"])
    torch.manual_seed(RFM_DFB["seed"])
    fam = forgery_attention_map(det, x, target)
    return fam, rfm_erase(x, fam)


@pytest.mark.parametrize("target", ["deepfakebench", "logit"])
def test_erasing_is_deepfakebench_s(dfb_rfm: RFM, target: str) -> None:
    """Same FAM points, same boxes, same noise as their apply_rfm_augmentation."""
    expected = RFM_DFB["variants"][target]
    fam, out = _erase_as_deepfakebench(dfb_rfm, target)
    top = [np.argsort(fam[i].numpy().flatten())[::-1][:8].tolist() for i in range(len(fam))]
    assert top == expected["fam_top"]
    x = rfm_pictures()
    mask = (out != x).any(dim=1).logical_not().numpy()
    assert [erased_runs(m) for m in mask] == expected["erased"]
    np.testing.assert_allclose([float(o.double().sum()) for o in out], expected["sum"], rtol=1e-6)
    np.testing.assert_allclose(
        [float(o.double().square().sum()) for o in out], expected["sum_of_squares"], rtol=1e-6
    )


def test_deepfakebench_fam_is_not_the_paper_s(dfb_rfm: RFM) -> None:
    """The reference tells the two FAMs apart: the paper's FAM misses DeepfakeBench's boxes."""
    _, out = _erase_as_deepfakebench(dfb_rfm, "logit")
    mask = (out != rfm_pictures()).any(dim=1).logical_not().numpy()
    assert [erased_runs(m) for m in mask] != RFM_DFB["variants"]["deepfakebench"]["erased"]
    with pytest.raises(UserError, match="fam_target"):
        RFM(fam_target="features")


def test_test_time_network_is_deepfakebench_xception_s(tmp_path: Path) -> None:
    """rfm_best.pth is xception_best.pth's layout and RFM's forward XceptionDetector's, so
    DeepfakeBench's Xception reference (their code's outputs) holds for RFM as well."""
    reference = load_reference("deepfakebench_xception")
    path = write_official_file(reference, tmp_path / "rfm_best.pth")
    det = load_detector("rfm", weights=str(path))
    got = _logits(det, reference_images(reference["images_seed"]), torch.float32)
    expected = np.array(reference["outputs"]["logits"])
    assert np.abs(got - expected).max() <= reference["tolerance"]["logit"]

"""MesoNet (Meso4, MesoInception4): parity with the official Keras models, weights import, training."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from deepsift.core.errors import UserError
from detectors.base import count_parameters, to_pil
from detectors.factory import build_detector, detector_config, load_detector
from detectors.layers.keras_h5 import is_hdf5, read_keras_h5
from detectors.mesonet import MaxPoolSame, Meso4, MesoInception4, MesoNet

MESONET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mesonet"
needs_shared = pytest.mark.skipif(
    not (MESONET / "weights").is_dir(),
    reason=f"official MesoNet weights and test images not found in {MESONET}",
)

# Official outputs (probability of REAL, and its pre-sigmoid logit) of the official
# Keras models, written by benchmarks/mesonet_reference.py with TensorFlow 2.21.0 +
# tf_keras 2.21.0 (Keras 2; h5py 3.14.0, Pillow 13.0.0, CPU): the architectures of
# the official classifiers.py, the official .h5 weights loaded with model.load_weights
# (by-name loading gives the same numbers), the images read as the official example.py
# does: ImageDataGenerator(rescale=1/255).flow_from_directory(target_size=(256, 256)).
REFERENCE: dict[tuple[str, str], tuple[float, float]] = {
    ("Meso4_DF", "df/df00204.jpg"): (0.0414117500, -3.14189685),
    ("Meso4_DF", "df/df01254.jpg"): (0.0486937650, -2.97228517),
    ("Meso4_DF", "real/real00240.jpg"): (0.9897475839, 4.56993393),
    ("Meso4_DF", "real/real00772.jpg"): (0.9977015853, 6.07322483),
    ("Meso4_F2F", "df/df00204.jpg"): (0.8312374353, 1.59442277),
    ("Meso4_F2F", "df/df01254.jpg"): (0.6410998106, 0.58014085),
    ("Meso4_F2F", "real/real00240.jpg"): (0.8810234666, 2.00215779),
    ("Meso4_F2F", "real/real00772.jpg"): (0.9524387717, 2.99700745),
    ("MesoInception_DF", "df/df00204.jpg"): (0.0262182858, -3.61473020),
    ("MesoInception_DF", "df/df01254.jpg"): (0.0009519655, -6.95602943),
    ("MesoInception_DF", "real/real00240.jpg"): (1.0000000000, 21.59616991),
    ("MesoInception_DF", "real/real00772.jpg"): (1.0000000000, 45.60313083),
    ("MesoInception_F2F", "df/df00204.jpg"): (0.9987431765, 6.67789371),
    ("MesoInception_F2F", "df/df01254.jpg"): (0.9999974370, 12.86559355),
    ("MesoInception_F2F", "real/real00240.jpg"): (1.0000000000, 17.57289206),
    ("MesoInception_F2F", "real/real00772.jpg"): (0.9908301830, 4.68262473),
}
IMAGES = ["df/df00204.jpg", "df/df01254.jpg", "real/real00240.jpg", "real/real00772.jpg"]
WEIGHTS = {
    "Meso4_DF": "meso4",
    "Meso4_F2F": "meso4",
    "MesoInception_DF": "mesoinception4",
    "MesoInception_F2F": "mesoinception4",
}
# Keras model.summary() of the official architectures (benchmarks/mesonet_reference.py):
# trainable parameters, and non-trainable ones (BatchNorm moving means and variances)
PARAMS = {Meso4: (27_977, 96), MesoInception4: (28_615, 110)}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# -- parity with the official models -------------------------------------------------
@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("stem", list(WEIGHTS))
def test_official_weights_match_keras(stem: str) -> None:
    det = load_detector(WEIGHTS[stem], weights=MESONET / "weights" / f"{stem}.h5")
    paths = [MESONET / "test_images" / name for name in IMAGES]
    fake = det.predict(paths, device="cpu").astype(np.float64)
    real_prob = np.array([REFERENCE[stem, name][0] for name in IMAGES])
    real_logit = np.array([REFERENCE[stem, name][1] for name in IMAGES])
    np.testing.assert_allclose(1 - fake, real_prob, rtol=0, atol=1e-4)
    # logits too: they still differ where the probabilities saturate at 1.0
    batch = torch.stack(
        [det.eval_transform({"image": to_pil(p), "record": None})["image"] for p in paths]
    )
    with torch.no_grad():
        logits = det.eval()({"image": batch})["logits"].double().numpy()
    np.testing.assert_allclose(-logits, real_logit, rtol=1e-5, atol=1e-4)


@pytest.mark.shared
@needs_shared
def test_meso4_df_separates_the_test_faces() -> None:
    det = load_detector("meso4", weights=MESONET / "weights" / "Meso4_DF.h5")
    fake = det.predict([MESONET / "test_images" / name for name in IMAGES], device="cpu")
    assert (fake[:2] > 0.9).all(), fake  # df/
    assert (fake[2:] < 0.1).all(), fake  # real/


@pytest.mark.shared
@needs_shared
def test_preprocessing_is_keras_load_img() -> None:
    """PIL nearest resize to 256 x 256 (Keras load_img), then x * (1/255): pixel for pixel."""
    det = load_detector("meso4")
    for name in IMAGES:
        _check_keras_preprocessing(det, Image.open(MESONET / "test_images" / name).convert("RGB"))


def _check_keras_preprocessing(det: MesoNet, image: Image.Image) -> None:
    keras = np.asarray(image.resize((256, 256), Image.NEAREST), dtype=np.float32)
    keras *= np.float32(1.0 / 255)  # ImageDataGenerator.standardize: x *= rescale
    ours = det.eval_transform({"image": image, "record": None})["image"].numpy()
    assert ours.shape == (3, 256, 256)
    np.testing.assert_allclose(ours.transpose(1, 2, 0), keras, rtol=0, atol=1e-7)


def test_preprocessing_matches_keras_on_odd_sizes() -> None:
    det = Meso4()
    rng = np.random.default_rng(0)
    for height, width in ((342, 342), (208, 301), (257, 255), (256, 256)):
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        _check_keras_preprocessing(det, Image.fromarray(array))


# -- architecture ----------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Meso4, MesoInception4])
def test_parameter_counts_match_keras(cls: type[MesoNet]) -> None:
    det = cls()
    trainable, frozen = PARAMS[cls]
    assert count_parameters(det, trainable_only=True) == trainable
    assert count_parameters(det) == trainable
    bn_stats = sum(
        b.numel() for n, b in det.named_buffers() if n.endswith(("running_mean", "running_var"))
    )
    assert bn_stats == frozen
    for bn in (m for m in det.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert (bn.eps, bn.momentum) == (1e-3, 0.01)  # Keras epsilon, momentum 0.99


@pytest.mark.parametrize("cls", [Meso4, MesoInception4])
def test_forward_and_backward_at_native_size(cls: type[MesoNet]) -> None:
    torch.manual_seed(0)
    det = cls()
    det.eval()
    with torch.no_grad():
        out = det({"image": torch.rand(2, 3, 256, 256)})
    assert out["logits"].shape == (2,) and out["logits"].dtype == torch.float32
    det.train()
    batch = {"image": torch.rand(2, 3, 256, 256), "label": torch.tensor([0.0, 1.0])}
    loss = det.training_step(batch)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    params = list(det.named_parameters())
    assert params and all(p.requires_grad for _, p in params)
    missing = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for _, p in params)


def test_input_sizes() -> None:
    det = Meso4().eval()
    with torch.no_grad():  # 225..256 px give the 8 x 8 features the Dense layer needs
        assert det({"image": torch.rand(1, 3, 250, 231)})["logits"].shape == (1,)
        with pytest.raises(UserError, match="256 x 256"):
            det({"image": torch.rand(1, 3, 128, 128)})


def test_max_pool_same_pads_like_tensorflow() -> None:
    """TF "SAME" pooling pads (-n) % k cells, the smaller half before."""
    x = torch.randn(1, 2, 10, 7)
    got = MaxPoolSame(4)(x)
    assert got.shape == (1, 2, 3, 2)
    k, top, left = 4, 1, 0  # 10 -> pad 2 (1 + 1); 7 -> pad 1 (0 + 1)
    for i in range(3):
        for j in range(2):
            rows = slice(max(i * k - top, 0), i * k - top + k)
            cols = slice(max(j * k - left, 0), j * k - left + k)
            torch.testing.assert_close(got[0, :, i, j], x[0, :, rows, cols].amax(dim=(-2, -1)))


@pytest.mark.parametrize("cls", [Meso4, MesoInception4])
def test_overfits_a_tiny_batch(cls: type[MesoNet]) -> None:
    torch.manual_seed(0)
    det = cls(dropout=0.0)
    optimizer, scheduler = det.configure_optimizers()  # the official Adam(lr=1e-3)
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["eps"] == 1e-7
    batch = {"image": torch.rand(2, 3, 256, 256), "label": torch.tensor([0.0, 1.0])}
    det.train()
    for _step in range(10):
        loss = det.training_step(batch)["loss"]  # the official MSE on the sigmoid output
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-3


# -- configs and weights -----------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls"), [("meso4", Meso4), ("mesoinception4", MesoInception4)])
def test_config_composes(name: str, cls: type[MesoNet]) -> None:
    det = load_detector(name)
    assert type(det) is cls and det.config_name == name
    assert det.loss == "mse" and det.dropout == 0.5
    p = det.preprocessing
    assert (p.size, p.resize, p.resize_to, p.interpolation) == (256, "square", 256, "nearest")
    assert p.mean == (0.0, 0.0, 0.0) and p.std == (1.0, 1.0, 1.0)
    assert det._official_preprocessing()
    optimizer, _ = det.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["eps"] == 1e-7


def write_keras_h5(
    det: MesoNet, path: Path, skip: tuple[str, ...] = (), extra: bool = False
) -> None:
    """Write ``det``'s weights as Keras 2 ``save_weights`` does (official sign: logit of real).

    Layers are named as Keras 2.1.5 would (``conv2d_1``...) and listed in a shuffled
    order, since the import must map by kind and creation order, not by position.
    """
    layers: dict[str, dict[str, np.ndarray]] = {}
    kinds = det.keras_layers()
    for kind, modules in kinds.items():
        for index, (_, module) in enumerate(modules, start=1):
            if kind == "conv2d":
                arrays = {"kernel": module.weight.permute(2, 3, 1, 0), "bias": module.bias}
            elif kind == "batch_normalization":
                arrays = {
                    "gamma": module.weight,
                    "beta": module.bias,
                    "moving_mean": module.running_mean,
                    "moving_variance": module.running_var,
                }
            else:
                sign = -1 if module is kinds["dense"][-1][1] else 1
                arrays = {"kernel": sign * module.weight.T, "bias": sign * module.bias}
            layers[f"{kind}_{index}"] = {k: v.detach().numpy() for k, v in arrays.items()}
    if extra:
        layers["conv2d_99"] = {"kernel": np.zeros((1, 1, 3, 1), np.float32)}
    names = [n for n in layers if n not in skip] + ["input_1", "flatten_1"]
    random.Random(0).shuffle(names)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.1.5"
        for name in names:
            group = f.create_group(name)
            arrays = layers.get(name, {})
            group.attrs["weight_names"] = [f"{name}/{k}:0".encode() for k in arrays]
            for key, value in arrays.items():
                group.create_dataset(f"{name}/{key}:0", data=value)


def _randomised(cls: type[MesoNet]) -> MesoNet:
    torch.manual_seed(1)
    det = cls().eval()
    with torch.no_grad():
        for bn in (m for m in det.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return det


@pytest.mark.parametrize("cls", [Meso4, MesoInception4])
def test_keras_h5_round_trip(cls: type[MesoNet], tmp_path: Path) -> None:
    source = _randomised(cls)
    write_keras_h5(source, tmp_path / "w.h5")
    loaded = cls().eval()
    loaded.load_weights(tmp_path / "w.h5")
    x = {"image": torch.rand(2, 3, 256, 256)}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], source(x)["logits"])
    # without a suffix too (the official example loads "weights/Meso4_DF"), via the factory
    (tmp_path / "w.h5").rename(tmp_path / "weights")
    assert is_hdf5(tmp_path / "weights")
    name = "meso4" if cls is Meso4 else "mesoinception4"
    again = load_detector(name, weights=tmp_path / "weights").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x)["logits"], source(x)["logits"])


def test_partial_h5_names_missing_keys(tmp_path: Path) -> None:
    write_keras_h5(_randomised(Meso4), tmp_path / "partial.h5", skip=("dense_2", "conv2d_4"))
    with pytest.raises(UserError, match="missing keys") as info:
        load_detector("meso4", weights=tmp_path / "partial.h5")
    message = str(info.value)
    assert "fc2.weight" in message and "blocks.3.conv.weight" in message
    assert "unexpected keys: none" in message and "\n" not in message


def test_wrong_h5_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    write_keras_h5(_randomised(Meso4), tmp_path / "meso4.h5", extra=True)
    with pytest.raises(UserError, match="unexpected keys: conv2d_99/kernel"):
        Meso4().load_weights(tmp_path / "meso4.h5")
    with pytest.raises(UserError, match=r"missing keys: .*blocks\.\d\.conv\.") as info:
        MesoInception4().load_weights(tmp_path / "meso4.h5")
    assert "MesoInception4 has 16 conv2d" in str(info.value)


@pytest.mark.shared
@needs_shared
def test_official_meso4_file_refused_by_mesoinception4() -> None:
    with pytest.raises(UserError, match="missing keys") as info:
        load_detector("mesoinception4", weights=MESONET / "weights" / "Meso4_DF.h5")
    assert "layers with weights: 4 conv2d" in str(info.value)


def test_bad_h5_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        Meso4().load_weights(tmp_path / "absent.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="cannot be opened as HDF5"):
        Meso4().load_weights(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(UserError, match="not a Keras 2 weights file"):
        Meso4().load_weights(tmp_path / "other.h5")
    with pytest.raises(UserError, match="not a Keras 2 weights file"):
        read_keras_h5(tmp_path / "other.h5")


def test_state_dict_still_loads(tmp_path: Path) -> None:
    source = _randomised(MesoInception4)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    loaded = load_detector("mesoinception4", weights=tmp_path / "weights.pt").eval()
    x = {"image": torch.rand(1, 3, 256, 256)}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], source(x)["logits"])
    torch.save(Meso4().state_dict(), tmp_path / "meso4.pt")
    with pytest.raises(UserError, match="missing keys"):
        load_detector("mesoinception4", weights=tmp_path / "meso4.pt")


def test_weights_through_a_config_override(tmp_path: Path) -> None:
    """evaluate.py's detector.weights=... path: build_detector pops weights, calls load_weights."""
    source = _randomised(Meso4)
    write_keras_h5(source, tmp_path / "w.h5")
    det = build_detector(detector_config("meso4", weights=str(tmp_path / "w.h5")), "meso4")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(det.state_dict()[key], value)


def test_warns_when_official_weights_meet_other_preprocessing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_keras_h5(_randomised(Meso4), tmp_path / "w.h5")
    det = Meso4(preprocessing={"interpolation": "bilinear"})
    with caplog.at_level(logging.WARNING, logger="detectors.mesonet"):
        det.load_weights(tmp_path / "w.h5")
    assert "official weights loaded with preprocessing" in caplog.text

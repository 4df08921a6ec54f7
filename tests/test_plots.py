"""deepsift.engine.plots writes PNGs PIL can open, without pyplot, and survives degenerate input."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsift.engine import plots
from deepsift.engine.plots import (
    average_spectrum,
    plot_reliability,
    plot_roc,
    plot_score_histogram,
    plot_spectra,
)


@pytest.fixture(autouse=True)
def small_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Low-resolution output keeps the tests fast; the drawing code is the same."""
    monkeypatch.setattr(plots, "_DPI", 40)


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 50 and height > 50
    return width, height


@pytest.fixture
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    probs = np.clip(np.concatenate([rng.beta(2, 5, 200), rng.beta(5, 2, 200)]), 0, 1)
    return labels, probs


@pytest.mark.parametrize("log_fpr", [False, True])
def test_roc(tmp_path: Path, scores, log_fpr: bool) -> None:
    labels, probs = scores
    curves = {
        "all": (labels, probs),
        "reversed": (labels, 1 - probs),
        "only reals": (labels[:200], probs[:200]),
        "empty": ([], []),
    }
    out = plot_roc(curves, tmp_path / "nested" / "roc.png", title="ROC — test", log_fpr=log_fpr)
    assert out == tmp_path / "nested" / "roc.png"
    assert_png(out)


def test_roc_rejects_bad_probs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NaN"):
        plot_roc({"x": ([0, 1], [0.1, float("nan")])}, tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()


def test_score_histogram(tmp_path: Path, scores) -> None:
    labels, probs = scores
    assert_png(plot_score_histogram(labels, probs, tmp_path / "s.png", threshold=0.3, title="t"))
    assert_png(plot_score_histogram(labels[200:], probs[200:], tmp_path / "fakes.png"))
    assert_png(plot_score_histogram([], [], tmp_path / "empty.png"))


def test_reliability(tmp_path: Path, scores) -> None:
    labels, probs = scores
    assert_png(plot_reliability(labels, probs, tmp_path / "r.png", bins=10))
    assert_png(plot_reliability([], [], tmp_path / "empty.png"))


def test_average_spectrum_finds_the_upsampling_peak() -> None:
    rng = np.random.default_rng(0)
    smooth = rng.random((8, 32, 32))
    # Nearest-neighbour x2 up-sampling of noise: energy at the Nyquist frequency is suppressed,
    # while plain noise is flat.
    blocky = np.repeat(np.repeat(rng.random((8, 16, 16)), 2, axis=1), 2, axis=2)
    flat, up = average_spectrum(smooth), average_spectrum(blocky)
    assert flat.shape == up.shape == (32, 32)
    # After fftshift, (0, 0) is the Nyquist corner (-16, -16), (16, 16) the DC term.
    assert up[16, 0] < flat[16, 0] - 5  # horizontal Nyquist is (almost) cancelled
    assert up[16, 16] > up[16, 8]


def test_average_spectrum_inputs() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    gray = rgb.astype(np.float64) / 255 @ np.array([0.299, 0.587, 0.114])
    assert average_spectrum(rgb).shape == (16, 24)
    np.testing.assert_allclose(average_spectrum(rgb), average_spectrum(gray), atol=1e-9)
    np.testing.assert_allclose(average_spectrum(rgb, chunk=2), average_spectrum(rgb), atol=1e-9)
    rgba = np.concatenate([rgb, np.zeros((3, 16, 24, 1), np.uint8)], axis=-1)
    np.testing.assert_allclose(average_spectrum(rgba), average_spectrum(rgb), atol=1e-9)
    with pytest.raises(ValueError, match="shape"):
        average_spectrum(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="shape"):
        average_spectrum(np.zeros((2, 16, 16, 2)))
    with pytest.raises(ValueError, match="at least one"):
        average_spectrum(np.zeros((0, 16, 16)))


def test_plot_spectra(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    real = average_spectrum(rng.random((4, 32, 32)))
    fake = average_spectrum(np.repeat(np.repeat(rng.random((4, 16, 16)), 2, 1), 2, 2))
    one = assert_png(plot_spectra({"real": real}, tmp_path / "one.png"))
    three = assert_png(
        plot_spectra({"real": real, "fake": fake}, tmp_path / "s.png", difference=("fake", "real"))
    )
    assert three[0] > 2 * one[0]  # panels side by side
    with pytest.raises(ValueError, match="'gan'"):
        plot_spectra({"real": real}, tmp_path / "x.png", difference=("gan", "real"))
    with pytest.raises(ValueError, match="2-D"):
        plot_spectra({"real": np.zeros(4)}, tmp_path / "x.png")


def test_no_pyplot_at_import_or_draw_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import matplotlib.pyplot` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.delitem(sys.modules, "deepsift.engine.plots")
    fresh = importlib.import_module("deepsift.engine.plots")
    # Only single-class curves: nothing to draw but the chance line and the notes.
    curves = {"fakes": ([1, 1, 1], [0.2, 0.5, 0.9])}
    assert_png(fresh.plot_roc(curves, tmp_path / "roc.png", log_fpr=True))

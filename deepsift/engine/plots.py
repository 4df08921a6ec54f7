"""Figures users look at, written as PNG: ROC curves, score histograms, spectra, reliability,
robustness curves.

Everything draws on a ``matplotlib.figure.Figure`` with an explicit Agg canvas:
no pyplot, no global state, no backend switch, so it is safe in training loops,
worker processes and headless servers, and importing this module has no side
effects. Every ``plot_*`` function creates the output folder if needed and returns
the path it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from deepsift.engine.metrics import calibration_bins, validate_scores

__all__ = [
    "average_spectrum",
    "plot_reliability",
    "plot_robustness",
    "plot_roc",
    "plot_score_histogram",
    "plot_spectra",
]

_DPI = 120
# ITU-R BT.601 luma, as PIL's convert("L").
_LUMA = np.array([0.299, 0.587, 0.114])


def _new_figure(width: float = 5.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def plot_roc(
    curves: Mapping[str, tuple[Any, Any]],
    path: str | Path,
    title: str | None = None,
    log_fpr: bool = False,
) -> Path:
    """ROC curves, one line per ``name -> (labels, probs)``, with the AUC in the legend.

    ``log_fpr=True`` puts the false-positive rate on a log axis to show the low-FPR
    regime (FPR = 0 points are drawn at the axis' left edge). A curve whose set holds a
    single class (or nothing) has no ROC: it is listed in the legend as skipped.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    drawn: list[tuple[np.ndarray, np.ndarray, str]] = []
    skipped: list[str] = []
    min_fpr = 1.0
    for name, (labels, probs) in curves.items():
        y, p = validate_scores(labels, probs)
        n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
        if n_real == 0 or n_fake == 0:
            why = "empty" if len(y) == 0 else f"only {'fakes' if n_real == 0 else 'reals'}"
            skipped.append(f"{name}: skipped ({why})")
            continue
        fpr, tpr, _ = roc_curve(y, p)
        auc = roc_auc_score(y, p)
        drawn.append((fpr, tpr, f"{name} (AUC {auc:.4f})"))
        min_fpr = min(min_fpr, 1.0 / n_real)

    floor = min_fpr / 2 if log_fpr else 0.0
    for fpr, tpr, label in drawn:
        ax.plot(np.maximum(fpr, floor), tpr, lw=1.5, label=label)
    if log_fpr:
        chance = np.logspace(math.log10(floor), 0, 200)
        ax.plot(chance, chance, ls="--", lw=1, color="grey", label="chance")
        ax.set_xscale("log")
        ax.set_xlim(floor, 1.0)
    else:
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
        ax.set_xlim(0.0, 1.0)
        ax.set_aspect("equal")
    for note in skipped:
        ax.plot([], [], ls="none", label=note)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("false positive rate (reals called fake)")
    ax.set_ylabel("true positive rate (fakes caught)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title or "ROC")
    return _save(fig, path)


def plot_score_histogram(
    labels: Any,
    probs: Any,
    path: str | Path,
    threshold: float = 0.5,
    title: str | None = None,
    bins: int = 50,
) -> Path:
    """Overlaid histograms of the fake probability for reals and fakes, with the threshold."""
    y, p = validate_scores(labels, probs)
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for label, name, color in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        scores = p[y == label]
        if len(scores):
            counts, _ = np.histogram(scores, bins=edges)
            ax.stairs(
                counts, edges, fill=True, alpha=0.45, color=color, label=f"{name} (n={len(scores)})"
            )
            ax.stairs(counts, edges, color=color, lw=1)
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
    if len(y) == 0:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("probability of fake")
    ax.set_ylabel("count")
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or "Scores")
    return _save(fig, path)


def plot_reliability(
    labels: Any, probs: Any, path: str | Path, bins: int = 15, title: str | None = None
) -> Path:
    """Reliability diagram of the fake probability, with the ECE and a per-bin count panel.

    Bars show the fraction of fakes in each of ``bins`` equal-width probability bins,
    dots the bin's mean predicted probability; a calibrated detector follows the diagonal.
    """
    y, p = validate_scores(labels, probs)
    mean_prob, frac_fake, count = calibration_bins(y, p, bins)
    full = count > 0
    ece = (
        float(np.sum(count[full] / len(y) * np.abs(mean_prob[full] - frac_fake[full])))
        if len(y)
        else math.nan
    )
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = 1.0 / bins
    fig = _new_figure(5.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(
        edges[:-1][full],
        frac_fake[full],
        width=width,
        align="edge",
        alpha=0.6,
        edgecolor="black",
        label="fraction of fakes",
    )
    top.plot(mean_prob[full], frac_fake[full], "o", color="tab:red", ms=4, label="bin mean prob")
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("fraction of fakes")
    top.legend(loc="upper left", fontsize="small")
    ece_text = "n/a" if math.isnan(ece) else f"{ece:.4f}"
    top.set_title(f"{title or 'Reliability'} (ECE {ece_text}, n={len(y)})")
    bottom.bar(edges[:-1], count, width=width, align="edge", color="grey", edgecolor="black")
    bottom.set_xlabel("predicted probability of fake")
    bottom.set_ylabel("count")
    return _save(fig, path)


def average_spectrum(images: Any, chunk: int = 64) -> np.ndarray:
    """Mean log-magnitude 2-D Fourier spectrum of a stack of images, centred (``fftshift``).

    ``images``: ``(N, H, W, 3)`` (or ``(N, H, W, 4)``, alpha dropped, or ``(N, H, W, 1)``)
    colour images, or ``(N, H, W)`` grayscale. Integer images are scaled by 1/255, floats are
    taken as they are (expected in [0, 1]). Colour is converted to BT.601 luma. Returns an
    ``(H, W)`` float64 array: the mean over images of ``log(|FFT(gray)| + 1e-6)``. The
    periodic peaks that up-samplers leave show up as bright off-centre dots.
    """
    x = np.asarray(images)
    if x.ndim == 4:
        if x.shape[-1] not in (1, 3, 4):
            raise ValueError(f"colour images must be (N, H, W, 1|3|4), got shape {x.shape}")
    elif x.ndim != 3:
        raise ValueError(f"images must be a stack (N, H, W, 3) or (N, H, W), got shape {x.shape}")
    if len(x) == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"need at least one non-empty image, got shape {x.shape}")
    scale = 1.0 / 255.0 if np.issubdtype(x.dtype, np.integer) or x.dtype == bool else 1.0
    total = np.zeros(x.shape[1:3], dtype=np.float64)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk].astype(np.float64) * scale
        if block.ndim == 4:
            block = block[..., 0] if block.shape[-1] == 1 else block[..., :3] @ _LUMA
        magnitude = np.abs(np.fft.fft2(block, axes=(-2, -1)))
        total += np.log(magnitude + 1e-6).sum(axis=0)
    return np.fft.fftshift(total / len(x))


def plot_spectra(
    spectra: Mapping[str, np.ndarray],
    path: str | Path,
    title: str | None = None,
    difference: tuple[str, str] | None = None,
) -> Path:
    """Spectra (e.g. from :func:`average_spectrum`) side by side, one panel per name.

    ``difference=("fake", "real")`` adds a panel ``fake − real`` on a diverging colour
    map centred on 0, where a generator's frequency fingerprint stands out. Colour limits
    are robust percentiles (5th-99.9th; +-95th of |difference|) so neither the DC peak nor
    exactly cancelled frequencies wash a panel out; values beyond them saturate.
    """
    panels: list[tuple[str, np.ndarray, bool]] = [
        (name, np.asarray(s, dtype=np.float64), False) for name, s in spectra.items()
    ]
    for name, s, _ in panels:
        if s.ndim != 2:
            raise ValueError(f"spectrum {name!r} must be 2-D (H, W), got shape {s.shape}")
    if difference is not None:
        a, b = difference
        missing = [k for k in (a, b) if k not in spectra]
        if missing:
            raise ValueError(
                f"difference needs spectra named {', '.join(map(repr, missing))}; have {', '.join(map(repr, spectra))}"
            )
        sa, sb = np.asarray(spectra[a], dtype=np.float64), np.asarray(spectra[b], dtype=np.float64)
        if sa.shape != sb.shape:
            raise ValueError(
                f"cannot subtract spectra of different shapes: {a!r} {sa.shape}, {b!r} {sb.shape}"
            )
        panels.append((f"{a} − {b}", sa - sb, True))
    if not panels:
        raise ValueError("no spectra to plot")
    fig = _new_figure(3.2 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, s, diverging) in zip(axes, panels, strict=True):
        if diverging:
            limit = float(np.percentile(np.abs(s), 95)) or 1.0
            image = ax.imshow(s, cmap="RdBu_r", vmin=-limit, vmax=limit)
        else:
            low, high = np.percentile(s, (5, 99.9))
            image = ax.imshow(s, cmap="viridis", vmin=low, vmax=high if high > low else low + 1)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def bar_chart(
    bars: Mapping[tuple[str, str], tuple[float, float]],
    path: str | Path,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """Horizontal bars of ``(group, test set) -> (mean, std)``, one colour per test set,
    with the standard deviation as an error bar (none when NaN: a single seed)."""
    items = list(bars.items())
    test_sets = sorted({test_set for (_, test_set), _ in items})
    colours = {name: f"C{i % 10}" for i, name in enumerate(test_sets)}
    fig = _new_figure(6.5, max(2.5, 0.35 * len(items) + 1.2))
    ax = fig.add_subplot()
    for y, ((_group, test_set), (mean, std)) in enumerate(items):
        ax.barh(
            y,
            mean,
            xerr=None if np.isnan(std) else std,
            color=colours[test_set],
            capsize=3,
            label=test_set,
        )
    ax.set_yticks(range(len(items)), [f"{group} — {test_set}" for (group, test_set), _ in items])
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_robustness(
    levels: Sequence[str],
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    metric: str = "ap",
    xlabel: str = "level",
    title: str | None = None,
) -> Path:
    """A metric against perturbation level: one line per ``name -> values`` (one per level).

    Levels are categorical ticks in the given order (``none``, JPEG 95, 90, ... or chains),
    so families whose levels are not numbers draw the same way. NaN values (a generator
    missing at a level, a single-class set) leave a gap; a curve named ``all`` is drawn
    thicker and black, as the whole set.
    """
    x = np.arange(len(levels))
    # chains break after each "+", one step a line; the figure widens with the labels
    ticks = [str(level).replace("+", "+\n") for level in levels]
    longest = max((len(line) for tick in ticks for line in tick.splitlines()), default=1)
    fig = _new_figure(min(16.0, max(5.0, len(levels) * max(0.6, 0.085 * longest) + 2.5)), 4.2)
    ax = fig.add_subplot()
    for name, values in curves.items():
        y = np.asarray(values, dtype=np.float64)
        if len(y) != len(levels):
            raise ValueError(f"curve {name!r} has {len(y)} values for {len(levels)} levels")
        style = {"color": "black", "lw": 2.2, "zorder": 3} if name == "all" else {"lw": 1.4}
        ax.plot(x, y, marker="o", ms=4, label=name, **style)
    ax.set_xticks(x, ticks, fontsize="small" if longest > 8 else None)
    if metric in ("auc", "ap", "acc", "acc_real", "acc_fake") or metric.startswith("tpr"):
        ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or f"{metric} under perturbation")
    return _save(fig, path)


#: The same Agg figure and PNG writer, for figures drawn elsewhere in deepsift.engine
#: (e.g. reproduction.png).
new_figure = _new_figure
save_figure = _save

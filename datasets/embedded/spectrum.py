"""Average power spectra of crops: the spectrum gap between reals and fakes, and its removal.

Durall et al. ("Watch your Up-Convolution", CVPR 2020) showed that generators'
up-sampling leaves an average spectrum that differs from that of real images at
high frequencies, and that a 1-D azimuthal profile of the spectrum is enough to
separate them. Embedded v1's fakes lacked high-frequency power (gap in the upper
half of frequencies 0.47-0.54 decades), so the spectrum detectors scored 1.000.

:func:`spectrum_gap` is the measure quoted in ``benchmarks/README.md``: the luma of
each crop, its 2-D power spectrum averaged over crops, azimuthally averaged over
integer radii, and the mean over radii of ``|log10 P_fake(r) - log10 P_real(r)|``
for all radii (1 .. H/2 - 1) and for the upper half (H/4 .. H/2 - 1).

:class:`SpectrumMatcher` is embedded v2's post-processing: a fixed 2-D gain
``sqrt(P_real / P_fake)`` (per frequency, clipped) fitted on the *train* crops of a
family, refined on what is stored after rounding and JPEG, and applied to all its
fakes, so that their average power spectrum matches the reals' while the phase
(where the generator puts its artefacts) is untouched.
"""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])


def luma(pixels: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` pixels on 0-255 -> ``(N, H, W)`` float64 luma (ITU-R BT.601)."""
    return np.asarray(pixels, dtype=np.float64) @ LUMA


def mean_power(grey: np.ndarray) -> np.ndarray:
    """Mean 2-D power spectrum ``|FFT|^2`` of ``(N, H, W)`` images, zero frequency centred."""
    spectrum = np.fft.fftshift(np.fft.fft2(grey), axes=(-2, -1))
    return (np.abs(spectrum) ** 2).mean(axis=0)


def azimuthal_profile(power: np.ndarray) -> np.ndarray:
    """Mean of a centred ``(H, W)`` spectrum over rings of integer radius 0, 1, 2, ..."""
    height, width = power.shape
    yy, xx = np.indices(power.shape)
    radius = np.round(np.hypot(yy - height // 2, xx - width // 2)).astype(np.int64)
    return np.bincount(radius.ravel(), power.ravel()) / np.bincount(radius.ravel())


def spectrum_gap(reals: np.ndarray, fakes: np.ndarray) -> dict[str, float]:
    """Mean |log10 ratio| of the fakes' to the reals' azimuthal mean spectrum.

    ``reals`` and ``fakes`` are ``(N, H, W, 3)`` pixels on 0-255 (any count each).
    Returns ``{"all": ..., "upper": ...}``: radii 1 .. H/2 - 1 and H/4 .. H/2 - 1.
    """
    half = min(reals.shape[1], reals.shape[2]) // 2
    real = azimuthal_profile(mean_power(luma(reals)))
    fake = azimuthal_profile(mean_power(luma(fakes)))
    gap = np.abs(np.log10(fake[1:half]) - np.log10(real[1:half]))
    return {"all": float(gap.mean()), "upper": float(gap[half // 2 - 1 :].mean())}


class SpectrumMatcher:
    """A per-frequency gain that gives fakes the reals' mean power spectrum.

    ``fit(reals, fakes)`` takes paired or unpaired ``(N, H, W, 3)`` float images (any
    scale, the same for both) and stores ``gain = sqrt(P_real / P_fake)`` over the
    three channels' mean power, clipped to ``[1 / limit, limit]``; ``apply`` multiplies
    each channel's spectrum by it. Deterministic (NumPy FFT, float64).
    """

    def __init__(self, limit: float = 4.0) -> None:
        if limit < 1:
            raise ValueError(f"limit={limit} must be >= 1")
        self.limit = limit
        self.gain: np.ndarray | None = None

    @staticmethod
    def _power(images: np.ndarray) -> np.ndarray:
        channels = np.moveaxis(np.asarray(images, dtype=np.float64), -1, 1)
        return (np.abs(np.fft.fft2(channels)) ** 2).mean(axis=(0, 1))

    def fit(self, reals: np.ndarray, fakes: np.ndarray) -> SpectrumMatcher:
        ratio = self._power(reals) / np.maximum(self._power(fakes), 1e-12)
        self.gain = np.clip(np.sqrt(ratio), 1 / self.limit, self.limit)
        return self

    def refine(self, reals: np.ndarray, matched: np.ndarray) -> SpectrumMatcher:
        """Correct the gain by what is left between ``reals`` and ``matched`` fakes.

        ``matched`` are fakes after :meth:`apply` and whatever follows it (rounding,
        JPEG), so a refinement round corrects the power those steps remove.
        """
        if self.gain is None:
            raise RuntimeError("SpectrumMatcher.refine before fit")
        ratio = self._power(reals) / np.maximum(self._power(matched), 1e-12)
        self.gain = np.clip(self.gain * np.sqrt(ratio), 1 / self.limit, self.limit)
        return self

    def apply(self, fakes: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` float images with the fitted gain applied (same dtype)."""
        if self.gain is None:
            raise RuntimeError("SpectrumMatcher.apply before fit")
        channels = np.moveaxis(np.asarray(fakes, dtype=np.float64), -1, 1)
        out = np.fft.ifft2(np.fft.fft2(channels) * self.gain).real
        return np.moveaxis(out, 1, -1).astype(fakes.dtype)

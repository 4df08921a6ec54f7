"""Frank et al.'s log-scaled DCT coefficients with a linear classifier.

After J. Frank, T. Eisenhofer, L. Schönherr, A. Fischer, D. Kolossa and
T. Holz, "Leveraging Frequency Analysis for Deep Fake Image Recognition",
ICML 2020. Official code: github.com/RUB-SysSec/GANDCTAnalysis. GAN
up-sampling leaves grid-like artifacts that stand out in the 2-D discrete
cosine transform; standardised log-magnitudes of the DCT coefficients are
close to linearly separable.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from deepsift.core import distributed as dist
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.closed_form import (
    NotFittedError,
    fit_on_main,
    gathered_training_set,
    training_set_problem,
)
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: ITU-R BT.601 luma weights (PIL's ``convert("L")``, used by the reference's ``-g`` option)
LUMA = (0.299, 0.587, 0.114)

#: the reference's input: 128 x 128 crops, pixels as they are (0-255), no normalisation
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 128,
    "resize": "none",
    "crop": "center",
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
}


@functools.lru_cache(maxsize=8)
def _dct_matrix_cpu(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix


def dct_matrix(n: int, device: torch.device | None = None) -> torch.Tensor:
    """(n, n) orthonormal DCT-II matrix ``D`` (float64): ``D @ x`` is ``scipy.fft.dct(x, norm="ortho")``."""
    return _dct_matrix_cpu(n).to(device)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal type-II DCT over the last two axes (``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``).

    Computed in float64 whatever the input dtype, like the reference's
    ``scipy.fftpack``: log-magnitudes of near-zero coefficients need it.
    """
    x = x.double()
    rows = dct_matrix(x.shape[-2], x.device)
    cols = dct_matrix(x.shape[-1], x.device)
    return rows @ x @ cols.T


class FrankDCT(Detector):
    """Standardised ``log(|DCT-II| + eps)`` of each colour channel + L2 logistic regression.

    Features (torch, so on the GPU and inside the training loop): pixels back
    on their 8-bit 0-255 scale (``quantize``), an orthonormal 2-D DCT-II of each channel (or of the
    luma with ``grayscale=True``) in float64, ``log(|c| + 1e-12)``, flattened
    to ``C * H * W`` values. The standardisation (per-coefficient training mean
    and standard deviation) and the classifier are fitted in closed form after
    one pass over the training data (``training_step`` only collects features;
    :meth:`on_train_epoch_end` gathers every rank's and fits on rank 0), and live
    in buffers, so the state dict carries the whole fitted model and nothing is
    pickled. Fitted weights: ``C*H*W + 1`` (49,153 at 128 x 128 x 3, as the
    reference's binary ``log2`` model).

    Reference defaults (github.com/RUB-SysSec/GANDCTAnalysis):

    * input: 128 x 128 images (``crop_celeba.py``/``crop_lsun.py`` centre-crop
      and resize to it), read as uint8 RGB (``src/image_np.load_image``; the
      README example converts with ``-lnc``: log, normalise, colour);
    * ``src/image_np.dct2``: ``scipy.fftpack.dct(type=2, norm="ortho")`` along
      the height and then the width of each channel; ``src/math.log_scale``:
      ``log(|x| + 1e-12)``;
    * ``prepare_dataset.py --normalize``: per-coefficient mean and variance of
      the training set (Welford, population variance), ``(x - mean) / std``;
    * ``classifer.py``: the linear models ``log``/``log1``/``log2``/``log3`` (a
      ``Dense`` layer on the flattened coefficients with an L1/L2 kernel
      penalty, ``--l2 0.01``; README example ``log2``) trained with Adam (lr
      1e-3), batch 32, up to 50 epochs, early stopping on validation loss
      (patience 5); also a small CNN and a ResNet (``src/models.py``).

    Where this differs, and why:

    * the linear model is fitted in closed form (scikit-learn's L-BFGS logistic
      regression) instead of by Adam: ``C = 1 / (2 * l2 * n)`` makes its
      objective the reference's (mean cross-entropy + ``l2 * |w|^2``, bias not
      penalised), so the fit reaches the optimum the reference approaches;
    * binary real/fake only (the reference also attributes 5 sources);
    * no CNN or ResNet variant (they need the normalisation statistics before
      the first gradient step, which deepsift's single training loop lacks);
    * coefficients with zero training variance are left unscaled (the
      reference would divide by zero), and grayscale is float luma, not PIL's
      rounded 8-bit ``L``;
    * images are centre-cropped to ``preprocessing.size`` (default 128, the
      reference's; zero-padded when smaller, which adds edge energy: pick a size
      no larger than the smallest image) without resizing, which would alter the
      spectrum. ``configs/detector/frank_dct.yaml`` (``load_detector("frank_dct")``,
      ``train.py detector=frank_dct``) crops 64 px, the size of the default data
      (the embedded benchmark).

    Memory: training keeps every image's ``C*H*W`` float32 features on the CPU
    (48 KiB per image at 64 x 64 x 3, 192 KiB at 128 x 128 x 3).

    Args:
        grayscale: use the luma instead of the three colour channels.
        l2: the reference's L2 penalty on the weights (per mean sample loss).
        max_iter: L-BFGS iterations.
        input_scale: intensity range the DCT sees (the reference reads 8-bit
            images: 255); inputs are first mapped back to [0, 1] with the
            preprocessing's mean and std.
        quantize: round the rescaled pixels to integers, i.e. back onto the
            8-bit grid image files come from; this undoes the float32 rounding of
            the normalised tensor, which would otherwise perturb the logarithm of
            near-zero coefficients. Turn off for inputs that are not 8-bit.
        eps: added to the coefficients' magnitude before the logarithm.
        preprocessing: fields overriding :data:`DEFAULT_PREPROCESSING`; the
            input size must be fixed (``crop=center`` or ``resize=square``).
        optimizer, scheduler: unused (closed form), accepted for config symmetry.
    """

    epochs_needed = 1

    def __init__(
        self,
        grayscale: bool = False,
        l2: float = 0.01,
        max_iter: int = 1000,
        input_scale: float = 255.0,
        quantize: bool = True,
        eps: float = 1e-12,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        p = self.preprocessing
        if p.crop == "center":
            side = p.size
        elif p.resize == "square":
            side = int(p.resize_to)
        else:
            raise UserError(
                "FrankDCT needs images of one size: set preprocessing.crop=center "
                "(or preprocessing.resize=square)"
            )
        if l2 <= 0:
            raise UserError(f"FrankDCT l2 must be positive, not {l2}")
        self.grayscale = bool(grayscale)
        self.l2 = float(l2)
        self.max_iter = int(max_iter)
        self.input_scale = float(input_scale)
        self.quantize = bool(quantize)
        self.eps = float(eps)
        self.input_shape = (1 if self.grayscale else 3, side, side)
        n = math.prod(self.input_shape)
        self.n_features = n

        # the fitted model: everything a checkpoint needs
        self.register_buffer("scaler_mean", torch.zeros(n))
        self.register_buffer("scaler_scale", torch.ones(n))
        self.register_buffer("coef", torch.zeros(n))
        self.register_buffer("intercept", torch.zeros(1))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._train_features: list[torch.Tensor] = []
        self._train_labels: list[torch.Tensor] = []

    # -- features ----------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) -> ``log(|DCT| + eps)``, flattened (B, C*H*W), float32."""
        if tuple(images.shape[-2:]) != self.input_shape[1:]:
            raise UserError(
                f"FrankDCT was configured for {self.input_shape[1]} x {self.input_shape[2]} "
                f"images, got {images.shape[-2]} x {images.shape[-1]}; set preprocessing.size"
            )
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = images.double()
            mean = x.new_tensor(self.preprocessing.mean).view(1, -1, 1, 1)
            std = x.new_tensor(self.preprocessing.std).view(1, -1, 1, 1)
            x = (x * std + mean) * self.input_scale
            if self.quantize:
                x = torch.round(x)
            if self.grayscale:
                x = (LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]).unsqueeze(1)
            coefficients = dct2(x)
            return torch.log(coefficients.abs() + self.eps).flatten(1).float()

    # -- model -------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not bool(self.fitted):
            raise NotFittedError("FrankDCT is not fitted: train it first or load a checkpoint")
        images = batch["image"]
        features = self.features(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            standardised = (features - self.scaler_mean) / self.scaler_scale
            return {"logits": standardised @ self.coef + self.intercept}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Collect this batch's features and labels; the fit happens at epoch end."""
        with torch.no_grad():
            features = self.features(batch["image"])
        self._train_features.append(features.detach().cpu())
        self._train_labels.append(batch["label"].detach().float().cpu().reshape(-1))
        return {}

    def on_train_epoch_end(self) -> None:
        """Gather every rank's features, fit scaler + classifier on rank 0, share the fit."""
        x, y = gathered_training_set(self._train_features, self._train_labels, (0, self.n_features))
        if x.shape[0] == 0 and bool(self.fitted):
            return  # nothing new (e.g. a resumed run): keep the fit
        result = fit_on_main(self._fit, x.numpy(), y.numpy())
        for name in ("scaler_mean", "scaler_scale", "coef", "intercept"):
            value = torch.as_tensor(result[name], dtype=torch.float32)
            getattr(self, name).copy_(value.to(self.coef.device))
        self.fitted.fill_(True)
        if dist.is_main():
            log.info(
                "FrankDCT: fitted on %d images, %d coefficients (train accuracy %.4f)",
                result["n"],
                self.n_features,
                result["accuracy"],
            )

    def _fit(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Standardise and fit the logistic regression; plain arrays out, or ``{"error": ...}``."""
        from sklearn.linear_model import LogisticRegression

        problem = training_set_problem("FrankDCT", x, y)
        if problem:
            return {"error": problem}
        labels = np.rint(y).astype(np.int64)
        mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)  # population std, as the reference's Welford
        scale = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        z = ((x - mean) / scale).astype(np.float32)
        model = LogisticRegression(
            C=1.0 / (2.0 * self.l2 * x.shape[0]), solver="lbfgs", max_iter=self.max_iter
        )
        model.fit(z, labels)
        return {
            "scaler_mean": mean,
            "scaler_scale": scale,
            "coef": model.coef_.reshape(-1),
            "intercept": np.asarray(model.intercept_).reshape(1),
            "n": int(x.shape[0]),
            "accuracy": float(model.score(z, labels)),
        }

"""ClipBased: a linear classifier on frozen CLIP ViT-L/14 features, fitted in closed form.

After D. Cozzolino, G. Poggi, R. Corvi, M. Nießner and L. Verdoliva, "Raising
the Bar of AI-generated Image Detection with CLIP", CVPR Workshops 2024.
Official code and weights: github.com/grip-unina/ClipBased-SyntheticImageDetection
(inference only; ``weights/clipdet_latent10k_plus/weights.pth``). CLIP
features of a handful of real/synthetic pairs from one generator train a linear
SVM that generalises to other generators and survives laundering.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepsift.core import distributed as dist
from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.layers.clip import CLIP_MEAN, CLIP_STD, ClipLinearProbe
from detectors.layers.closed_form import (
    NotFittedError,
    fit_on_main,
    gathered_training_set,
    linear_classifier,
    training_set_problem,
)
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

CLASSIFIERS = ("svm", "logistic")

#: ``main.py`` with ``patch_size: Clip224``: ``Resize(224, BICUBIC)`` (shorter side),
#: ``CenterCrop(224)``, CLIP ``Normalize`` (``norm_type: clip``); also for training
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "shorter",
    "resize_to": 224,
    "interpolation": "bicubic",
    "crop": "center",
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
}

#: what ``main.py`` feeds the network for ``patch_size: Clip224``, the protocol of the
#: released ``weights.pth`` files (verified against the authors' code in
#: tests/official/clipbased_clipdet_latent10k_plus.json)
OFFICIAL_TEST_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "shorter",
    "resize_to": 224,
    "interpolation": "bicubic",
    "resize_backend": "pil",
    "crop": "center",
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
}


class ClipBased(ClipLinearProbe):
    """L2-normalised CLIP ViT-L/14 features before the projection (1024-d) + a linear classifier.

    Reference (github.com/grip-unina/ClipBased-SyntheticImageDetection):

    * model (``networks/openclipnet.py``, ``networks/__init__.py``, the released
      ``clipdet_latent10k_plus/config.yaml``: ``arch:
      opencliplinearnext_clipL14commonpool``): open_clip ``ViT-L-14`` with the
      ``laion/CLIP-ViT-L-14-CommonPool.XL-s13B-b90K`` weights
      (``open_clip_pytorch_model.bin``, GELU); ``next_to_last=True`` sets
      ``visual.proj = None``, so the feature is the 1024-d class token after
      ``ln_post`` (the "next-to-last" layer, before the 768-d projection);
      ``encode_image(x, normalize=True)`` L2-normalises it; the head is
      ``ChannelLinear(1024, 1)`` (a plain ``nn.Linear`` on (B, 1024)), keys
      ``fc.weight`` (1, 1024), ``fc.bias`` (1,);
    * test (``main.py``): ``Resize(224, bicubic)`` of the shorter side,
      ``CenterCrop(224)``, CLIP normalisation; the logit is the score;
    * training: not released. The paper fits a linear SVM on the features of
      few (e.g. 1000 pairs of) real and synthetic images of one generator.

    Here the head is fitted in closed form, as :class:`~detectors.durall_spectrum.DurallSpectrum`:
    :meth:`training_step` collects features, :meth:`on_train_epoch_end` fits
    scikit-learn's ``LinearSVC`` (hinge loss, default) or ``LogisticRegression``
    on all ranks' features and writes the hyperplane into ``fc`` (optionally with
    a ``StandardScaler`` folded into it, off by default: the features are already
    unit-norm), so a fitted detector and the official weights are the same
    ``Linear(1024, 1)``. SVM logits are uncalibrated margins (so are the
    official ones). ``C`` is not stated in the reference: 1.0 by default.

    :meth:`load_weights` loads the official ``weights.pth`` (``fc.weight``,
    ``fc.bias``; a ``{'model': ...}`` wrapper and ``module.`` prefixes are
    handled) strictly, and keeps (or, where a user changed it, warns about)
    ``main.py``'s ``Clip224`` input; its CLIP encoder goes in ``backbone_file``
    (``quick_gelu=false`` for the LAION/CommonPool weights). With
    ``open_clip_pytorch_model.bin`` as ``backbone_file`` the outputs match the
    authors' ``main.py`` within 1e-7 in logit, float32
    (``tests/official/clipbased_clipdet_latent10k_plus.json``, seeded weights).

    Args:
        classifier: ``"svm"`` (``LinearSVC``) or ``"logistic"``.
        C, max_iter, random_state: of the classifier.
        standardize: fit on standardised features (folded into ``fc``).
        others: see :class:`~detectors.layers.clip.ClipLinearProbe`;
            ``optimizer``/``scheduler`` are unused (closed form).
    """

    epochs_needed = 1

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "commonpool_xl_s13b_b90k",
        backbone_file: str | None = None,
        random_init: bool = False,
        quick_gelu: bool = False,
        vision_cfg: Mapping[str, Any] | None = None,
        embed_dim: int | None = None,
        seed: int = 0,
        classifier: str = "svm",
        C: float = 1.0,
        max_iter: int = 10000,
        random_state: int = 0,
        standardize: bool = False,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(
            model_name=model_name,
            pretrained=pretrained,
            backbone_file=backbone_file,
            random_init=random_init,
            quick_gelu=quick_gelu,
            vision_cfg=vision_cfg,
            embed_dim=embed_dim,
            features="next_to_last",
            normalize_features=True,
            seed=seed,
            preprocessing=merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing),
            optimizer=optimizer,
            scheduler=scheduler,
        )
        if classifier not in CLASSIFIERS:
            raise UserError(
                f"ClipBased classifier must be one of {', '.join(CLASSIFIERS)}, not {classifier!r}"
            )
        self.classifier = classifier
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.random_state = int(random_state)
        self.standardize = bool(standardize)
        self.fc = nn.Linear(self.feature_dim, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.fc.requires_grad_(False)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._train_features: list[torch.Tensor] = []
        self._train_labels: list[torch.Tensor] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not bool(self.fitted):
            raise NotFittedError(
                "ClipBased is not fitted: train it, load a checkpoint or pass "
                "detector.weights=/path/to/weights.pth (official head)"
            )
        return super().forward(batch)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Collect this batch's features and labels; the fit happens at epoch end."""
        features = self.features(batch["image"])
        self._train_features.append(features.detach().cpu())
        self._train_labels.append(batch["label"].detach().float().cpu().reshape(-1))
        return {}

    def on_train_epoch_end(self) -> None:
        """Gather every rank's features, fit on rank 0, share the hyperplane."""
        x, y = gathered_training_set(
            self._train_features, self._train_labels, (0, self.feature_dim)
        )
        if x.shape[0] == 0 and bool(self.fitted):
            return  # nothing new (e.g. a resumed run): keep the fit
        result = fit_on_main(self._fit, x.double().numpy(), y.numpy())
        with torch.no_grad():
            self.fc.weight.copy_(torch.as_tensor(result["weight"], dtype=torch.float32).view(1, -1))
            self.fc.bias.copy_(torch.as_tensor(result["bias"], dtype=torch.float32).view(1))
        self.fitted.fill_(True)
        if dist.is_main():
            log.info(
                "ClipBased: fitted %s on %d images (train accuracy %.4f)",
                self.classifier,
                result["n"],
                result["accuracy"],
            )

    def _fit(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """The classifier's hyperplane in feature space, or ``{"error": ...}``."""
        problem = training_set_problem("ClipBased", x, y)
        if problem:
            return {"error": problem}
        labels = np.rint(y).astype(np.int64)
        mean = x.mean(axis=0) if self.standardize else np.zeros(x.shape[1])
        scale = x.std(axis=0) if self.standardize else np.ones(x.shape[1])
        scale = np.where(scale < 1e-12, 1.0, scale)
        z = (x - mean) / scale
        model = linear_classifier(self.classifier, self.C, self.max_iter, self.random_state)
        model.fit(z, labels)
        coef = model.coef_.reshape(-1) / scale
        bias = float(np.asarray(model.intercept_).reshape(-1)[0] - (coef * mean).sum())
        return {
            "weight": coef,
            "bias": bias,
            "n": int(x.shape[0]),
            "accuracy": float(model.score(z, labels)),
        }

    def load_weights(self, path: str | Path) -> None:
        """The official head (``fc.weight`` (1, 1024), ``fc.bias``) or this detector's state dict."""
        state = strip_prefixes(read_state_dict(path), ("module.", "model."))
        if set(state) == {"fc.weight", "fc.bias", "fitted"}:
            load_state_dict_strict(self, state, f"weights file {path}")
            return
        state = strip_prefixes(state, ("fc.",))
        if set(state) != {"weight", "bias"}:
            shown = ", ".join(sorted(state)[:6]) + (" ..." if len(state) > 6 else "")
            raise UserError(
                f"weights file {path} is not a ClipBased head: expected fc.weight (1, "
                f"{self.feature_dim}) and fc.bias (1,) as in weights.pth, found {shown or 'none'}; "
                f"the CLIP encoder's weights go in detector.backbone_file"
            )
        load_state_dict_strict(self.fc, state, f"weights file {path}")
        self.fitted.fill_(True)
        log.info("ClipBased: loaded head %s", path)
        self.use_protocol(
            "ClipBased weights.pth", OFFICIAL_TEST_PREPROCESSING, DEFAULT_PREPROCESSING
        )

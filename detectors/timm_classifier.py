"""A timm backbone with one output logit: the generic CNN baseline.

The CNNSpot recipe of Wang et al., "CNN-generated images are surprisingly easy
to spot... for now", CVPR 2020, is exactly this model with ``backbone=resnet50``
and ImageNet weights: a ResNet-50 whose classifier is replaced by one logit,
trained with binary cross-entropy and Adam (lr 1e-4, betas 0.9/0.999) on random
224 px crops with flips and blur/JPEG augmentation.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

#: CNNSpot's test-time input (a 224 px centre crop, no resize, ImageNet normalisation)
#: and, in training, CNNDetection's horizontal flip of half the images; its blur and
#: JPEG augmentation stay off (``blur_prob``, ``jpeg_prob``)
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "resize": "none",
    "crop": "center",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "hflip": 0.5,
}


def _unknown_backbone(backbone: str) -> UserError:
    import timm

    close = difflib.get_close_matches(backbone, timm.list_models(), n=3)
    suggestion = f" (did you mean {', '.join(close)}?)" if close else ""
    return UserError(
        f"unknown timm backbone {backbone!r}{suggestion}; list valid names with "
        f"python -c \"import timm; print(timm.list_models('resnet*'))\""
    )


def _unknown_tag(backbone: str) -> UserError:
    arch = backbone.split(".", 1)[0]
    return UserError(
        f"timm has no pretrained tag {backbone!r}; list valid names with "
        f"python -c \"import timm; print(timm.list_pretrained('{arch}*'))\""
    )


def _find_cached_weights(backbone: str) -> Path | None:
    """The ImageNet weights timm would load for ``backbone`` if already downloaded.

    Looks in the Hugging Face cache (``hf_hub_id`` models) and torch.hub's
    checkpoint folder (``url`` models); ``None`` when not cached.
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            return None
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
        for name in names:
            found = try_to_load_from_cache(repo_id, name, revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if cfg.url:
        path = (
            Path(torch.hub.get_dir())
            / "checkpoints"
            / Path(urllib.parse.urlparse(cfg.url).path).name
        )
        if path.is_file():
            return path
    return None


def _check_all_loaded(model: nn.Module, weights: Path, backbone: str) -> None:
    """timm loads ImageNet weights non-strictly (the classifier is dropped), so a file
    of another layout would load nothing silently: insist every backbone tensor was there."""
    from timm.models import load_state_dict

    state = load_state_dict(str(weights))
    classifier = model.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    missing = [
        key
        for key in model.state_dict()
        if key not in state
        and not key.endswith("num_batches_tracked")
        and not any(key.startswith(f"{head}.") for head in heads)
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        )
        raise UserError(
            f"weights file {weights} does not fit timm backbone {backbone}: it lacks {shown}; "
            f"pass a state dict of this architecture or set detector.pretrained=false"
        )


def _verify_cached(path: Path, digest: str, backbone: str) -> None:
    """Check a cached download against the hash its cache records.

    The Hugging Face cache names each blob after the file's SHA-256 (LFS files);
    torch.hub checkpoint names carry a SHA-256 prefix (``name-<hex>.pth``).
    """
    blob = path.resolve().name
    expected = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None
    prefix = re.search(r"-([0-9a-f]{8,64})\.", path.name)
    if (expected and digest != expected) or (
        expected is None and prefix and not digest.startswith(prefix.group(1))
    ):
        raise UserError(
            f"cached ImageNet weights {path} for {backbone} are corrupt (sha256 {digest}, "
            f"expected {expected or prefix.group(1) + '...'}); delete the file and retry, or pass "
            f"detector.pretrained_file=/path/to/{backbone}.safetensors"
        )


def _weights_source(backbone: str) -> tuple[str, str]:
    """(description, host) of where timm would download ``backbone``'s weights from."""
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(
            f"timm has no pretrained weights for {backbone}; pass detector.pretrained_file="
            f"/path/to/{backbone}.safetensors (or .pth) or set detector.pretrained=false"
        )
    if cfg.hf_hub_id:
        return "the Hugging Face hub", "huggingface.co"
    return urllib.parse.urlparse(cfg.url).netloc, urllib.parse.urlparse(cfg.url).hostname or ""


def create_backbone(
    backbone: str,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """``timm.create_model(backbone, num_classes=1)`` that fails in one clear line.

    ``pretrained=True`` uses ``pretrained_file`` when given, then weights already
    in the Hugging Face / torch.hub cache, then a download, which is attempted
    only after a quick reachability check (offline it fails within seconds
    instead of running through huggingface_hub's retries).
    """
    import timm

    from deepsift.core.hub import hf_offline, hub_reachable, sha256_file

    if backbone.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise UserError(
            f"backbone {backbone!r} is loaded from outside timm's registry; use a timm "
            f"architecture name (e.g. resnet50) with detector.pretrained_file=/path/to/weights"
        )
    if not timm.is_model(backbone):
        raise _unknown_backbone(backbone)
    try:
        timm.models.get_pretrained_cfg(backbone)
    except RuntimeError:  # a known architecture with an unknown pretrained tag
        raise _unknown_tag(backbone) from None

    kwargs: dict[str, Any] = {"num_classes": 1, "drop_rate": drop_rate}
    weights: Path | None = None
    user_file = Path(pretrained_file).expanduser() if pretrained_file else None
    if user_file is not None and not pretrained:
        log.warning("detector.pretrained_file=%s is ignored: detector.pretrained=false", user_file)
    if pretrained:
        if user_file is not None:
            weights = user_file
            if not weights.is_file():
                raise UserError(
                    f"detector.pretrained_file {weights} does not exist; pass the path of "
                    f"{backbone}'s ImageNet weights (.safetensors or .pth) or set "
                    f"detector.pretrained=false"
                )
        else:
            weights = _find_cached_weights(backbone)
            if weights is None:
                where, host = _weights_source(backbone)
                if hf_offline() or not hub_reachable(host):
                    raise UserError(
                        f"pretrained=true needs ImageNet weights for {backbone} from {where}, "
                        f"which cannot be reached; pass detector.pretrained_file=/path/to/"
                        f"{backbone}.safetensors (or .pth) or set detector.pretrained=false"
                    )
        if weights is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}

    try:
        model = timm.create_model(backbone, pretrained=pretrained, **kwargs)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if weights is not None:
            raise UserError(
                f"weights file {weights} does not fit timm backbone {backbone} ({first}); pass "
                f"the weights of this architecture or set detector.pretrained=false"
            ) from None
        if isinstance(exc, RuntimeError) and "Unknown model" in first:
            raise _unknown_backbone(backbone) from None
        raise
    if weights is not None:
        _check_all_loaded(model, weights, backbone)

    if pretrained:
        used = weights or _find_cached_weights(backbone)
        if used is None:  # an unusual cache layout
            log.info("%s ImageNet weights loaded by timm", backbone)
        else:
            digest = sha256_file(used)
            if used != user_file:
                _verify_cached(used, digest, backbone)
            log.info("%s ImageNet weights: %s (sha256 %s)", backbone, used, digest)
    return model


class TimmClassifier(Detector):
    """Any timm backbone with one logit: a generic fake-image baseline.

    With ``backbone="resnet50"`` and ``pretrained=True`` this is the CNNSpot
    model of Wang et al. (CVPR 2020): an ImageNet ResNet-50 whose classifier is
    a single logit.

    Defaults: :data:`DEFAULT_PREPROCESSING` (a 224 px centre crop, ImageNet
    mean/std normalisation, a horizontal flip of half the training images, as
    CNNSpot), binary cross-entropy on the logit (:meth:`Detector.training_step`),
    and Adam with lr 1e-4 and betas (0.9, 0.999) as in CNNSpot when no
    ``optimizer`` is given. The shipped config
    (``configs/detector/timm_classifier.yaml``) differs on purpose, for the
    embedded benchmark: 64 px crops and AdamW (lr 1e-3, weight decay 1e-4).

    Where it differs from CNNSpot: the default backbone is ResNet-18 with
    random initialisation so that it trains offline on a CPU; there is no
    reduce-on-plateau learning-rate schedule unless ``scheduler`` gives one;
    test-time preprocessing centre-crops to ``preprocessing.size`` where the
    reference scores uncropped images.

    Args:
        backbone: a timm model name (``timm.list_models('resnet*')`` lists them);
            a pretrained tag (``resnet50.a1_in1k``) picks specific weights.
        pretrained: start from ImageNet weights. They come from
            ``pretrained_file`` when given, else from the Hugging Face (or
            torch.hub) cache, else timm downloads them through huggingface_hub,
            which checks the download's size. A cached or downloaded file's
            SHA-256 is then checked against the hash the cache names it by
            (the hub's content hash) and logged, as is the SHA-256 of a
            ``pretrained_file``. Offline, with the weights not cached,
            construction fails within seconds with a
            :class:`~deepsift.core.errors.UserError` saying what to pass instead.
        pretrained_file: a local ``.safetensors``/``.pth`` state dict of the
            backbone (its ImageNet classifier is dropped).
        drop_rate: dropout before the classifier.
        preprocessing: a :class:`Preprocessing`, or fields overriding
            :data:`DEFAULT_PREPROCESSING`.
        optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        drop_rate: float = 0.0,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.9, 0.999))
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        self.backbone_name = backbone
        self.model = create_backbone(backbone, pretrained, pretrained_file, drop_rate)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.model(batch["image"]).squeeze(1)}

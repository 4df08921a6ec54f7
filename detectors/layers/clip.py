"""A frozen CLIP image encoder (open_clip), built offline, with weights from a local file.

Shared by the CLIP linear-probe detectors (:mod:`detectors.univfd`,
:mod:`detectors.clipbased`). The encoder's architecture comes from
``open_clip`` (PyPI ``open_clip_torch``) and is always built with
``pretrained=None``, so nothing is downloaded to build it; its weights come from

1. ``backbone_file``: a local file the user passes, in any of the published
   layouts: OpenAI's TorchScript archive (``ViT-L-14.pt``), an open_clip state
   dict (``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors``,
   keys ``visual.*`` next to the text tower's) or a state dict of the visual
   tower alone. Only the ``visual.*`` tensors are kept and they load strictly.
   The file's SHA-256 is logged (no published digest is checked here);
2. otherwise, when the Hugging Face hub answers within seconds, open_clip's own
   download of the ``pretrained`` tag;
3. offline with no file: a one-line :class:`~deepsift.core.errors.UserError` naming
   ``detector.backbone_file=...``, within seconds;
4. ``random_init=True``: random weights (seeded). **Useless for detection**:
   for tests and speed benchmarks only; a warning says so.

The encoder is resolved lazily, on first use (:meth:`ClipLinearProbe.backbone`),
so a detector config builds in milliseconds, offline, without a 1.2 GB
allocation; :meth:`ClipLinearProbe.load_backbone` resolves it eagerly. It is
frozen and kept out of the module tree (like the references' ``self.bb =
[backbone]``): ``parameters()`` and ``state_dict()`` hold only the linear head,
so optimisers see the head alone and checkpoints stay a few kilobytes, like the
official head files. A checkpoint therefore needs the same ``backbone_file``
(its path is in the stored config) to be rebuilt.
"""

from __future__ import annotations

import copy
import logging
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.preprocessing import Preprocessing

log = logging.getLogger(__name__)

#: OpenAI CLIP's normalisation (also open_clip's ``OPENAI_DATASET_MEAN/STD``)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FEATURES = ("projected", "next_to_last")


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise UserError("CLIP detectors need open_clip: pip install open_clip_torch") from None
    return open_clip


def vision_config(
    model_name: str, vision_cfg: Mapping[str, Any] | None = None, embed_dim: int | None = None
) -> tuple[int, dict[str, Any]]:
    """(embed_dim, vision_cfg) of open_clip model ``model_name``, with overrides."""
    open_clip = _open_clip()
    config = open_clip.get_model_config(model_name)
    if config is None:
        known = ", ".join(m for m in open_clip.list_models() if m.startswith("ViT-"))
        raise UserError(f"unknown open_clip model {model_name!r}; ViT names: {known}")
    cfg = {**config["vision_cfg"], **dict(vision_cfg or {})}
    return int(embed_dim if embed_dim is not None else config["embed_dim"]), cfg


def build_visual(
    model_name: str = "ViT-L-14",
    quick_gelu: bool = True,
    vision_cfg: Mapping[str, Any] | None = None,
    embed_dim: int | None = None,
) -> nn.Module:
    """open_clip's ``VisionTransformer`` for ``model_name``, randomly initialised.

    Works under ``with torch.device("meta"):`` (no memory), e.g. to count parameters.
    """
    from open_clip.model import _build_vision_tower

    dim, cfg = vision_config(model_name, vision_cfg, embed_dim)
    return _build_vision_tower(dim, cfg, quick_gelu=quick_gelu)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_visual_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The image-encoder tensors of a CLIP weights file (see the module docstring).

    OpenAI's ``.pt`` files are TorchScript archives: they are opened with
    ``torch.jit.load`` (TorchScript, not arbitrary pickled Python) and only their
    tensors are kept. Everything else goes through ``torch.load(weights_only=True)``
    or safetensors.
    """
    from deepsift.core.checkpoint import read_state_dict

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"detector.backbone_file {path} does not exist; pass a CLIP weights file "
            f"(OpenAI ViT-L-14.pt or open_clip_pytorch_model.bin / .safetensors)"
        )
    if path.suffix != ".safetensors" and _is_torchscript(path):
        try:
            state: dict[str, Any] = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:
            raise UserError(
                f"detector.backbone_file {path} looks like a TorchScript CLIP archive but cannot "
                f"be opened ({type(exc).__name__}); download it again"
            ) from None
    else:
        state = read_state_dict(path)
    visual = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        visual = dict(state)  # a state dict of the image encoder alone
    return {k: v for k, v in visual.items() if torch.is_tensor(v)}


def load_visual(
    model_name: str = "ViT-L-14",
    pretrained: str | None = None,
    backbone_file: str | None = None,
    random_init: bool = False,
    quick_gelu: bool = True,
    vision_cfg: Mapping[str, Any] | None = None,
    embed_dim: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """The frozen, eval-mode CLIP image encoder (see the module docstring for the order)."""
    from deepsift.core.checkpoint import load_state_dict_strict
    from deepsift.core.hub import hub_reachable, sha256_file

    hint = f"detector.backbone_file=/path/to/{model_name}.pt (or open_clip_pytorch_model.bin)"
    if backbone_file:
        visual = build_visual(model_name, quick_gelu, vision_cfg, embed_dim)
        state = read_visual_state_dict(backbone_file)
        load_state_dict_strict(visual, state, f"detector.backbone_file {backbone_file}")
        log.info(
            "CLIP %s image encoder: %s (sha256 %s)",
            model_name,
            backbone_file,
            sha256_file(Path(backbone_file).expanduser()),
        )
    elif random_init:
        log.warning(
            "CLIP %s image encoder with RANDOM weights (random_init=true): useless for "
            "detection, for tests and benchmarks only; pass %s",
            model_name,
            hint,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            visual = build_visual(model_name, quick_gelu, vision_cfg, embed_dim)
    else:
        if not pretrained:
            raise UserError(f"no CLIP image-encoder weights configured; pass {hint}")
        if not hub_reachable():
            raise UserError(
                f"CLIP {model_name} weights ({pretrained}) cannot be downloaded offline; pass {hint}"
            )
        open_clip = _open_clip()
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(
                f"could not fetch CLIP {model_name} weights {pretrained!r} ({first}); pass {hint}"
            ) from None
        visual = model.visual
        log.info("CLIP %s image encoder: open_clip pretrained=%s", model_name, pretrained)
    visual.eval()
    visual.requires_grad_(False)
    return visual


class ClipLinearProbe(Detector):
    """A frozen CLIP image encoder and a linear head ``fc`` (features -> 1 logit).

    Subclasses pick the feature (``features="projected"``: the image embedding,
    ``encode_image``; ``"next_to_last"``: the pooled, ``ln_post``-normalised
    token before the projection) and how ``fc`` is fitted.

    Args:
        model_name: open_clip architecture (``ViT-L-14``; ``ViT-B-32`` or a small
            ``vision_cfg`` for tests).
        pretrained: open_clip pretrained tag downloaded when online and no
            ``backbone_file`` is given.
        backbone_file: local CLIP weights (see the module docstring).
        random_init: random encoder weights: tests/benchmarks only.
        quick_gelu: QuickGELU activations (OpenAI's weights) or GELU (LAION/CommonPool).
        vision_cfg: open_clip ``CLIPVisionCfg`` fields overriding the model's.
        embed_dim: projection width overriding the model's.
        features: ``"projected"`` or ``"next_to_last"``.
        normalize_features: L2-normalise features before the head.
        seed: seed of ``random_init``'s weights (a rebuilt checkpoint gets the same).
        preprocessing, optimizer, scheduler: see :class:`Detector`.
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        backbone_file: str | None = None,
        random_init: bool = False,
        quick_gelu: bool = True,
        vision_cfg: Mapping[str, Any] | None = None,
        embed_dim: int | None = None,
        features: str = "projected",
        normalize_features: bool = False,
        seed: int = 0,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(preprocessing, optimizer, scheduler)
        if features not in FEATURES:
            raise UserError(f"features must be one of {', '.join(FEATURES)}, not {features!r}")
        dim, cfg = vision_config(model_name, vision_cfg, embed_dim)
        self.model_name = model_name
        self.features_kind = features
        self.normalize_features = bool(normalize_features)
        self.feature_dim = int(cfg["width"]) if features == "next_to_last" else dim
        self._backbone_args = {
            "model_name": model_name,
            "pretrained": pretrained,
            "backbone_file": backbone_file,
            "random_init": bool(random_init),
            "quick_gelu": bool(quick_gelu),
            "vision_cfg": copy.deepcopy(dict(vision_cfg or {})),
            "embed_dim": embed_dim,
            "seed": int(seed),
        }
        # a list keeps the frozen encoder out of parameters() and state_dict()
        self._backbone: list[nn.Module] = []

    # -- backbone ----------------------------------------------------------------
    def load_backbone(self) -> nn.Module:
        """Resolve the image encoder now (otherwise done on first use)."""
        if not self._backbone:
            visual = load_visual(**self._backbone_args)
            if self.features_kind == "next_to_last":
                visual.proj = None
            self._backbone.append(visual)
        return self._backbone[0]

    @property
    def backbone(self) -> nn.Module:
        return self.load_backbone()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, 224, 224) -> frozen CLIP features (B, feature_dim), float32."""
        visual = self.backbone
        reference = next(visual.parameters())
        if reference.device != images.device:
            visual.to(images.device)
        visual.eval()
        with torch.no_grad():
            out = visual(images).float()
        if self.normalize_features:
            out = F.normalize(out, dim=-1)
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.features(batch["image"])
        with torch.autocast(device_type=x.device.type, enabled=False):
            return {"logits": self.fc(x).squeeze(1)}

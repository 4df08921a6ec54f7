"""Effort: CLIP ViT-L/14 fine-tuned only in the minor singular directions of its attention.

After Z. Yan, J. Wang, Z. Wang, P. Jin, K.-Y. Zhang, S. Chen, T. Yao, S. Ding, B. Wu and
L. Yuan, "Orthogonal Subspace Decomposition for Generalizable AI-Generated Image
Detection", ICML 2025 (arXiv 2411.15633; "Effort"). Reference code: DeepfakeBench
(github.com/SCLBD/DeepfakeBench, commit ``8a4a7bf5e966c5c5618bc27d1719c3683eae9a04``,
``training/detectors/effort_detector.py``, ``training/config/detector/effort.yaml``) and the
authors' repository (github.com/YZY-stack/Effort-AIGI-Detection, commit
``96f5dea2b534d400cfd7003f053c7e93c8e16461``, ``DeepfakeBench/training/detectors/
effort_detector.py``, ``demo.py``; ``UniversalFakeDetect_Benchmark/``).

Every ``nn.Linear`` inside a ``self_attn`` block of the image tower (``q_proj``,
``k_proj``, ``v_proj``, ``out_proj`` of the 24 layers: 96 matrices of 1024 x 1024) is
split by SVD, ``W = U diag(S) V^T``: the top ``r = 1023`` singular triplets make a frozen
``weight_main``, the remaining one (``U_residual`` (1024, 1), ``S_residual`` (1,),
``V_residual`` (1, 1024)) trains; the layer computes ``x (weight_main + U_residual
diag(S_residual) V_residual)^T + bias``. Everything else of CLIP is frozen; the
``pooler_output`` (``post_layernorm`` of the CLS token, 1024-d, no projection) feeds
``head = nn.Linear(1024, 2)``.

Reference defaults:

* model: Hugging Face ``CLIPModel.from_pretrained('openai/clip-vit-large-patch14')``'s
  ``vision_model`` (ViT-L/14, 224 px, QuickGELU), SVD with ``r = 1024 - 1`` on the
  ``self_attn`` linears only (:func:`apply_svd_residual_to_self_attn`); trainable: the
  residual triplets (196,704 parameters) and the head (2,050);
* loss: cross-entropy on the two classes (``get_losses``). The orthogonality loss
  ``0.5 ||[U_r U_res][U_r U_res]^T - I||_F + 0.5 ||[V_r; V_res][V_r; V_res]^T - I||_F``
  and the singular-value (norm-keeping) loss ``| ||W||_F^2 - ||W_0||_F^2 |``, averaged
  over the 96 layers with weight 1.0, are in the authors' code but commented out of
  ``get_losses`` in both repositories: the released training is plain cross-entropy;
* optimiser (``effort.yaml``): Adam lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay
  5e-4, no schedule, 10 epochs, batch 32, 8 frames per video, FF++ c23;
* input: 224 x 224 face crops (DeepfakeBench's ``load_rgb``: ``cv2.resize`` to 224,
  ``INTER_CUBIC``), CLIP normalisation; training augmentation flip 0.5, rotate +-10 0.5,
  Gaussian blur (3-7) 0.5, brightness/contrast +-0.1 0.5, JPEG 40-100;
  ``demo.py`` resizes with ``INTER_LINEAR`` instead (the test protocol here is
  ``test.py``'s);
* weights: ``torch.save(model.state_dict())`` of ``EffortDetector``: ``backbone.*``
  (Hugging Face CLIP vision names; the attention linears as ``weight_main``, ``bias``,
  ``S_residual``, ``U_residual``, ``V_residual``) and ``head.weight`` (2, 1024),
  ``head.bias``. The authors' repository's copy of the detector also keeps the frozen
  principal factors as parameters (``U_r`` (1024, 1023), ``S_r``, ``V_r``), so its files
  hold those keys too; both layouts load strictly (``formats.py``). ``demo.py`` loads the
  released files with ``strict=False`` after removing ``module.``: which of the two
  layouts they use could not be confirmed offline (the files are on Google Drive).

Where deepsift differs, and why:

* the tower is transformers' ``CLIPVisionModel`` (as in the references), not open_clip:
  the official files hold Hugging Face names and separate ``q/k/v_proj`` matrices, each
  decomposed on its own; open_clip fuses them into one ``in_proj_weight``, so its SVDs
  would not be the reference's. CLIP's weights come from a local file,
  ``detector.backbone_file`` (``openai/clip-vit-large-patch14``'s ``model.safetensors`` or
  ``pytorch_model.bin``, or its folder), only when ``pretrained=true`` and only on first use
  (the first forward or the optimiser's creation), so an official Effort file loads
  without it; offline with no file the first use fails in one line naming the option.
  No checksum is published for that file; its SHA-256 is logged;
* one fake logit ``z1 - z0`` of the two-class head (the same probability as the
  reference's softmax; the head stays 2-class, so the state dict is the reference's),
  trained with binary cross-entropy, which on ``z1 - z0`` is the two-class cross-entropy;
* the regularisers are available (``reg_weight``; 0 = the released training) and use the
  principal factors: those of the file when it has them, otherwise computed once from
  ``weight_main`` by SVD (the loss is invariant to their sign); the norm it keeps is that of
  the weight at decomposition time, or at ``load_weights`` for a loaded file (the
  reference keeps the pretrained CLIP norm, which it never saves);
* ``embeddings.position_ids`` (a constant ``arange`` that transformers < 4.31 saved) is
  dropped from files that have it;
* augmentation: flip, blur and JPEG of deepsift's preprocessing, not the rotation and
  colour jitter (as for the other DeepfakeBench detectors).

Parity: the reference's ``EffortDetector`` (both copies), ``torch.load`` and
``DeepfakeAbstractBaseDataset.load_rgb`` run on seeded weights in each layout
(``tests/official/make_effort.py``, ``effort_dfb.json``, ``effort_authors.json``: a tower of
width 1024, 2 layers): max |dlogit| 6.0e-7; once at full size (``--full``, DeepfakeBench's
layout, 303,376,480 tower parameters of which 196,704 tunable, as its own count prints):
9.4e-7, float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import DEEPFAKEBENCH_ADAM, Detector
from detectors.layers.clip import CLIP_MEAN, CLIP_STD
from detectors.layers.hf_files import read_hf_clip_vision
from detectors.preprocessing import (
    DEEPFAKEBENCH_FACE_PREPROCESSING,
    Preprocessing,
    merge_preprocessing,
)

log = logging.getLogger(__name__)

#: ``effort.yaml`` / ``test.py``: 224 px face crops (``cv2.resize`` ``INTER_CUBIC``), CLIP
#: normalisation; flip, blur and JPEG of DeepfakeBench's augmentation
DEFAULT_PREPROCESSING: dict[str, Any] = {
    **DEEPFAKEBENCH_FACE_PREPROCESSING,
    "size": 224,
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
    "hflip": 0.5,
    "blur_prob": 0.5,
    "blur_sigma": (0.8, 1.4),
    "jpeg_prob": 0.5,
    "jpeg_quality": (40, 100),
}

#: DeepfakeBench's test-time input of an Effort file (``load_rgb`` at ``resolution: 224``)
DEEPFAKEBENCH_PROTOCOL: dict[str, Any] = {
    **DEEPFAKEBENCH_FACE_PREPROCESSING,
    "size": 224,
    "resize_to": 224,
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
}

#: ``openai/clip-vit-large-patch14``'s vision tower
VIT_L14: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

BACKBONE_HINT = (
    "pass detector.backbone_file=/path/to/clip-vit-large-patch14/model.safetensors "
    "(Hugging Face openai/clip-vit-large-patch14) or set detector.pretrained=false"
)

RESIDUAL = ("U_residual", "S_residual", "V_residual")
PRINCIPAL = ("U_r", "S_r", "V_r")


class SVDResidualLinear(nn.Module):
    """A linear layer ``W = weight_main + U_residual diag(S_residual) V_residual`` (Effort).

    ``weight_main`` (the top singular triplets of the original weight) and ``bias`` are
    frozen; the ``residual_rank`` smallest triplets train. With ``principal_factors`` the
    frozen top factors are parameters too (``U_r``, ``S_r``, ``V_r``: the authors' layout).
    Built with zeros; :meth:`absorb` holds a weight undecomposed (``weight_main = W``, a
    zero residual: the same function), :meth:`decompose` splits it, in place.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        residual_rank: int = 1,
        bias: bool = True,
        principal_factors: bool = False,
    ) -> None:
        super().__init__()
        rank = min(in_features, out_features)
        if not 0 < residual_rank < rank:
            raise UserError(
                f"detector.residual_rank={residual_rank} must be between 1 and {rank - 1} "
                f"(the rank of a {out_features} x {in_features} attention weight, less one)"
            )
        self.in_features, self.out_features = in_features, out_features
        self.residual_rank = residual_rank
        frozen = lambda *shape: nn.Parameter(torch.zeros(*shape), requires_grad=False)  # noqa: E731
        self.weight_main = frozen(out_features, in_features)
        self.bias = frozen(out_features) if bias else None
        self.U_residual = nn.Parameter(torch.zeros(out_features, residual_rank))
        self.S_residual = nn.Parameter(torch.zeros(residual_rank))
        self.V_residual = nn.Parameter(torch.zeros(residual_rank, in_features))
        self.principal_factors = False
        self.set_principal_factors(principal_factors)
        #: ``||W_0||_F`` kept by the singular-value loss (set by decompose / load)
        self.register_buffer("original_norm", torch.zeros(()), persistent=False)
        self._principal_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_principal_factors(self, enabled: bool) -> None:
        """Hold the frozen ``U_r``, ``S_r``, ``V_r`` as parameters (the authors' layout) or not."""
        kept = min(self.in_features, self.out_features) - self.residual_rank
        device = self.weight_main.device
        for name, shape in zip(
            PRINCIPAL, ((self.out_features, kept), (kept,), (kept, self.in_features)), strict=True
        ):
            if enabled and name not in self._parameters:
                tensor = torch.zeros(shape, device=device)
                self.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
            elif not enabled and name in self._parameters:
                del self._parameters[name]
        self.principal_factors = enabled

    @torch.no_grad()
    def absorb(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """``weight_main = weight`` and a zero residual, until :meth:`decompose` (in place)."""
        self.weight_main.copy_(weight)
        for name in RESIDUAL:
            getattr(self, name).zero_()
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias)

    @torch.no_grad()
    def decompose(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """SVD of ``weight``: the top triplets into ``weight_main``, the rest train (in place)."""
        u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
        kept = s.numel() - self.residual_rank
        self.weight_main.copy_(u[:, :kept] @ torch.diag(s[:kept]) @ vh[:kept])
        self.U_residual.copy_(u[:, kept:])
        self.S_residual.copy_(s[kept:])
        self.V_residual.copy_(vh[kept:])
        if self.principal_factors:
            self.U_r.copy_(u[:, :kept])
            self.S_r.copy_(s[:kept])
            self.V_r.copy_(vh[:kept])
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias)
        self.original_norm.copy_(torch.linalg.norm(weight.float()))
        self._principal_cache = None

    def weight(self) -> torch.Tensor:
        return self.weight_main + (self.U_residual * self.S_residual) @ self.V_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)

    def _principal(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.principal_factors:
            return self.U_r, self.V_r
        if (
            self._principal_cache is None
            or self._principal_cache[0].device != self.weight_main.device
        ):
            u, _s, vh = torch.linalg.svd(self.weight_main.detach().float(), full_matrices=False)
            kept = min(self.in_features, self.out_features) - self.residual_rank
            self._principal_cache = (u[:, :kept].contiguous(), vh[:kept].contiguous())
        return self._principal_cache

    def orthogonal_loss(self) -> torch.Tensor:
        """``0.5 ||[U_r U_res][U_r U_res]^T - I||_F + 0.5 ||[V_r; V_res][V_r; V_res]^T - I||_F``."""
        u_r, v_r = self._principal()
        u = torch.cat([u_r, self.U_residual], dim=1)
        v = torch.cat([v_r, self.V_residual], dim=0)
        eye_u = torch.eye(u.shape[0], device=u.device, dtype=u.dtype)
        eye_v = torch.eye(v.shape[0], device=v.device, dtype=v.dtype)
        return 0.5 * torch.linalg.norm(u @ u.T - eye_u) + 0.5 * torch.linalg.norm(v @ v.T - eye_v)

    def keepsv_loss(self) -> torch.Tensor:
        """``| ||W||_F^2 - ||W_0||_F^2 |``: the singular values keep their total energy."""
        return (torch.linalg.norm(self.weight()) ** 2 - self.original_norm**2).abs()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"residual_rank={self.residual_rank}, principal_factors={self.principal_factors}"
        )


def svd_attention(tower: nn.Module, residual_rank: int, decompose: bool) -> None:
    """Replace every ``nn.Linear`` under a module named ``*self_attn*`` by an SVD residual one.

    The reference's ``apply_svd_residual_to_self_attn`` (its ``r`` = rank - ``residual_rank``).
    ``decompose=False`` holds each weight undecomposed (:meth:`SVDResidualLinear.absorb`:
    the same function; 96 SVDs of ViT-L take a minute on a CPU, wasted when a file replaces
    them; meta tensors cannot be decomposed).
    """
    for name, module in list(tower.named_modules()):
        if not name.rsplit(".", 1)[-1].startswith("self_attn"):
            continue
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            new = SVDResidualLinear(
                child.in_features, child.out_features, residual_rank, child.bias is not None
            ).to(child.weight.device)
            if decompose:
                new.decompose(child.weight, child.bias)
            elif not child.weight.is_meta:
                new.absorb(child.weight, child.bias)
            setattr(module, child_name, new)


class Effort(Detector):
    """CLIP ViT-L/14 with SVD-residual attention (Effort) and a 2-class head; one fake logit.

    State dict: ``backbone.*`` (Hugging Face CLIP vision names) and ``head.*``, the
    reference ``EffortDetector``'s. Full size: 303,378,530 parameters, 198,754 trainable
    (the residual triplets and the head); ``principal_factors=True`` adds the authors'
    frozen ``U_r``/``S_r``/``V_r`` (201,228,192 more).

    Args:
        vision: ``transformers.CLIPVisionConfig`` fields overriding :data:`VIT_L14`
            (tests build tiny towers); only with ``pretrained=false``.
        pretrained: start from OpenAI's CLIP ViT-L/14, read from ``backbone_file`` on
            first use (nothing is downloaded) and decomposed then. An official Effort file
            (``detector.weights``) replaces every tensor and needs no CLIP file.
        backbone_file: ``openai/clip-vit-large-patch14``'s ``model.safetensors`` (or folder).
        residual_rank: singular triplets that train per attention matrix (the reference's
            ``r = 1024 - 1`` leaves 1).
        principal_factors: hold the frozen top factors as parameters (the authors' file
            layout; a file that has them switches this on by itself).
        reg_weight: weight of the mean orthogonality + singular-value loss (0: the
            released training; the authors' commented-out variant uses 1.0).
        preprocessing, optimizer, scheduler: see :class:`Detector`; default optimiser
            DeepfakeBench's Adam (lr 2e-4, weight decay 5e-4), as ``effort.yaml``.
    """

    def __init__(
        self,
        vision: Mapping[str, Any] | None = None,
        pretrained: bool = False,
        backbone_file: str | None = None,
        residual_rank: int = 1,
        principal_factors: bool = False,
        reg_weight: float = 0.0,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if optimizer is None:
            optimizer = DEEPFAKEBENCH_ADAM
        super().__init__(
            merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing), optimizer, scheduler
        )
        if vision and pretrained:
            raise UserError(
                "detector.vision changes the architecture, so CLIP ViT-L/14's weights would not "
                "fit; set detector.pretrained=false or drop detector.vision"
            )
        from transformers import CLIPVisionConfig, CLIPVisionModel

        try:
            config = CLIPVisionConfig(**{**VIT_L14, **dict(vision or {})})
        except TypeError as exc:
            raise UserError(f"detector.vision: {exc}") from None
        tower = CLIPVisionModel(config)
        # transformers 5 flattens CLIPVisionModel; 4.x wraps a CLIPVisionTransformer
        self.backbone = getattr(tower, "vision_model", tower)
        # decomposed on first training use (decompose_attention); until then each attention
        # weight is held whole, which computes the same function
        svd_attention(self.backbone, residual_rank, decompose=False)
        self.backbone.requires_grad_(False)
        for module in self.svd_layers():
            for name in RESIDUAL:
                getattr(module, name).requires_grad_(True)
        if principal_factors:
            self.set_principal_factors(True)
        self.head = nn.Linear(config.hidden_size, 2)
        self.backbone_file = backbone_file
        self.reg_weight = float(reg_weight)
        self._clip_pending = pretrained
        self._svd_pending = True
        if not pretrained and backbone_file:
            log.warning(
                "detector.backbone_file=%s is ignored: detector.pretrained=false", backbone_file
            )

    def svd_layers(self) -> Iterator[SVDResidualLinear]:
        return (m for m in self.backbone.modules() if isinstance(m, SVDResidualLinear))

    def set_principal_factors(self, enabled: bool) -> None:
        for module in self.svd_layers():
            module.set_principal_factors(enabled)

    @torch.no_grad()
    def decompose_attention(self) -> None:
        """Split every attention weight by SVD (once; in place, so optimisers keep their tensors)."""
        self.load_backbone()
        if not self._svd_pending:
            return
        for module in self.svd_layers():
            module.decompose(module.weight(), module.bias)
        self._svd_pending = False
        log.info("Effort: attention weights decomposed by SVD")

    @torch.no_grad()
    def load_backbone(self) -> None:
        """Read CLIP ViT-L/14 from ``backbone_file`` into the tower, in place (first use)."""
        if not self._clip_pending:
            return
        if not self.backbone_file:
            raise UserError(
                f"detector.pretrained=true needs CLIP ViT-L/14 from a local file: {BACKBONE_HINT}"
            )
        _, tower = read_hf_clip_vision(
            self.backbone_file, "detector.backbone_file", BACKBONE_HINT, "Effort"
        )
        vision = {k.removeprefix("vision_model."): v for k, v in tower.items()}
        plain = {}
        for name, module in self.backbone.named_modules():
            if isinstance(module, SVDResidualLinear):
                plain[name] = module
        state = {k: v for k, v in vision.items() if k.rpartition(".")[0] not in plain}
        expected = {k for k in self.backbone.state_dict() if k.rpartition(".")[0] not in plain}
        expected |= {f"{name}.{leaf}" for name in plain for leaf in ("weight", "bias")}
        missing = sorted(expected - set(vision))
        unexpected = sorted(set(vision) - expected)
        if missing or unexpected:
            raise UserError(
                f"detector.backbone_file {self.backbone_file} is not CLIP ViT-L/14's vision tower: "
                f"missing keys: {', '.join(missing[:8]) or 'none'}; "
                f"unexpected keys: {', '.join(unexpected[:8]) or 'none'}; {BACKBONE_HINT}"
            )
        own = self.backbone.state_dict()
        for key, tensor in state.items():
            if own[key].shape != tensor.shape:
                raise UserError(
                    f"detector.backbone_file {self.backbone_file}: {key} has shape "
                    f"{tuple(tensor.shape)}, CLIP ViT-L/14 has {tuple(own[key].shape)}; {BACKBONE_HINT}"
                )
            own[key].copy_(tensor)
        for name, module in plain.items():
            device = module.weight_main.device
            bias = vision.get(f"{name}.bias")
            module.absorb(
                vision[f"{name}.weight"].to(device), None if bias is None else bias.to(device)
            )
        self._clip_pending = False
        self._svd_pending = True

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.load_backbone()
        features = self.backbone(pixel_values=batch["image"]).pooler_output
        scores = self.head(features)
        return {"logits": scores[:, 1] - scores[:, 0], "embedding": features}

    def regularization(self) -> dict[str, torch.Tensor]:
        """The mean orthogonality and singular-value losses over the SVD layers."""
        self.decompose_attention()
        layers = list(self.svd_layers())
        orthogonal = torch.stack([m.orthogonal_loss() for m in layers]).mean()
        keepsv = torch.stack([m.keepsv_loss() for m in layers]).mean()
        return {"orthogonal": orthogonal, "keepsv": keepsv}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.decompose_attention()
        outputs = self(batch)
        bce = F.binary_cross_entropy_with_logits(outputs["logits"].float(), batch["label"].float())
        if not self.reg_weight:
            return {"loss": bce}
        reg = self.regularization()
        loss = bce + self.reg_weight * (reg["orthogonal"] + reg["keepsv"])
        return {"loss": loss, "bce": bce.detach(), **{k: v.detach() for k, v in reg.items()}}

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer | None, Any]:
        self.decompose_attention()  # in place: the optimiser keeps these tensors
        return super().configure_optimizers()

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Loaded weights replace CLIP's (a checkpoint of a ``pretrained=true`` run does not
        read ``backbone_file`` again) and the norm the singular-value loss keeps."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        with torch.no_grad():
            for module in self.svd_layers():
                module.original_norm.copy_(torch.linalg.norm(module.weight()))
                module._principal_cache = None
        self._clip_pending = False
        # a file saved before any training step holds whole weights and a zero residual
        self._svd_pending = all(not m.S_residual.any() for m in self.svd_layers())
        return result

    def load_weights(self, path: str | Path) -> None:
        """DeepfakeBench's or the authors' ``EffortDetector`` state dict, or this detector's."""
        source = f"weights file {path}"
        state = strip_prefixes(read_state_dict(path), ("module.",))
        state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
        if "head.weight" not in state or not any(k.endswith(".weight_main") for k in state):
            shown = ", ".join(sorted(state)[:4]) + (" ..." if len(state) > 4 else "")
            raise UserError(
                f"{source} is not an Effort state dict (no 'head.weight' and "
                f"'backbone.*.self_attn.*.weight_main'; found {shown or 'no keys'}); pass "
                f"DeepfakeBench's or the authors' EffortDetector file (e.g. effort_best.pth)"
            )
        principal = any(k.endswith(".U_r") for k in state)
        self.set_principal_factors(principal)
        if self.config:  # a checkpoint trained from this file is rebuilt in its layout
            self.config["principal_factors"] = principal
        load_state_dict_strict(self, state, source)
        layout = "authors'" if next(self.svd_layers()).principal_factors else "DeepfakeBench"
        log.info("Effort: loaded %s (%s layout)", path, layout)
        self.use_protocol("DeepfakeBench Effort", DEEPFAKEBENCH_PROTOCOL, DEFAULT_PREPROCESSING)

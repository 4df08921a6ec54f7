"""FTCN: a fully temporal convolution network with a temporal transformer on face clips.

After Y. Zheng, J. Bao, D. Chen, M. Zeng and F. Wen, "Exploring Temporal Coherence for
More General Video Face Forgery Detection", ICCV 2021 (github.com/yinglinzheng/FTCN,
``model/classifier/i3d_temporal_var_fix_dropout_tt_cfg.py`` with ``setting/ftcn_tt.yaml``
over ``root_setting.yaml``). A SlowFast I3D ResNet-50 whose every spatial kernel is cut
to 1 (temporal kernels kept) sees each pixel's trajectory only, so it has to find
forgeries in temporal incoherence rather than in spatial texture; a one-layer
transformer over the 16 time steps of its res4 features then classifies the clip.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from deepsift.core.checkpoint import load_state_dict_strict, read_state_dict, strip_prefixes
from deepsift.core.errors import UserError
from detectors.base import Detector
from detectors.layers.clips import channels_first_clip, cv2_clip_preprocessing, cv2_normalised_clip
from detectors.layers.slowfast import BasicStem, Bottleneck, Pathway, ResBlock
from detectors.preprocessing import Preprocessing, merge_preprocessing

log = logging.getLogger(__name__)

#: res2-res4 of SlowFast's ``DEPTH`` 50 (``stop_point`` 5 removes res5)
STAGE_DEPTH: tuple[int, int, int] = (3, 4, 6)
#: ``_TEMPORAL_KERNEL_BASIS["i3d"]`` of res2-res4, cycled over each stage's blocks
STAGE_TEMPORAL_KERNELS: tuple[tuple[int, ...], ...] = ((3,), (3, 1), (3, 1))

#: ``test_on_raw_video.py``: 224 x 224 aligned face crops (``imsize`` 224), ImageNet mean/std
#: on 0-255 values (= on [0, 1] values)
DEFAULT_PREPROCESSING: dict[str, Any] = cv2_clip_preprocessing(
    "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
)


#: ``root_setting.yaml`` trainer ``optim: adam``, ``init_lr`` 3e-4
_adam = functools.partial(torch.optim.Adam, lr=3e-4)


class _Residual(nn.Module):
    """``Residual``: ``fn(x) + x`` (keys ``fn.*``)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class _PreNorm(nn.Module):
    """``PreNorm``: ``fn(LayerNorm(x))`` (keys ``norm.*``, ``fn.*``)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class _Attention(nn.Module):
    """``Attention``: bias-free ``to_qkv``, scale ``dim_head ** -0.5``, ``to_out`` Linear + dropout."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        # the authors' code drops the projection only when heads == 1 and dim_head == dim
        self.to_out = (
            nn.Identity()
            if heads == 1 and dim_head == dim
            else nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, -1)
        )
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


class _FeedForward(nn.Module):
    """``FeedForward``: ``net`` = Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TimeTransformer(nn.Module):
    """FTCN's ``TimeTransformer``: a class token, learnt positions, pre-norm blocks, ``mlp_head``.

    Keys as the authors' module: ``pos_embedding``, ``cls_token``,
    ``transformer.layers.<i>.0.fn.{norm,fn.to_qkv,fn.to_out.0}``,
    ``transformer.layers.<i>.1.fn.{norm,fn.net.0,fn.net.3}``, ``mlp_head.{0,1}``.
    """

    def __init__(
        self,
        num_patches: int,
        dim: int,
        depth: int = 1,
        heads: int = 16,
        dim_head: int = 64,
        mlp_dim: int = 2048,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Pathway()
        self.transformer.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    _Residual(_PreNorm(dim, _Attention(dim, heads, dim_head, dropout))),
                    _Residual(_PreNorm(dim, _FeedForward(dim, mlp_dim, dropout))),
                ]
            )
            for _ in range(depth)
        )
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, num_classes), read off the class token."""
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding[:, : x.shape[1] + 1]
        x = self.dropout(x)
        for attn, ff in self.transformer.layers:
            x = ff(attn(x))
        return self.mlp_head(x[:, 0])


class FTCNNet(nn.Module):
    """FTCN's ``I3D8x8.resnet``: SlowFast ``ResNet`` (ARCH i3d) after ``temporal_only_conv``.

    ``s1.pathway0_stem`` and ``s2``-``s4`` with ``pathway0_res<i>`` blocks, all spatial
    kernels 1 and strides as max-pools (:mod:`detectors.layers.slowfast`,
    ``temporal_only``), a temporal max-pool 2 after ``s2``, ``s5`` removed
    (``stop_point`` 5), and ``head.time_T`` (:class:`TimeTransformer`) on the res4 map
    averaged over its H x W positions (``patch_type: time``), one token per time step.
    Returns the logit before the head's sigmoid.
    """

    def __init__(
        self,
        clip_len: int = 32,
        blocks: Sequence[int] = STAGE_DEPTH,
        width_per_group: int = 64,
        depth: int = 1,
        heads: int = 16,
        dim_head: int = 64,
        mlp_dim: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(blocks) != 3 or min(blocks) < 1:
            raise UserError(f"detector.blocks must be 3 positive block counts, got {list(blocks)}")
        if clip_len < 2 or clip_len % 2:
            raise UserError(f"detector.clip_len must be even (a temporal pool 2), got {clip_len}")
        self.s1 = Pathway()
        self.s1.pathway0_stem = BasicStem(width_per_group, temporal_only=True)
        dim_in = width_per_group
        for stage, (n, kernels) in enumerate(zip(blocks, STAGE_TEMPORAL_KERNELS, strict=True)):
            dim_out, dim_inner = width_per_group * 4 * 2**stage, width_per_group * 2**stage
            holder = Pathway()
            for i in range(n):
                stride = 1 if stage == 0 or i > 0 else 2
                kt = kernels[i % len(kernels)]
                block = ResBlock(dim_in, dim_out, dim_inner, kt, stride, temporal_only=True)
                holder.add_module(f"pathway0_res{i}", block)
                dim_in = dim_out
            self.add_module(f"s{stage + 2}", holder)
        self.feature_dim = dim_in
        self.num_patches = clip_len // 2
        self.head = Pathway()
        self.head.time_T = TimeTransformer(
            self.num_patches, dim_in, depth, heads, dim_head, mlp_dim, dropout, dropout
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the authors' model is built: SlowFast ``init_weights``, then the new modules' defaults.

        SlowFast's MSRA fill / BN 1, 0 / zero final BN of each block; the convolutions that
        ``temporal_only_conv`` replaced (the stem's, every ``b``, the strided ``branch1``)
        and the transformer head keep PyTorch's default initialisation, as there.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.s1.pathway0_stem.conv.reset_parameters()
        for module in self.modules():
            if isinstance(module, Bottleneck):  # ZERO_INIT_FINAL_BN: True
                nn.init.zeros_(module.c_bn.weight)
                module.b.reset_parameters()
            elif isinstance(module, ResBlock) and isinstance(
                getattr(module, "branch1_bn", None), nn.Sequential
            ):
                module.branch1.reset_parameters()

    def stages(self) -> list[nn.Module]:
        return [self.s2, self.s3, self.s4]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> the res4 map (B, 16 w, T/2, H/16, W/16)."""
        x = self.s1.pathway0_stem(x)
        for index, stage in enumerate(self.stages()):
            for block in stage.children():
                x = block(x)
            if index == 0:  # pathway0_pool: _POOL1["i3d"] = [2, 1, 1]
                x = F.max_pool3d(x, (2, 1, 1), stride=(2, 1, 1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        if feats.shape[2] != self.num_patches:
            raise UserError(
                f"FTCN was built for clips of {2 * self.num_patches} frames, got {x.shape[2]}"
            )
        tokens = feats.mean(dim=(3, 4)).transpose(1, 2)  # AvgPool3d((1, S, S)): (B, T/2, C)
        return self.head.time_T(tokens)


class FTCN(Detector):
    """FTCN + Temporal Transformer (``ftcn_tt``): ``resnet`` (an :class:`FTCNNet`), one logit per clip.

    Reference defaults (``setting/ftcn_tt.yaml`` over ``root_setting.yaml``,
    ``i3d_temporal_var_fix_dropout_tt_cfg.py``, ``time_transformer.py``,
    ``test_on_raw_video.py``; the training code is not released):

    * model: SlowFast ``ResNet`` ``ARCH: i3d``, ``DEPTH`` 50, ``WIDTH_PER_GROUP`` 64,
      temporal kernels stem 5, res2 [3], res3 [3, 1], res4 [3, 1]; ``temporal_only_conv``
      with ``spatial_count`` 0 and ``keep_stride_count`` 0 (root settings): every
      spatial kernel 1, every spatial stride 2 (stem, res3/res4 ``b`` and ``branch1``) a
      ``MaxPool3d((1, 2, 2))`` after its BN; ``no_time_pool`` false (the temporal pool 2
      after res2 stays); ``stop_point`` 5 (res5 removed); ``TransformerHead`` with
      ``patch_type: time``: ``AvgPool3d((1, 14, 14))`` over the 1024 x 16 x 14 x 14 res4
      map, ``dim`` -1 (= 1024, no projection), ``depth`` 1, ``heads`` 16, ``dim_head``
      64, ``mlp_dim`` 2048, dropout and embedding dropout 0.1, class-token readout,
      ``mlp_head`` LayerNorm + Linear(1024, 1), sigmoid;
    * input: ``clip_size`` 32 consecutive frames, faces aligned by landmarks
      (``FasterCropAlignXRay(224)``), 224 x 224, ImageNet mean/std (on 0-255 values
      there), (B, C, T, H, W); at test time every 32-frame window of a track
      (mirror-padded when shorter), frame scores averaged;
    * training (settings only; the trainer is not released): Adam (``optim: adam``),
      ``init_lr`` 3e-4, batch 16, 200k steps (``lr_step`` 100k), trained from scratch on
      FF++ c23 (real: original; fake: DF, F2F, FS, NT).

    Where this differs: ``forward`` returns the logit before the sigmoid and the loss is
    :func:`~torch.nn.functional.binary_cross_entropy_with_logits`; frames are the crop
    cache's face crops resized to 224 x 224 (cv2 bilinear) instead of the authors'
    landmark alignment; the res4 map is averaged over all positions (the authors'
    ``AvgPool3d((1, 14, 14))`` equals it at 224 px); the training augmentation (not
    released) is a horizontal flip and JPEG quality 60-100 (``aug.min_quality``/
    ``max_quality`` of the setting), one draw for all T frames. The per-clip transform may
    be replaced by the shared clip helper.

    :meth:`load_weights` reads the released ``ftcn_tt.pth`` (the ``I3D8x8`` network's
    ``state_dict``: ``resnet.s1.pathway0_stem.conv.weight``, ``resnet.s1.pathway0_stem.bn.0.weight``
    ... ``resnet.head.time_T.mlp_head.1.bias``; a ``module.`` prefix is removed) strictly.
    The keys are the authors' module's, in order, and the outputs match their ``I3D8x8``
    (commit 853256a) within 3.8e-7 in logit at full size (32 x 224 x 224, float32,
    seeded weights; ``tests/official/make_ftcn.py``, ``tests/official/video/ftcn_tt.json``).

    Args:
        clip_len: frames per clip (``clip_size`` 32); even.
        clip_stride: frame step within a clip (1: consecutive frames).
        blocks: bottlenecks of res2-res4 (3, 4, 6); smaller for tests.
        width_per_group: channels of the stem (64; the transformer's dim is 16x); smaller
            for tests.
        depth, heads, dim_head, mlp_dim: the temporal transformer (1, 16, 64, 2048).
        dropout: of the transformer (attention output, MLP, embedding).
        train_augment: the training augmentation (off: the eval transform in training).
    """

    input_kind = "clip"

    def __init__(
        self,
        clip_len: int = 32,
        clip_stride: int = 1,
        blocks: Sequence[int] = STAGE_DEPTH,
        width_per_group: int = 64,
        depth: int = 1,
        heads: int = 16,
        dim_head: int = 64,
        mlp_dim: int = 2048,
        dropout: float = 0.1,
        train_augment: bool = True,
        preprocessing: Preprocessing | dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(
            preprocessing=merge_preprocessing(DEFAULT_PREPROCESSING, preprocessing),
            optimizer=optimizer or _adam,
            scheduler=scheduler,
        )
        if clip_stride < 1:
            raise UserError(f"detector.clip_stride must be >= 1, got {clip_stride}")
        self.clip_len = int(clip_len)
        self.clip_stride = int(clip_stride)
        self.train_augment = bool(train_augment)
        self.resnet = FTCNNet(
            clip_len, blocks, width_per_group, depth, heads, dim_head, mlp_dim, dropout
        )
        self._augment = v2.Compose(
            [v2.RandomHorizontalFlip(0.5), v2.RandomApply([v2.JPEG((60, 100))], p=0.5)]
        )

    # -- data ------------------------------------------------------------------
    def transform(self, sample: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """``sample["frames"]`` (T PIL RGB face crops) -> ``{"clip": (T, 3, size, size)}``."""
        augment = self._augment if train and self.train_augment else None
        clip = cv2_normalised_clip(
            sample.get("frames"),
            self.preprocessing.size,
            "bilinear",
            self.preprocessing.mean,
            self.preprocessing.std,
            augment,
            "FTCN",
        )
        return {"clip": clip}

    # -- model -----------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip = channels_first_clip(batch["clip"], "FTCN")
        return {"logits": self.resnet(clip)[:, 0]}

    # -- weights -----------------------------------------------------------------
    def load_weights(self, path: str | Path) -> None:
        """The released ``ftcn_tt.pth`` or a deepsift FTCN state dict, strictly."""
        source = f"weights file {path}"
        state = strip_prefixes(read_state_dict(path), ("module.",))
        if not any(k.startswith("resnet.head.time_T.") for k in state):
            raise UserError(
                f"{source} is not an FTCN file: no resnet.head.time_T.* keys as in the "
                "released ftcn_tt.pth"
            )
        load_state_dict_strict(self, state, source)
        log.info("FTCN: loaded %s", path)

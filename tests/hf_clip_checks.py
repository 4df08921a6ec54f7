"""An independent forward of Hugging Face's CLIP vision tower (OpenAI's ViT: pre-LN, QuickGELU,
``pre_layrnorm``/``post_layernorm``) written out from a state dict, and the tiny tower the
Effort and C2P-CLIP tests build."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: a 2 x 2 grid of 14 px patches, 2 layers of width 32
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
}


def clip_vit_pooled(
    x: torch.Tensor,
    w: Callable[[str], torch.Tensor],
    layers: int,
    heads: int,
    patch: int,
    linear: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``post_layernorm`` of the CLS token of the tower whose tensors ``w(name)`` gives
    (``CLIPVisionTransformer``'s names); ``linear(t, name)`` applies an attention projection
    (default ``F.linear`` with ``name.weight`` / ``name.bias``)."""
    if linear is None:
        linear = lambda t, name: F.linear(t, w(f"{name}.weight"), w(f"{name}.bias"))  # noqa: E731
    patches = F.conv2d(x, w("embeddings.patch_embedding.weight"), stride=patch)
    cls = w("embeddings.class_embedding").expand(x.shape[0], 1, -1)
    h = torch.cat([cls, patches.flatten(2).transpose(1, 2)], 1)
    h = h + w("embeddings.position_embedding.weight")
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], w(f"{n}.weight"), w(f"{n}.bias"))  # noqa: E731
    h = ln(h, "pre_layrnorm")
    for i in range(layers):
        p = f"encoder.layers.{i}."
        a = ln(h, p + "layer_norm1")
        q, k, v = (linear(a, f"{p}self_attn.{n}_proj") for n in "qkv")
        b, n, c = q.shape
        split = lambda t, b=b, n=n, c=c: t.view(b, n, heads, c // heads).transpose(1, 2)  # noqa: E731
        att = (split(q) @ split(k).transpose(-1, -2) / (c // heads) ** 0.5).softmax(-1)
        h = h + linear((att @ split(v)).transpose(1, 2).reshape(b, n, c), p + "self_attn.out_proj")
        m = F.linear(ln(h, p + "layer_norm2"), w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias"))
        m = m * torch.sigmoid(1.702 * m)  # QuickGELU
        h = h + F.linear(m, w(p + "mlp.fc2.weight"), w(p + "mlp.fc2.bias"))
    return ln(h[:, 0], "post_layernorm")

"""Attention kernels of the fast inference path (:mod:`fastmetro.model.fast`).

The plain path runs :class:`torch.nn.MultiheadAttention`, which converts its boolean mask to a
float mask on every call and (with a mask) falls back to an unfused masked-softmax kernel. Here:

- :class:`AdditiveMask` turns FastMETRO's boolean mask (True = may not attend) into the additive
  float mask (0 / -inf) that fused :func:`torch.nn.functional.scaled_dot_product_attention`
  takes, once per device and dtype;
- :func:`attend` runs the fused kernel, or, when the caller wants the attention maps, the
  explicit softmax(q k^T / sqrt(d) + mask) (the maps of ``nn.MultiheadAttention`` with
  ``average_attn_weights=False``).

On the mask's sparsity: a vertex row of the decoder's self-attention may attend to the K joints
and its own 1-ring only (< 26 of 445 keys for SMPL). Two exact sparse kernels were measured
against the dense fused kernel on the development CPU (2 cores, AVX-512, torch 2.14): a per-row
gather of the allowed keys, and blocks of 32 vertex rows in reverse Cuthill-McKee order with the
union of their keys gathered (115 keys per block instead of 445). Both lost (gathering the keys
moves more memory than the fused kernel reads; e.g. D=512, batch 8: 15 ms dense, 23 ms blocked,
95 ms per-row), so the dense fused kernel is used for every masked layer. Where the sparsity
does remove work is the first decoder layer of the first transformer: its input does not depend
on the image, so :mod:`fastmetro.model.fast_transformer` computes it once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class AdditiveMask:
    """A boolean attention mask (True = may not attend) as an additive float mask.

    Args:
        mask: bool (L, L) (every head) or (H, L, L) (per head, e.g. Table 4's half-head mask),
            or None (no mask).

    :meth:`get` returns (L, L) or (1, H, L, L) with 0 where attention is allowed and -inf where
    it is not, built once per (device, dtype) and reused.
    """

    def __init__(self, mask: torch.Tensor | None):
        if mask is not None and (mask.dtype != torch.bool or mask.dim() not in (2, 3)):
            raise ValueError(f"expected a bool (L, L) or (H, L, L) mask, got {mask.dtype} {tuple(mask.shape)}")
        self.mask = None if mask is None else mask.detach()
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def is_none(self) -> bool:
        return self.mask is None

    @property
    def size(self) -> int | None:
        return None if self.mask is None else int(self.mask.shape[-1])

    def get(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        if self.mask is None:
            return None
        key = (torch.device(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            mask = self.mask.to(device)
            cached = torch.zeros(mask.shape, device=device, dtype=dtype).masked_fill_(mask, float("-inf"))
            if cached.dim() == 3:
                cached = cached.unsqueeze(0)  # (1, H, L, L): broadcast over the batch
            self._cache[key] = cached
        return cached


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, D/H) view."""
    batch, length, dim = x.shape
    return x.view(batch, length, num_heads, dim // num_heads).transpose(1, 2)


def split_qkv(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed projections (B, L, 3D) -> q, k, v, each a (B, H, L, D/H) view (no copy)."""
    batch, length, dim3 = qkv.shape
    heads = qkv.view(batch, length, 3, num_heads, dim3 // (3 * num_heads)).permute(2, 0, 3, 1, 4)
    return heads[0], heads[1], heads[2]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H*d)."""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over heads: q (B, H, Lq, d), k and v (B, H, Lk, d).

    ``mask``: additive, broadcastable to (B, H, Lq, Lk). Returns (output (B, H, Lq, d), weights
    (B, H, Lq, Lk) or None). With ``need_weights`` the softmax is explicit (the same maps as
    ``nn.MultiheadAttention``); otherwise the fused kernel runs.
    """
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1)
    return torch.matmul(weights, v), weights

"""DETR's 2-D sine positional encoding, as FastMETRO uses it (no padding mask).

Every position of an ``h x w`` feature map gets a ``dim``-channel code: the first ``dim/2``
channels encode the row (y), the last ``dim/2`` the column (x); within each half, even channels
are sines and odd channels cosines of the normalised coordinate at geometric frequencies. The
[y, x] order matters for loading released checkpoints (their weights were trained with it).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEncodingSine(nn.Module):
    """Parameter-free sine encoding of a full (unpadded) feature map.

    Args:
        dim: output channels (the transformer width); must be even.
        temperature: base of the geometric frequency progression.
        normalize: scale coordinates to (0, ``scale``] before encoding (FastMETRO: True).
        scale: range of the normalised coordinates (2*pi).
    """

    def __init__(self, dim: int, temperature: float = 10000.0, normalize: bool = True, scale: float = 2 * math.pi):
        super().__init__()
        if dim % 2:
            raise ValueError(f"position encoding needs an even width, got {dim}")
        self.num_pos_feats = dim // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, batch_size: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """Return (B, dim, height, width) codes."""
        # Cumulative sums of an all-ones mask are simply 1..h and 1..w.
        y_embed = torch.arange(1, height + 1, device=device, dtype=torch.float32)[:, None].expand(height, width)
        x_embed = torch.arange(1, width + 1, device=device, dtype=torch.float32)[None, :].expand(height, width)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[-1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, -1:] + eps) * self.scale
        steps = torch.arange(self.num_pos_feats, device=device, dtype=torch.float32)
        frequencies = self.temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / frequencies
        pos_y = y_embed[..., None] / frequencies
        # Interleave sin (even channels) and cos (odd channels).
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=3).flatten(2)
        pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)  # (dim, h, w)
        return pos.to(dtype).unsqueeze(0).expand(batch_size, -1, -1, -1)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}"

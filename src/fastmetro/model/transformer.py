"""FastMETRO's encoder-decoder transformer (one of the two stacked ones), batch-first.

Layers are pre-norm (LayerNorm before each sub-block, residual after) with a final LayerNorm
after the last encoder and the last decoder layer, as in DETR's ``normalize_before=True``.

- Encoder input: ``[camera token; image tokens]``. The positional encoding is added to the
  queries and keys of the image tokens only (never to values, never to the camera token).
- Decoder input: the joint and vertex tokens themselves (their positional query is zero, so it
  is omitted). Self-attention takes the mesh mask; cross-attention uses
  q = tokens, k = memory + pos, v = memory, where memory = encoder outputs of the image tokens.

Attention uses :class:`torch.nn.MultiheadAttention` (packed ``in_proj_weight`` rows q, k, v), so
parameter names and shapes are those of the released checkpoints. Attention maps, when asked
for, come from the same forward call (``need_weights=True, average_attn_weights=False``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fastmetro.model.graph_conv import GraphResidualBlock

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": nn.functional.relu,
    "gelu": nn.functional.gelu,
}


def _add_pos(tokens: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return tokens if pos is None else tokens + pos


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + FFN over (B, L, D) tokens."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, activation: str):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = ACTIVATIONS[activation]

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        normed = self.norm1(tokens)
        query_key = _add_pos(normed, pos)
        attended = self.self_attn(query_key, query_key, normed, need_weights=False)[0]
        tokens = tokens + self.dropout1(attended)
        normed = self.norm2(tokens)
        return tokens + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(normed)))))


class DecoderLayer(nn.Module):
    """Pre-norm masked self-attention, cross-attention to the image memory, FFN.

    With ``graph_block=True`` (Table 4 ablation) a graph-convolution residual block
    (:class:`~fastmetro.model.graph_conv.GraphResidualBlock`) follows self-attention and
    updates the vertex tokens (the last N tokens) only.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, activation: str, graph_block: bool):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = ACTIVATIONS[activation]
        self.graph_block = GraphResidualBlock(dim, dropout) if graph_block else None

    def forward(
        self,
        tokens: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor | None,
        self_attn_mask: torch.Tensor | None,
        vertex_graph: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """tokens (B, K+N, D), memory (B, HW, D) -> (tokens, self weights, cross weights).

        Attention weights are (B, heads, K+N, K+N) and (B, heads, K+N, HW), or None.
        """
        normed = self.norm1(tokens)
        attended, self_weights = self.self_attn(
            normed, normed, normed, attn_mask=self_attn_mask,
            need_weights=need_weights, average_attn_weights=False,
        )  # fmt: skip
        tokens = tokens + self.dropout1(attended)
        if self.graph_block is not None:
            assert vertex_graph is not None  # a graph block needs the vertex graph
            num_vertices = vertex_graph.shape[0]
            joints, vertices = tokens[:, :-num_vertices], tokens[:, -num_vertices:]
            tokens = torch.cat([joints, vertices + self.graph_block(vertices, vertex_graph)], dim=1)
        normed = self.norm2(tokens)
        attended, cross_weights = self.multihead_attn(
            normed, _add_pos(memory, memory_pos), memory,
            need_weights=need_weights, average_attn_weights=False,
        )  # fmt: skip
        tokens = tokens + self.dropout2(attended)
        normed = self.norm3(tokens)
        tokens = tokens + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(normed)))))
        return tokens, self_weights, cross_weights


class Encoder(nn.Module):
    def __init__(self, layer: EncoderLayer, num_layers: int, dim: int):
        super().__init__()
        # `norm` is created first so the state_dict order matches the released checkpoints.
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens, pos)
        return self.norm(tokens)


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, tokens, memory, memory_pos, self_attn_mask, vertex_graph=None, need_weights=False):
        self_maps, cross_maps = [], []
        for layer in self.layers:
            tokens, self_weights, cross_weights = layer(
                tokens, memory, memory_pos, self_attn_mask, vertex_graph, need_weights
            )
            self_maps.append(self_weights)
            cross_maps.append(cross_weights)
        return self.norm(tokens), self_maps, cross_maps


@dataclass
class TransformerOutput:
    camera_feature: torch.Tensor  # (B, 1, D)
    image_features: torch.Tensor  # (B, HW, D) encoder outputs of the image tokens
    token_features: torch.Tensor  # (B, K+N, D) decoder outputs of the joint and vertex tokens
    self_attention: list  # per decoder layer (B, heads, K+N, K+N) or None
    cross_attention: list  # per decoder layer (B, heads, K+N, HW) or None


class Transformer(nn.Module):
    """One encoder-decoder pair of width ``dim``.

    Every parameter with more than one dimension is Xavier-uniform initialised (as released);
    biases keep PyTorch's defaults.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_encoder_layers: int,
        num_decoder_layers: int,
        ffn_dim: int,
        dropout: float = 0.1,
        activation: str = "relu",
        graph_blocks: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.encoder = Encoder(EncoderLayer(dim, num_heads, ffn_dim, dropout, activation), num_encoder_layers, dim)
        self.decoder = Decoder(
            DecoderLayer(dim, num_heads, ffn_dim, dropout, activation, graph_blocks), num_decoder_layers, dim
        )
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(
        self,
        image_tokens: torch.Tensor,
        camera_token: torch.Tensor,
        query_tokens: torch.Tensor,
        pos: torch.Tensor,
        self_attn_mask: torch.Tensor | None = None,
        vertex_graph: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> TransformerOutput:
        """image_tokens (B, HW, D), camera_token (B, 1, D), query_tokens (B, K+N, D), pos (B, HW, D).

        ``self_attn_mask``: bool (K+N, K+N) or (B*heads, K+N, K+N), True = may not attend.
        ``vertex_graph``: (N, N) normalised adjacency for the graph-convolution ablation.
        """
        num_image_tokens = image_tokens.shape[1]
        # The camera token gets no positional encoding: a zero code in front of the image codes.
        encoder_pos = torch.cat([torch.zeros_like(camera_token), pos], dim=1)
        encoded = self.encoder(torch.cat([camera_token, image_tokens], dim=1), encoder_pos)
        camera_feature, image_features = encoded.split([1, num_image_tokens], dim=1)
        token_features, self_maps, cross_maps = self.decoder(
            query_tokens, image_features, pos, self_attn_mask, vertex_graph, need_weights
        )
        return TransformerOutput(camera_feature, image_features, token_features, self_maps, cross_maps)

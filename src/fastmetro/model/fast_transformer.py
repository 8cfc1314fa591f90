"""Inference-only view of a :class:`~fastmetro.model.transformer.Transformer`: the same function,
less work (used by :func:`fastmetro.model.fast.prepare_for_inference`).

:class:`FastTransformer` shares the encoder and decoder modules (and so every parameter and its
state-dict name) of the transformer it views. In training mode or with gradients enabled it
runs the plain forward unchanged (the released maths). Otherwise:

- attention is the fused scaled-dot-product kernel with the mesh mask prepared once as an
  additive float mask (:mod:`fastmetro.model.fast_attention`); q, k and v come from one packed
  projection and are split into heads as views (no copies);
- positional codes enter only through linear maps, so their projections ``pos @ W_q^T``,
  ``pos @ W_k^T`` (encoder) and ``pos @ W_k^T`` (decoder cross-attention keys) are computed once
  per input size and added to the projected tokens: ``(x + pos) W^T = x W^T + pos W^T``;
- with ``constant_queries`` (transformer 1, whose decoder input is the learnable joint and
  vertex tokens themselves), the first decoder layer's masked self-attention (plus the graph
  block of that ablation) and its cross-attention queries do not depend on the image: they are
  computed once and reused until a parameter they depend on changes (checked through the
  parameters' storage and version counters, which every in-place update - optimiser steps,
  ``load_state_dict`` - bumps);
- ReLU and residual additions run in place on tensors this module created.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from fastmetro.model.fast_attention import AdditiveMask, attend, merge_heads, split_heads, split_qkv
from fastmetro.model.transformer import DecoderLayer, EncoderLayer, Transformer, TransformerOutput


def _norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _feedforward(layer, normed: torch.Tensor) -> torch.Tensor:
    # Module calls (not F.linear on .weight) so dynamically quantised Linear layers work too.
    hidden = layer.linear1(normed)
    hidden = hidden.relu_() if layer.activation is F.relu else layer.activation(hidden)
    return layer.linear2(hidden)


def _out_proj(attention: nn.MultiheadAttention, heads: torch.Tensor) -> torch.Tensor:
    return F.linear(merge_heads(heads), attention.out_proj.weight, attention.out_proj.bias)


def _fingerprint(tensors) -> tuple:
    """Identity of the values of ``tensors``: storage, shape and in-place version of each
    (inference tensors have no version counter; they are identified by storage and shape)."""
    return tuple((t.data_ptr(), tuple(t.shape), None if t.is_inference() else t._version) for t in tensors)


def encoder_layer(layer: EncoderLayer, x: torch.Tensor, qk_pos: torch.Tensor) -> torch.Tensor:
    """x (B, 1 + HW, D) = [camera; image tokens]; ``qk_pos`` (HW, 2D) or (B, HW, 2D) = pos @ [W_q; W_k]^T."""
    attention = layer.self_attn
    dim = x.shape[-1]
    qkv = F.linear(_norm(x, layer.norm1), attention.in_proj_weight, attention.in_proj_bias)
    qkv[:, 1:, : 2 * dim] += qk_pos  # the camera token has no positional code
    q, k, v = split_qkv(qkv, attention.num_heads)
    x = x + _out_proj(attention, attend(q, k, v)[0])
    return x.add_(_feedforward(layer, _norm(x, layer.norm2)))


def decoder_self_attention(layer: DecoderLayer, tokens, mask, vertex_graph, need_weights):
    """Masked self-attention (+ graph block) of a decoder layer: tokens (B, L, D) -> (new tokens, weights)."""
    attention = layer.self_attn
    qkv = F.linear(_norm(tokens, layer.norm1), attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = split_qkv(qkv, attention.num_heads)
    heads, weights = attend(q, k, v, mask, need_weights)
    tokens = tokens + _out_proj(attention, heads)
    if layer.graph_block is not None:
        num_vertices = vertex_graph.shape[0]
        vertices = tokens[:, -num_vertices:]
        vertices.add_(layer.graph_block(vertices, vertex_graph))
    return tokens, weights


def cross_query(layer: DecoderLayer, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-attention queries (B, H, L, D/H) of ``tokens``."""
    attention = layer.multihead_attn
    dim = tokens.shape[-1]
    q = F.linear(_norm(tokens, layer.norm2), attention.in_proj_weight[:dim], attention.in_proj_bias[:dim])
    return split_heads(q, attention.num_heads)


def decoder_cross_and_feedforward(layer: DecoderLayer, tokens, query, memory, k_pos, need_weights):
    """Cross-attention (queries ``query``, keys memory W_k + ``k_pos``, values memory W_v) and FFN."""
    attention = layer.multihead_attn
    dim = memory.shape[-1]
    kv = F.linear(memory, attention.in_proj_weight[dim:], attention.in_proj_bias[dim:])
    kv[..., :dim] += k_pos
    k, v = split_heads(kv[..., :dim], attention.num_heads), split_heads(kv[..., dim:], attention.num_heads)
    heads, weights = attend(query, k, v, None, need_weights)
    tokens = tokens + _out_proj(attention, heads)
    return tokens.add_(_feedforward(layer, _norm(tokens, layer.norm3))), weights


def _encoder_layers(transformer: Transformer) -> Sequence[EncoderLayer]:
    return cast(Sequence[EncoderLayer], transformer.encoder.layers)  # an nn.ModuleList of EncoderLayer


def _decoder_layers(transformer: Transformer) -> Sequence[DecoderLayer]:
    return cast(Sequence[DecoderLayer], transformer.decoder.layers)  # an nn.ModuleList of DecoderLayer


class _FirstLayerMemo:
    """The image-independent part of decoder layer 0 for constant queries (batch of one)."""

    def __init__(self, key, tokens, query, self_weights):
        self.key, self.tokens, self.query, self.self_weights = key, tokens, query, self_weights


class FastTransformer(Transformer):
    """See the module docstring. Build with :meth:`view_of`; never trained directly."""

    _mask: AdditiveMask
    _constant_queries: tuple[torch.Tensor, ...] | None
    _position_cache: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]]
    _memo: _FirstLayerMemo | None

    @classmethod
    def view_of(
        cls,
        transformer: Transformer,
        self_attn_mask: torch.Tensor | None,
        constant_queries: tuple[torch.Tensor, ...] | None = None,
    ) -> FastTransformer:
        """A fast view of ``transformer`` (modules shared).

        Args:
            self_attn_mask: the model's decoder self-attention mask (bool (L, L) or (H, L, L),
                True = may not attend) or None; the forward uses it prepared once, in place of
                the boolean mask it is passed.
            constant_queries: tensors whose concatenation (dim 0) is every decoder input
                (transformer 1: the joint and vertex token embeddings); enables the first-layer memo.
        """
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.dim = transformer.dim
        fast.encoder = transformer.encoder
        fast.decoder = transformer.decoder
        fast.training = transformer.training
        fast._mask = AdditiveMask(self_attn_mask)
        fast._constant_queries = tuple(constant_queries) if constant_queries is not None else None
        fast._position_cache = {}
        fast._memo = None
        return fast

    # ------------------------------------------------------------------ caches
    def _position_terms(self, pos: torch.Tensor, dtype: torch.dtype):
        """Per layer: encoder pos @ [W_q; W_k]^T (HW, 2D) and decoder pos @ W_k^T (HW, D)."""
        batch_constant = pos.dim() == 3 and pos.stride(0) == 0
        source = pos[0] if batch_constant else pos
        weights = [layer.self_attn.in_proj_weight for layer in _encoder_layers(self)]
        weights += [layer.multihead_attn.in_proj_weight for layer in _decoder_layers(self)]
        key = (_fingerprint([source] + weights), source.stride(), str(source.device), dtype)
        cached = self._position_cache.get(key)
        if cached is None:
            dim = self.dim
            encoder = [F.linear(source, w[: 2 * dim]).to(dtype) for w in weights[: len(self.encoder.layers)]]
            decoder = [F.linear(source, w[dim : 2 * dim]).to(dtype) for w in weights[len(self.encoder.layers) :]]
            if len(self._position_cache) >= 8:  # a few input sizes at most; forget the oldest
                self._position_cache.pop(next(iter(self._position_cache)))
            # The entry keeps `pos` alive, so its storage cannot be reused by another tensor.
            cached = self._position_cache[key] = (encoder, decoder, pos)
        return cached[0], cached[1]

    def _memo_parameters(self, vertex_graph) -> list[torch.Tensor]:
        assert self._constant_queries is not None  # the memo is only built for constant queries
        layer = _decoder_layers(self)[0]
        modules = [layer.self_attn, layer.norm1, layer.norm2, layer.multihead_attn]
        if layer.graph_block is not None:
            modules.append(layer.graph_block)
        tensors = [p for module in modules for p in module.parameters()] + list(self._constant_queries)
        return tensors + ([vertex_graph] if vertex_graph is not None else [])

    def _first_layer(self, queries: torch.Tensor, vertex_graph, device, dtype) -> _FirstLayerMemo:
        key = (_fingerprint(self._memo_parameters(vertex_graph)), str(device), dtype)
        if self._memo is not None and self._memo.key == key:
            return self._memo
        assert self._constant_queries is not None  # the memo is only built for constant queries
        expected = torch.cat([t.to(device=queries.device) for t in self._constant_queries])
        if (queries.shape[0] > 1 and queries.stride(0) != 0) or not torch.equal(queries[0], expected.to(queries.dtype)):
            raise RuntimeError("FastTransformer: the decoder input is not the constant query tokens it was built for")
        layer = _decoder_layers(self)[0]
        mask = self._mask.get(device, dtype)
        tokens, weights = decoder_self_attention(layer, queries[:1], mask, vertex_graph, need_weights=True)
        self._memo = _FirstLayerMemo(key, tokens, cross_query(layer, tokens), weights)
        return self._memo

    # ------------------------------------------------------------------ forward
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
        if self.training or torch.is_grad_enabled():
            return super().forward(
                image_tokens, camera_token, query_tokens, pos, self_attn_mask, vertex_graph, need_weights
            )
        if (self_attn_mask is None) != self._mask.is_none:
            raise RuntimeError("FastTransformer: called with a different self-attention mask than it was built for")
        batch_size, num_image_tokens, _ = image_tokens.shape
        device, dtype = image_tokens.device, image_tokens.dtype
        encoder_terms, decoder_terms = self._position_terms(pos, dtype)

        encoded = torch.cat([camera_token, image_tokens], dim=1)
        for encoder_block, qk_pos in zip(_encoder_layers(self), encoder_terms):
            encoded = encoder_layer(encoder_block, encoded, qk_pos)
        encoded = _norm(encoded, self.encoder.norm)
        camera_feature, memory = encoded.split([1, num_image_tokens], dim=1)

        mask = self._mask.get(device, dtype)
        layers = list(_decoder_layers(self))
        self_maps, cross_maps = [], []
        tokens = query_tokens
        if self._constant_queries is not None:
            memo = self._first_layer(query_tokens, vertex_graph, device, dtype)
            shape = (batch_size,) + tuple(memo.tokens.shape[1:])
            query = memo.query.expand(batch_size, *memo.query.shape[1:])
            tokens, cross = decoder_cross_and_feedforward(
                layers[0], memo.tokens.expand(shape), query, memory, decoder_terms[0], need_weights
            )
            weights = memo.self_weights
            self_maps.append(weights.expand(batch_size, *weights.shape[1:]) if need_weights else None)
            cross_maps.append(cross)
            layers, decoder_terms = layers[1:], decoder_terms[1:]
        for layer, k_pos in zip(layers, decoder_terms):
            tokens, weights = decoder_self_attention(layer, tokens, mask, vertex_graph, need_weights)
            query = cross_query(layer, tokens)
            tokens, cross = decoder_cross_and_feedforward(layer, tokens, query, memory, k_pos, need_weights)
            self_maps.append(weights)
            cross_maps.append(cross)
        tokens = _norm(tokens, self.decoder.norm)
        return TransformerOutput(camera_feature, memory, tokens, self_maps, cross_maps)

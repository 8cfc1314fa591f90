"""The FastMETRO network (paper Sections 3.1-3.3) and its typed configuration.

Data flow for images (B, 3, H, W) (ImageNet-normalised; 224 x 224 gives a 7 x 7 feature map):

1. backbone -> (B, C, h, w); ``conv_1x1`` -> (B, D1, h, w); flatten -> image tokens (B, hw, D1).
2. ``transformer_1`` (D1 = 512): encoder over [camera token; image tokens], decoder over the
   learnable joint and vertex tokens with the mesh attention mask.
3. progressive dimensionality reduction D1 -> D2 (Linear layers).
4. ``transformer_2`` (D2 = 128): the same structure on the reduced features.
5. ``cam_predictor`` -> weak-perspective camera (s, tx, ty); ``xyz_regressor`` -> 3D joints and
   coarse vertices (metres); coarse-to-fine upsampling -> every mesh level; ``joint_regressor``
   on the fine mesh -> ``mesh_joints``.
6. optional (released ``_smpl`` checkpoints): SMPL parameters regressed from the detached
   intermediate mesh, and the SMPL mesh when a body model is attached.

The outputs are the raw network outputs, exactly as released: not root-centred. The camera
applies to root-centred points (:func:`fastmetro.conventions.root_centred`).

State-dict names equal the released checkpoints' (except the ResNet backbone, whose timm names
map one-to-one). The attention mask, the fixed upsampling matrices and the joint regressor are
non-persistent buffers: derived from the topology, never stored in checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fastmetro.errors import FastMetroError
from fastmetro.model.backbone import backbone_channels, build_backbone
from fastmetro.model.graph_conv import normalized_adjacency
from fastmetro.model.position_encoding import PositionEncodingSine
from fastmetro.model.smpl_regressor import SMPLParameterRegressor
from fastmetro.model.transformer import ACTIVATIONS, Transformer

if TYPE_CHECKING:
    from fastmetro.model.metro import METRO

DIM_REDUCTIONS = ("shared", "separate")
UPSAMPLINGS = ("fixed", "learnable_coarse", "learnable")
ATTENTION_MASKS = ("mesh", "none", "half_heads")


class ArchitectureOptions:
    """``replace`` (checked option names) and ``to_dict`` for the frozen architecture dataclasses."""

    KIND = "FastMETRO"

    def replace(self, **changes):
        """A copy with ``changes``; an unknown option name is a one-line error listing the valid ones."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise FastMetroError(f"unknown {self.KIND} config option(s) {sorted(unknown)}; valid: {valid}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # a mixin of dataclasses


@dataclass(frozen=True)
class FastMETROConfig(ArchitectureOptions):
    """Architecture of one FastMETRO network (everything except the mesh topology).

    Attributes:
        backbone: timm architecture name (``resnet50``, ``hrnet_w64``, ``resnet18``...).
        backbone_keeps_classifier: keep the backbone's unused classifier (released HRNet-W64).
        backbone_pretrained_tag: timm weights tag used by ``pretrained=True`` (e.g. ``tv_in1k``).
        num_encoder_layers / num_decoder_layers: layers in *each* of the two transformers
            (S: 1, M: 2, L: 3).
        model_dims: widths of transformer 1 and 2 (512, 128). Equal widths = no progressive
            dimensionality reduction (Table 4), and then no reduction layers exist.
        feedforward_dims: FFN hidden sizes (2048, 512).
        num_heads, dropout, activation: as in the paper (8, 0.1, relu).
        dim_reduction: ``"shared"`` (paper: one Linear for camera + image encoder outputs) or
            ``"separate"`` (release: ``dim_reduce_enc_cam`` and ``dim_reduce_enc_img``).
        upsampling: ``"fixed"`` (paper: sparse topology matrices for every level),
            ``"learnable_coarse"`` (release: a learnable Linear for the coarse -> next level step
            when the topology has an intermediate level, fixed afterwards), or ``"learnable"``
            (Table 4: a Linear for every step).
        attention_mask: ``"mesh"`` (paper), ``"none"`` or ``"half_heads"`` (Table 4: masked in
            the first half of the heads only).
        graph_convolutions: add a graph-convolution block to every decoder layer (Table 4; use
            with ``attention_mask="none"``).
        smpl_parameter_regressor: add the released SMPL parameter regressor (needs a topology
            with an intermediate level; ``FastMETRO-L-H64_smpl_*`` checkpoints).
    """

    backbone: str = "resnet50"
    backbone_keeps_classifier: bool = False
    backbone_pretrained_tag: str | None = None
    num_encoder_layers: int = 1
    num_decoder_layers: int = 1
    model_dims: tuple[int, int] = (512, 128)
    feedforward_dims: tuple[int, int] = (2048, 512)
    num_heads: int = 8
    dropout: float = 0.1
    activation: str = "relu"
    dim_reduction: str = "shared"
    upsampling: str = "fixed"
    attention_mask: str = "mesh"
    graph_convolutions: bool = False
    smpl_parameter_regressor: bool = False

    def __post_init__(self):
        problems = _type_problems(self)
        if problems:  # values of the wrong type (e.g. from a damaged checkpoint JSON)
            raise FastMetroError("invalid FastMETRO config: " + "; ".join(problems))
        # JSON round trips give lists; keep tuples so configs compare and hash.
        object.__setattr__(self, "model_dims", tuple(int(d) for d in self.model_dims))
        object.__setattr__(self, "feedforward_dims", tuple(int(d) for d in self.feedforward_dims))
        if len(self.model_dims) != 2 or len(self.feedforward_dims) != 2:
            problems.append("model_dims and feedforward_dims need one entry per transformer (2)")
        elif any(d % self.num_heads or d % 2 for d in self.model_dims):
            problems.append(f"model_dims {self.model_dims} must be even and divisible by num_heads={self.num_heads}")
        if self.num_encoder_layers < 1 or self.num_decoder_layers < 1:
            problems.append("need at least one encoder and one decoder layer")
        if self.dim_reduction not in DIM_REDUCTIONS:
            problems.append(f"dim_reduction must be one of {DIM_REDUCTIONS}")
        if self.upsampling not in UPSAMPLINGS:
            problems.append(f"upsampling must be one of {UPSAMPLINGS}")
        if self.attention_mask not in ATTENTION_MASKS:
            problems.append(f"attention_mask must be one of {ATTENTION_MASKS}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {tuple(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must be in [0, 1)")
        if problems:
            raise FastMetroError("invalid FastMETRO config: " + "; ".join(problems))


_INT_LIMITS = {"num_encoder_layers": 64, "num_decoder_layers": 64, "num_heads": 1024}


def _type_problems(config: FastMETROConfig) -> list[str]:
    """Fields of the wrong type or out of any sensible range (checked before using them)."""
    problems = []
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    for name, limit in _INT_LIMITS.items():
        value = getattr(config, name)
        if not is_int(value) or not 1 <= value <= limit:
            problems.append(f"{name} must be an integer in 1..{limit}, got {value!r}")
    for name in ("model_dims", "feedforward_dims"):
        value = getattr(config, name)
        if not isinstance(value, (list, tuple)) or not all(is_int(d) and 1 <= d <= 65536 for d in value):
            problems.append(f"{name} must be a list of positive integers, got {value!r}")
    for name in ("backbone", "activation", "dim_reduction", "upsampling", "attention_mask"):
        if not isinstance(getattr(config, name), str):
            problems.append(f"{name} must be a string, got {getattr(config, name)!r}")
    for name in ("backbone_keeps_classifier", "graph_convolutions", "smpl_parameter_regressor"):
        if not isinstance(getattr(config, name), bool):
            problems.append(f"{name} must be true or false, got {getattr(config, name)!r}")
    if not isinstance(config.dropout, (int, float)) or isinstance(config.dropout, bool):
        problems.append(f"dropout must be a number, got {config.dropout!r}")
    return problems


def mesh_attention_mask(num_joints: int, coarse_adjacency: sp.spmatrix) -> torch.Tensor:
    """Bool (K+N, K+N) decoder self-attention mask; True = may not attend.

    Joint rows are all False (joints attend to every token). A vertex row is False on every
    joint column, on the vertex itself and on its 1-ring neighbours in the coarse mesh.
    """
    num_vertices = coarse_adjacency.shape[0]
    allowed = sp.csr_matrix(coarse_adjacency).toarray() != 0  # type: ignore[call-overload]  # scipy-stubs: spmatrix is not an _spbase
    np.fill_diagonal(allowed, True)
    mask = torch.zeros(num_joints + num_vertices, num_joints + num_vertices, dtype=torch.bool)
    mask[num_joints:, num_joints:] = torch.from_numpy(~allowed)
    return mask


class SparseUpsampling(nn.Module):
    """A fixed sparse (V_out, V_in) matrix applied along the vertex axis: (B, V_in, C) -> (B, V_out, C).

    Stored as COO non-persistent buffers; computed with gather + index_add (works on every
    device and dtype, differentiable in the input).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor

    def __init__(self, matrix: sp.spmatrix):
        super().__init__()
        coo = sp.coo_matrix(matrix)  # type: ignore[call-overload]  # scipy-stubs: spmatrix is not an _spbase
        self.out_vertices, self.in_vertices = coo.shape
        self.register_buffer("rows", torch.as_tensor(coo.row, dtype=torch.long), persistent=False)
        self.register_buffer("cols", torch.as_tensor(coo.col, dtype=torch.long), persistent=False)
        self.register_buffer("values", torch.as_tensor(coo.data, dtype=torch.float32), persistent=False)

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        contributions = vertices[:, self.cols] * self.values.to(vertices.dtype)[None, :, None]
        out = vertices.new_zeros(vertices.shape[0], self.out_vertices, vertices.shape[2])
        return out.index_add(1, self.rows, contributions)

    def extra_repr(self) -> str:
        return f"{self.in_vertices} -> {self.out_vertices}, nnz={self.values.numel()}"


class VertexLinear(nn.Linear):
    """A learnable upsampling step: Linear(V_in -> V_out) along the vertex axis of (B, V_in, C)."""

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        return super().forward(vertices.transpose(1, 2)).transpose(1, 2)


def level_name(level: int, num_levels: int) -> str:
    if level == 0:
        return "fine"
    if level == num_levels - 1:
        return "coarse"
    return "intermediate" if num_levels == 3 else f"level{level}"


#: The camera head's initial output (s, tx, ty) for a network trained from random weights.
INITIAL_CAMERA = (0.9, 0.0, 0.0)


def mesh_outputs(camera: torch.Tensor, joints: torch.Tensor, levels, joint_regressor: torch.Tensor) -> dict:
    """The output dict of a mesh network (FastMETRO and the METRO-style baseline alike).

    camera (B, 3); joints (B, K, 3); levels: vertices per level, fine (B, V0, 3) first and coarse
    last; joint_regressor (K, V0). Adds ``mesh_joints`` (B, K, 3) regressed from the fine mesh and,
    for three levels, ``intermediate_vertices`` (the level the SMPL parameter regressor reads).
    """
    fine = levels[0]
    output = {
        "camera": camera,
        "joints": joints,
        "coarse_vertices": levels[-1],
        "fine_vertices": fine,
        "vertices_by_level": levels,
        "mesh_joints": torch.einsum("kv,bvc->bkc", joint_regressor.to(fine.dtype), fine),
    }
    if len(levels) == 3:
        output["intermediate_vertices"] = levels[1]
    return output


class FastMETRO(nn.Module):
    """FastMETRO for a given :class:`~fastmetro.topology.Topology`.

    ``forward(images, return_attention=False)`` with images (B, 3, H, W) returns a dict
    (coordinates in metres, not root-centred):

    - ``camera`` (B, 3): weak-perspective (s, tx, ty); image point = s * (X[:, :2] + t) in
      crop-normalised [-1, 1] coordinates.
    - ``joints`` (B, K, 3): from the joint tokens.
    - ``coarse_vertices`` (B, V_L, 3), ``intermediate_vertices`` (B, V_1, 3) (3-level topologies
      only), ``fine_vertices`` (B, V_0, 3); ``vertices_by_level``: all levels, index 0 = fine.
    - ``mesh_joints`` (B, K, 3) = ``joint_regressor @ fine_vertices``.
    - with ``return_attention``: ``attention = {"self": [...], "cross": [...]}``, one
      (B, heads, K+N, K+N) / (B, heads, K+N, h*w) map per decoder layer of transformer 1 then
      transformer 2; and ``feature_size = (h, w)``.
    """

    attention_mask: torch.Tensor | None
    vertex_graph: torch.Tensor | None
    _body_model: nn.Module | None
    joint_regressor: torch.Tensor

    def __init__(self, config: FastMETROConfig, topology, pretrained_backbone: bool = False, spec=None):
        super().__init__()
        self.config = config
        self.spec = spec  # ModelSpec (what this model is; set by create_model / load_model)
        self.topology = topology  # plain attribute: faces, flips, names for callers
        self.num_joints = topology.num_joints
        self.level_vertex_counts = tuple(topology.level_vertex_counts)
        num_coarse = topology.num_coarse_vertices
        dim_1, dim_2 = config.model_dims
        ffn_1, ffn_2 = config.feedforward_dims

        # Module creation order = the released state_dict order.
        self.backbone = build_backbone(
            config.backbone, config.backbone_keeps_classifier, pretrained_backbone, config.backbone_pretrained_tag
        )
        transformer_args: dict[str, Any] = dict(
            num_heads=config.num_heads,
            num_encoder_layers=config.num_encoder_layers,
            num_decoder_layers=config.num_decoder_layers,
            dropout=config.dropout,
            activation=config.activation,
            graph_blocks=config.graph_convolutions,
        )
        self.transformer_1 = Transformer(dim_1, ffn_dim=ffn_1, **transformer_args)
        self.transformer_2 = Transformer(dim_2, ffn_dim=ffn_2, **transformer_args)
        self.reduces_dims = dim_1 != dim_2
        if self.reduces_dims:
            if config.dim_reduction == "shared":
                self.dim_reduce_enc = nn.Linear(dim_1, dim_2)
            else:
                self.dim_reduce_enc_cam = nn.Linear(dim_1, dim_2)
                self.dim_reduce_enc_img = nn.Linear(dim_1, dim_2)
            self.dim_reduce_dec = nn.Linear(dim_1, dim_2)
        self.cam_token_embed = nn.Embedding(1, dim_1)
        self.joint_token_embed = nn.Embedding(self.num_joints, dim_1)
        self.vertex_token_embed = nn.Embedding(num_coarse, dim_1)
        self.xyz_regressor = nn.Linear(dim_2, 3)
        self.cam_predictor = nn.Linear(dim_2, 3)
        # Start at the mean weak-perspective camera (s, tx, ty) = (0.9, 0, 0), as HMR/SPIN do: from
        # random weights the root-centred points are ~0 for the first hundreds of steps, so the 2D
        # loss alone pulls s towards 0 and t large (every joint projected onto the mean 2D point), a
        # solution it did not leave (measured: a 2,000-step demo run ended with s = -0.03). No RNG
        # is drawn, so seeded initialisations of every other layer are unchanged; loaded weights
        # (released or ours) replace these values.
        with torch.no_grad():
            self.cam_predictor.weight.zero_()
            self.cam_predictor.bias.copy_(torch.tensor(INITIAL_CAMERA))
        self.conv_1x1 = nn.Conv2d(backbone_channels(self.backbone), dim_1, kernel_size=1)
        self.position_encoding_1 = PositionEncodingSine(dim_1)
        self.position_encoding_2 = PositionEncodingSine(dim_2)

        # Coarse-to-fine steps, coarsest first; each maps (B, V_{l+1}, 3) -> (B, V_l, 3).
        num_levels = topology.num_levels
        self.upsampling_steps: list[str] = []
        for level in range(num_levels - 2, -1, -1):
            name = f"{level_name(level + 1, num_levels)}2{level_name(level, num_levels)}_upsample"
            learnable = config.upsampling == "learnable" or (
                config.upsampling == "learnable_coarse" and level == num_levels - 2 and num_levels >= 3
            )
            counts = self.level_vertex_counts
            step = (
                VertexLinear(counts[level + 1], counts[level])
                if learnable
                else SparseUpsampling(topology.upsample[level])
            )
            self.add_module(name, step)
            self.upsampling_steps.append(name)
        if config.smpl_parameter_regressor:
            if num_levels < 3:
                raise FastMetroError("the SMPL parameter regressor needs a topology with an intermediate level")
            self.smpl_parameter_regressor = SMPLParameterRegressor(self.level_vertex_counts[1])
        # Optional SMPL layer for `smpl_vertices` (attach_body_model); kept out of the module tree
        # so it never enters state dicts.
        object.__setattr__(self, "_body_model", None)

        mask: torch.Tensor | None
        mask = mesh_attention_mask(self.num_joints, topology.coarse_adjacency)
        if config.attention_mask == "none":
            mask = None
        elif config.attention_mask == "half_heads":
            per_head = torch.zeros(config.num_heads, *mask.shape, dtype=torch.bool)
            per_head[: config.num_heads // 2] = mask
            mask = per_head
        self.register_buffer("attention_mask", mask, persistent=False)
        graph = torch.from_numpy(normalized_adjacency(topology.coarse_adjacency)) if config.graph_convolutions else None
        self.register_buffer("vertex_graph", graph, persistent=False)
        self.register_buffer(
            "joint_regressor", torch.tensor(np.array(topology.joint_regressor), dtype=torch.float32),
            persistent=False,
        )  # fmt: skip

    # ------------------------------------------------------------------ helpers
    def attach_body_model(self, body_model: nn.Module | None) -> None:
        """Attach an SMPL layer (``layer(rotmat (B, 24, 3, 3), betas (B, 10)).vertices``, e.g.
        :func:`fastmetro.data.body_models.load_body_model`) so that models with the SMPL
        parameter regressor also return ``smpl_vertices``. None detaches it."""
        if body_model is not None and not self.config.smpl_parameter_regressor:
            raise FastMetroError("this model has no SMPL parameter regressor to drive a body model")
        object.__setattr__(self, "_body_model", body_model)

    def _self_attention_mask(self, batch_size: int) -> torch.Tensor | None:
        mask = self.attention_mask
        if mask is None or mask.dim() == 2:
            return mask
        # Per-head mask -> (B * heads, L, L), batch-major as nn.MultiheadAttention expects.
        return mask.unsqueeze(0).expand(batch_size, -1, -1, -1).reshape(-1, *mask.shape[1:])

    def _reduce(self, camera, image, tokens):
        if not self.reduces_dims:
            return camera, image, tokens
        if self.config.dim_reduction == "shared":
            return self.dim_reduce_enc(camera), self.dim_reduce_enc(image), self.dim_reduce_dec(tokens)
        return self.dim_reduce_enc_cam(camera), self.dim_reduce_enc_img(image), self.dim_reduce_dec(tokens)

    def upsample(self, coarse_vertices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, V_L, 3) coarse vertices -> every level, index 0 = fine."""
        levels = [coarse_vertices]
        for name in self.upsampling_steps:
            levels.append(getattr(self, name)(levels[-1]))
        return tuple(reversed(levels))

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> backbone feature map (B, C, h, w)."""
        return self.backbone.forward_features(images)  # type: ignore[operator]  # a timm model's method

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise FastMetroError(f"images: expected a (B, 3, H, W) tensor, got shape {tuple(images.shape)}")
        return self.forward_from_features(self.backbone_features(images), return_attention)

    def forward_from_features(self, features: torch.Tensor, return_attention: bool = False) -> dict:
        """Everything after the backbone: features (B, C, h, w) -> the output dict of ``forward``.
        (Training with a frozen backbone runs this on cached feature maps.)"""
        batch_size = features.shape[0]
        feature_map = self.conv_1x1(features)
        height, width = feature_map.shape[-2:]
        image_tokens = feature_map.flatten(2).transpose(1, 2)
        pos_1 = self.position_encoding_1(batch_size, height, width, features.device, image_tokens.dtype)
        pos_2 = self.position_encoding_2(batch_size, height, width, features.device, image_tokens.dtype)
        camera_token = self.cam_token_embed.weight.unsqueeze(0).expand(batch_size, -1, -1)
        query_tokens = torch.cat([self.joint_token_embed.weight, self.vertex_token_embed.weight])
        query_tokens = query_tokens.unsqueeze(0).expand(batch_size, -1, -1)
        mask = self._self_attention_mask(batch_size)

        first = self.transformer_1(
            image_tokens, camera_token, query_tokens, pos_1.flatten(2).transpose(1, 2),
            mask, self.vertex_graph, return_attention,
        )  # fmt: skip
        camera_2, image_2, tokens_2 = self._reduce(first.camera_feature, first.image_features, first.token_features)
        second = self.transformer_2(
            image_2, camera_2, tokens_2, pos_2.flatten(2).transpose(1, 2), mask, self.vertex_graph, return_attention
        )

        camera = self.cam_predictor(second.camera_feature).reshape(batch_size, 3)
        coordinates = self.xyz_regressor(second.token_features)
        joints, coarse = coordinates.split([self.num_joints, coordinates.shape[1] - self.num_joints], dim=1)
        levels = self.upsample(coarse)
        output = mesh_outputs(camera, joints, levels, self.joint_regressor)
        if self.config.smpl_parameter_regressor:
            output["smpl_rotmat"], output["smpl_betas"] = self.smpl_parameter_regressor(levels[1])
            if self._body_model is not None:
                layer = self._body_model.to(coordinates.device)
                output["smpl_vertices"] = layer(output["smpl_rotmat"], output["smpl_betas"]).vertices
        if return_attention:
            output["attention"] = {
                "self": first.self_attention + second.self_attention,
                "cross": first.cross_attention + second.cross_attention,
            }
            output["feature_size"] = (int(height), int(width))
        return output


def parameter_counts(model: FastMETRO | METRO) -> dict[str, int]:
    """``backbone_params``, ``transformer_params`` (everything else, as the paper counts) and
    ``total_params``: all parameters (all are trainable when built, as the released script counts)."""
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    return {"backbone_params": backbone, "transformer_params": total - backbone, "total_params": total}

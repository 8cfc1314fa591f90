"""A METRO-style transformer-encoder baseline (Lin, Wang, Liu, "End-to-End Human Pose and Mesh
Reconstruction with Transformers", CVPR 2021): the token design FastMETRO argues against.

Built from the same :class:`~fastmetro.topology.Topology` as FastMETRO and returning the same
output dict, so the same engine (``fastmetro train``), :class:`~fastmetro.engine.losses.MeshCriterion`,
evaluation and benchmark run it. Data flow for images (B, 3, H, W):

1. backbone -> feature map (B, C, h, w) -> global average pool -> one C-d image feature
   (METRO's paper design; C = 2048 for ResNet-50 and HRNet-W64).
2. K + N tokens (SMPL: 14 joints + 431 coarse vertices), token i = [template point i (3);
   image feature (C)] (METRO order: coordinates first). Template points are the topology's
   rest mesh: its regressed joints and its coarse-level vertices, centred on the root point
   (``root_regressor @ template``). Without a template (``topology.template is None``) the
   three coordinate channels are zero; tokens then differ only by METRO's learnable per-token
   position embeddings.
3. three encoder blocks with progressive dimensionality reduction, as METRO released them:
   input widths 2051 -> 512 -> 128, hidden widths 1024 -> 256 -> 128, outputs 512 -> 128 -> 3;
   each block = Linear(in -> hidden) + learnable position embedding per token, 4 post-norm BERT
   layers (4 heads, FFN 3072 = METRO's "legacy setting", GELU, LayerNorm eps 1e-12, dropout
   0.1), then Linear(hidden -> out) plus a linear skip Linear(in -> out) from the block input.
4. the last block's 3-d outputs are the joints (K) and coarse vertices (N); learnable
   upsampling Linear layers along the vertex axis give every finer level (SMPL 431 -> 1723 ->
   6890, MANO 195 -> 778), as METRO.
5. camera (METRO has no camera token): Linear(3 -> 1) on every coarse vertex, Linear(N -> 250),
   Linear(250 -> 3) -> weak-perspective (s, tx, ty), METRO's body head. (METRO's hand head read
   joints and vertices with a 150 hidden width; one head is used here for every topology.)

Parameter counts (``fastmetro models``): METRO logs its "transformer" as the three encoder
blocks. Released, each block is a full BERT model, including a 30,522-word embedding table,
token-type and position embeddings, an embedding LayerNorm and a pooler that METRO never uses;
those are omitted here (and the learnable position table has K + N rows, not 512), so
:func:`metro_parameter_counts` ``encoder_params`` + :data:`METRO_UNUSED_BERT_PARAMS` equals
METRO's published 102,256,646 for 445 tokens.

Initialisation as BERT: Linear/Embedding weights N(0, 0.02), biases 0, LayerNorm (1, 0); the
upsampling and camera layers keep PyTorch's defaults (as METRO).

Not reproduced: METRO's masked vertex/joint modelling (a training-time input masking), and the
later released body variant that replaces the global feature by a Conv1d over the 7 x 7 grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fastmetro.errors import FastMetroError
from fastmetro.model.backbone import BACKBONES, backbone_channels, build_backbone
from fastmetro.model.fastmetro import ArchitectureOptions, VertexLinear, level_name, mesh_outputs

#: Parameters of METRO's released encoder blocks that it never uses (445 tokens, legacy widths
#: 1024/256/128): BERT word embeddings 30522 x (1024 + 256 + 128) = 42,974,976, BERT position
#: embeddings 512 x 1408 = 720,896, token types 2 x 1408 = 2,816, embedding LayerNorms 2,816,
#: poolers 1,049,600 + 65,792 + 16,512 = 1,131,904, and 512 - 445 = 67 rows of its own
#: position tables x 1408 = 94,336.
METRO_UNUSED_BERT_PARAMS = 42_974_976 + 720_896 + 2_816 + 2_816 + 1_131_904 + 94_336
#: METRO's published transformer size (its EXP.md log; blocks only, with the unused parts).
METRO_PUBLISHED_TRANSFORMER_PARAMS = 102_256_646

_NAME = re.compile(r"^metro-([a-z0-9]+)$", re.IGNORECASE)


@dataclass(frozen=True)
class METROConfig(ArchitectureOptions):
    """Architecture of a METRO-style network (see the module docstring).

    Attributes:
        backbone, backbone_keeps_classifier, backbone_pretrained_tag: as in FastMETROConfig.
        hidden_dims: hidden width of each encoder block (1024, 256, 128).
        output_dims: output width of every block but the last (512, 128); the last outputs 3.
        num_layers: BERT layers per block (4).
        num_heads: attention heads (4).
        intermediate_size: FFN width (3072, METRO's legacy setting); None = 4 x hidden.
        dropout: 0.1. activation: "gelu" (BERT).
        camera_hidden: hidden width of the camera head (250).
    """

    KIND = "METRO"

    backbone: str = "resnet50"
    backbone_keeps_classifier: bool = False
    backbone_pretrained_tag: str | None = None
    hidden_dims: tuple[int, ...] = (1024, 256, 128)
    output_dims: tuple[int, ...] = (512, 128)
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = 3072
    dropout: float = 0.1
    activation: str = "gelu"
    camera_hidden: int = 250

    def __post_init__(self):
        object.__setattr__(self, "hidden_dims", tuple(int(d) for d in self.hidden_dims))
        object.__setattr__(self, "output_dims", tuple(int(d) for d in self.output_dims))
        problems = []
        if len(self.output_dims) != len(self.hidden_dims) - 1:
            problems.append("output_dims needs one entry fewer than hidden_dims (the last block outputs 3)")
        if any(d % self.num_heads for d in self.hidden_dims):
            problems.append(f"hidden_dims {self.hidden_dims} must be divisible by num_heads={self.num_heads}")
        if self.num_layers < 1 or not self.hidden_dims:
            problems.append("need at least one block and one layer per block")
        if self.activation not in ("relu", "gelu"):
            problems.append("activation must be relu or gelu")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must be in [0, 1)")
        if problems:
            raise FastMetroError("invalid METRO config: " + "; ".join(problems))


def is_metro_name(name) -> bool:
    return name is not None and bool(_NAME.match(str(name).strip()))


def metro_preset_names() -> list[str]:
    return [f"METRO-{backbone}" for backbone in BACKBONES]


def canonical_metro_name(name: str) -> str:
    match = _NAME.match(str(name).strip())
    if not match or match.group(1).upper() not in BACKBONES:
        raise FastMetroError(f"unknown model {name!r}: expected METRO-<{'|'.join(BACKBONES)}>, e.g. METRO-R50")
    return f"METRO-{match.group(1).upper()}"


def metro_config(name: str, **overrides) -> METROConfig:
    """Config of ``METRO-<backbone>`` (R50, H64, or the light R18/R34), with field overrides."""
    spec = BACKBONES[canonical_metro_name(name).split("-", 1)[1]]
    fields = {
        "backbone": spec.timm_name,
        "backbone_keeps_classifier": spec.keeps_classifier,
        "backbone_pretrained_tag": spec.pretrained_tag,
    }
    if "backbone" in overrides and "backbone_pretrained_tag" not in overrides:
        overrides = {"backbone_pretrained_tag": None, "backbone_keeps_classifier": False, **overrides}
    return METROConfig().replace(**fields).replace(**overrides)


class METROBlock(nn.Module):
    """One METRO encoder block: (B, T, in) -> (B, T, out) (see the module docstring, step 3)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_tokens: int, config: METROConfig):
        super().__init__()
        ffn = config.intermediate_size or 4 * hidden
        self.img_embedding = nn.Linear(in_dim, hidden)
        self.position_embeddings = nn.Embedding(num_tokens, hidden)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            hidden, config.num_heads, ffn, config.dropout, activation=config.activation,
            layer_norm_eps=1e-12, batch_first=True, norm_first=False,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.cls_head = nn.Linear(hidden, out_dim)
        self.residual = nn.Linear(in_dim, out_dim)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.MultiheadAttention):
                nn.init.normal_(module.in_proj_weight, std=0.02)
                nn.init.zeros_(module.in_proj_bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.img_embedding(tokens) + self.position_embeddings.weight)
        return self.cls_head(self.encoder(hidden)) + self.residual(tokens)


def reference_points(topology) -> np.ndarray:
    """(K + N, 3) template joints then coarse vertices, root-centred; zeros without a template."""
    count = topology.num_joints + topology.num_coarse_vertices
    if topology.template is None:
        return np.zeros((count, 3), dtype=np.float32)
    template = np.asarray(topology.template, dtype=np.float64)
    root = np.asarray(topology.root_regressor) @ template
    joints = np.asarray(topology.joint_regressor) @ template
    coarse = topology.downsample(template, topology.num_levels - 1)
    return (np.concatenate([joints, coarse]) - root).astype(np.float32)


class METRO(nn.Module):
    """The METRO-style network for a topology; ``forward(images)`` returns FastMETRO's output dict
    (``camera``, ``joints``, ``coarse_vertices``, ``intermediate_vertices`` (3 levels),
    ``fine_vertices``, ``vertices_by_level``, ``mesh_joints``; metres, not root-centred)."""

    reference_points: torch.Tensor
    joint_regressor: torch.Tensor

    def __init__(self, config: METROConfig, topology, pretrained_backbone: bool = False, spec=None):
        super().__init__()
        self.config = config
        self.spec = spec  # ModelSpec (set by create_model / load_model)
        self.topology = topology
        self.num_joints = topology.num_joints
        self.level_vertex_counts = tuple(topology.level_vertex_counts)
        num_coarse = topology.num_coarse_vertices
        num_tokens = self.num_joints + num_coarse
        self.backbone = build_backbone(
            config.backbone, config.backbone_keeps_classifier, pretrained_backbone, config.backbone_pretrained_tag
        )
        in_dims = (backbone_channels(self.backbone) + 3,) + config.output_dims
        out_dims = config.output_dims + (3,)
        self.blocks = nn.ModuleList(
            METROBlock(i, h, o, num_tokens, config) for i, h, o in zip(in_dims, config.hidden_dims, out_dims)
        )
        self.cam_param_fc = nn.Linear(3, 1)
        self.cam_param_fc2 = nn.Linear(num_coarse, config.camera_hidden)
        self.cam_param_fc3 = nn.Linear(config.camera_hidden, 3)
        num_levels = topology.num_levels
        self.upsampling_steps: list[str] = []
        for level in range(num_levels - 2, -1, -1):
            name = f"{level_name(level + 1, num_levels)}2{level_name(level, num_levels)}_upsample"
            self.add_module(name, VertexLinear(self.level_vertex_counts[level + 1], self.level_vertex_counts[level]))
            self.upsampling_steps.append(name)
        self.register_buffer("reference_points", torch.from_numpy(reference_points(topology)), persistent=False)
        self.register_buffer(
            "joint_regressor", torch.tensor(np.array(topology.joint_regressor), dtype=torch.float32),
            persistent=False,
        )  # fmt: skip

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> backbone feature map (B, C, h, w)."""
        return self.backbone.forward_features(images)  # type: ignore[operator]  # a timm model's method

    def upsample(self, coarse_vertices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, V_L, 3) coarse vertices -> every level, index 0 = fine."""
        levels = [coarse_vertices]
        for name in self.upsampling_steps:
            levels.append(getattr(self, name)(levels[-1]))
        return tuple(reversed(levels))

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise FastMetroError(f"images: expected a (B, 3, H, W) tensor, got shape {tuple(images.shape)}")
        if return_attention:
            raise FastMetroError("the METRO baseline does not return attention maps")
        batch_size = images.shape[0]
        feature = self.backbone_features(images).mean(dim=(2, 3))  # global average pool (B, C)
        points = self.reference_points.to(feature.dtype)
        tokens = torch.cat([points.expand(batch_size, -1, -1), feature[:, None].expand(-1, points.shape[0], -1)], dim=2)
        for block in self.blocks:
            tokens = block(tokens)
        joints, coarse = tokens.split([self.num_joints, tokens.shape[1] - self.num_joints], dim=1)
        camera = self.cam_param_fc3(self.cam_param_fc2(self.cam_param_fc(coarse).transpose(1, 2)))
        return mesh_outputs(camera.reshape(batch_size, 3), joints, self.upsample(coarse), self.joint_regressor)


def metro_parameter_counts(model: METRO) -> dict[str, int]:
    """``encoder_params`` (the three blocks: what METRO logs as its transformer),
    ``upsampling_params``, ``camera_params``, plus ``backbone_params`` / ``transformer_params``
    (everything but the backbone) / ``total_params`` as for FastMETRO."""

    def count(modules):
        return sum(p.numel() for module in modules for p in module.parameters())

    total = count([model])
    backbone = count([model.backbone])
    return {
        "backbone_params": backbone,
        "transformer_params": total - backbone,
        "total_params": total,
        "encoder_params": count(model.blocks),
        "upsampling_params": count(getattr(model, name) for name in model.upsampling_steps),
        "camera_params": count([model.cam_param_fc, model.cam_param_fc2, model.cam_param_fc3]),
    }

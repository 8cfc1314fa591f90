"""Small shared builders for the data tests: a tiny symmetric topology and body model, shards."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fastmetro.data.tsv import TSVDatasetWriter, lineidx_path
from fastmetro.topology import Topology, adjacency_from_faces, mirror_permutation

BODY_FLIP = (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13)
CUBE = np.array([[x, y, z] for x in (-0.1, 0.1) for y in (-0.3, 0.3) for z in (-0.05, 0.05)])
CUBE_FACES = np.array([
    [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
    [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],
])  # fmt: skip
BODY_PARENTS = [-1, 0, 1, 0, 3]


def tiny_topology() -> Topology:
    """8-vertex mirror-symmetric 'body' with 14 joints in LSP order (flip-consistent regressor)."""
    rng = np.random.default_rng(0)
    vertex_flip = mirror_permutation(CUBE)
    raw = rng.random((14, 8))
    # symmetric: R[k, i] = R[flip(k), vflip(i)], so mirror joints regress mirror vertices
    regressor = (raw + raw[list(BODY_FLIP)][:, vertex_flip]) / 2
    regressor /= regressor.sum(1, keepdims=True)
    kept = np.array([0, 2, 4, 6])
    upsample = sp.csr_matrix(np.eye(8)[:, kept])
    return Topology(
        name="tiny",
        level_vertex_counts=(8, 4),
        faces=(CUBE_FACES, np.array([[0, 1, 3], [0, 3, 2]])),
        kept_indices=(kept,),
        upsample=(upsample,),
        coarse_adjacency=adjacency_from_faces(np.array([[0, 1, 3], [0, 3, 2]]), 4),
        joint_regressor=regressor,
        joint_names=tuple(f"j{i}" for i in range(14)),
        joint_flip=BODY_FLIP,
        root_joints=(2, 3),
        root_regressor=np.full(8, 1 / 8),
        vertex_flip=vertex_flip,
        template=CUBE,
    )


def tiny_body_model_arrays(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    weights = rng.random((8, 5)) ** 3
    weights /= weights.sum(1, keepdims=True)
    regressor = rng.random((5, 8))
    regressor /= regressor.sum(1, keepdims=True)
    return {
        "v_template": CUBE,
        "shapedirs": rng.normal(scale=0.01, size=(8, 3, 10)),
        "posedirs": rng.normal(scale=0.01, size=(8, 3, 36)),
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": np.array([[-1, 0, 1, 0, 3], [0, 1, 2, 3, 4]]),
    }


def image(seed: int, height: int = 60, width: int = 80) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def label(seed: int, joints: int = 14, with_3d: bool = True) -> dict:
    rng = np.random.default_rng(seed + 100)
    out = {
        "center": [40.0, 30.0],
        "scale": 0.3,
        "2d_joints": np.concatenate([rng.uniform(10, 70, (joints, 2)), np.ones((joints, 1))], 1),
        "has_2d_joints": 1,
        "has_3d_joints": int(with_3d),
        "has_smpl": 0,
    }
    if with_3d:
        out["3d_joints"] = np.concatenate([rng.normal(scale=0.3, size=(joints, 3)), np.ones((joints, 1))], 1)
    return out


def write_shard(directory: Path, name: str, count: int, with_vertices: bool = False) -> Path:
    with TSVDatasetWriter(directory, name, image_format="png") as writer:
        for i in range(count):
            vertices = CUBE + 0.01 * i if with_vertices else None
            writer.add(f"{name}_{i}", image(i), label(i), vertices=vertices)
    return directory / f"{name}.yaml"


def replace_row(tsv_path: Path, row: int, new_line: str | bytes) -> None:
    """Rewrite one row of a tsv (and drop its .lineidx so it is regenerated)."""
    lines = tsv_path.read_bytes().splitlines(keepends=True)
    lines[row] = new_line if isinstance(new_line, bytes) else new_line.encode()
    tsv_path.write_bytes(b"".join(lines))
    lineidx_path(tsv_path).unlink(missing_ok=True)


def make_bad_shard(directory: Path) -> tuple[Path, dict[str, str]]:
    """A 7-row shard whose rows 1..5 are bad in different ways; returns (yaml, key -> kind)."""
    yaml_path = write_shard(directory, "bad", 7)
    label_tsv, img_tsv = directory / "bad.label.tsv", directory / "bad.img.tsv"
    replace_row(label_tsv, 1, 'bad_1\t[{"center": [1, 2], "scale": \n')
    wrong = label(2)
    wrong["2d_joints"] = wrong["2d_joints"][:9]
    replace_row(label_tsv, 2, "bad_2\t" + json.dumps([wrong], default=lambda a: a.tolist()) + "\n")
    nan = label(3)
    nan["3d_joints"][4, 1] = float("nan")
    replace_row(label_tsv, 3, "bad_3\t" + json.dumps([nan], default=lambda a: a.tolist()) + "\n")
    replace_row(img_tsv, 4, "bad_4\t" + base64.b64encode(b"this is not an image").decode() + "\n")
    line = img_tsv.read_bytes().splitlines(keepends=True)[5]
    replace_row(img_tsv, 5, line[: len(line) // 3] + b"\n")  # truncated payload
    kinds = {"bad_1": "JSON", "bad_2": "2d_joints", "bad_3": "NaN", "bad_4": "decodable", "bad_5": "base64|decodable"}
    return yaml_path, kinds

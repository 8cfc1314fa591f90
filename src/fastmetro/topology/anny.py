"""The built-in ``anny`` topology, made from the free Anny body model (``pip install anny``).

Level 0 is Anny's body surface: the largest connected part of its mesh, i.e. Anny's vertices
without the separate eyeballs and the teeth/tongue piece (internal, not seen in images).
``Topology.source_vertex_indices`` holds, per level-0 vertex, its index in Anny's own output,
so ``anny_output["vertices"][:, topology.source_vertex_indices]`` gives level-0 vertices.
Levels 1 and 2 come from :func:`fastmetro.topology.sampling.sample_mesh` (about 1723 and 431
vertices, as SMPL's).

Joints: the 14 of SMPL's set (LSP order, :data:`~fastmetro.topology.graphcmr.BODY_JOINT_NAMES`),
regressed linearly from level-0 vertices. Each regressor row is fitted by non-negative least
squares on vertices near the joint against Anny's skeleton over random poses and phenotypes:

=============  ==================================================================
R/L_Ankle      head of bone ``foot.R/L``
R/L_Knee       head of ``lowerleg01.R/L``
R/L_Hip        head of ``upperleg01.R/L``
R/L_Wrist      head of ``wrist.R/L``
R/L_Elbow      head of ``lowerarm01.R/L``
R/L_Shoulder   head of ``upperarm01.R/L``
Neck           head of ``neck01`` (base of the neck, like H36M's thorax)
Head           a point carried by bone ``head``: at rest it sits on the crown's vertical
               line, 68.7 % of the way from the neck base up to the crown (where H36M's
               head joint sits on the SMPL template)
=============  ==================================================================

The root regressor (mesh centring) is the mean of the two hip rows.

The topology is built once (1-3 minutes on two busy cores) and cached as
``anny-<anny version>-<hash>.npz``
in the fastmetro cache dir (``$FASTMETRO_CACHE``, default ``~/.cache/fastmetro``); the hash
covers every build parameter, so changing one rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.io import cache_dir  # re-exported: defined with the other shared I/O
from fastmetro.topology.graphcmr import BODY_JOINT_FLIP, BODY_JOINT_NAMES, BODY_ROOT_JOINTS
from fastmetro.topology.sampling import reconstruction_error, sample_mesh
from fastmetro.topology.topology import Topology, adjacency_from_faces, mirror_permutation

BUILD_VERSION = 2  # bump when the construction below changes
# (bone, side) per joint; side None = midline. Order = BODY_JOINT_NAMES.
JOINT_BONES = (
    "foot.R", "lowerleg01.R", "upperleg01.R", "upperleg01.L", "lowerleg01.L", "foot.L",
    "wrist.R", "lowerarm01.R", "upperarm01.R", "upperarm01.L", "lowerarm01.L", "wrist.L",
    "neck01", "head",
)  # fmt: skip
HEAD_HEIGHT_FRACTION = 0.687  # H36M head joint on SMPL: (head - thorax) / (crown - thorax) height
# Random pose amplitude (std of each axis-angle component, radians) per bone name without its
# side suffix (Anny's local-ref rotations are about world-aligned axes, z up, x to the left).
# Knees and elbows bend about a hinge instead (HINGES); twist/segment bones (*02) and fingers
# and toes stay at rest.
POSE_STD = {
    "root": 0.4, "pelvis": 0.05, "upperleg01": 0.45, "foot": 0.25,
    "spine01": 0.1, "spine02": 0.1, "spine03": 0.1, "spine04": 0.1, "spine05": 0.1,
    "clavicle": 0.1, "shoulder01": 0.12, "upperarm01": 0.6, "wrist": 0.35,
    "neck01": 0.12, "neck02": 0.12, "neck03": 0.12, "head": 0.25,
}  # fmt: skip
# Hinge joints: (bone, uniform angle range in radians, std of the off-hinge wobble).
HINGES = {"lowerleg01": ((-0.1, 2.0), 0.08), "lowerarm01": ((-0.7, 0.9), 0.08)}


@dataclass(frozen=True)
class AnnyBuildConfig:
    """Parameters of the Anny topology build (all enter the cache key)."""

    sizes: tuple[int, ...] = (1723, 431)
    num_fit_samples: int = 384
    num_test_samples: int = 128
    seed: int = 0
    candidate_radius: float = 0.09  # metres around each joint in the template
    head_candidate_radius: float = 0.13


def _anny_version() -> str:
    try:
        from importlib.metadata import version

        return version("anny")
    except Exception:  # noqa: BLE001 (not installed: reported when building)
        return "unknown"


def cache_path(config: AnnyBuildConfig = AnnyBuildConfig()) -> Path:
    key = json.dumps({"build": BUILD_VERSION, "anny": _anny_version(), **asdict(config)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "topology" / f"anny-{_anny_version()}-{digest}.npz"


def _progress(message: str) -> None:
    print(f"[fastmetro] {message}", file=sys.stderr, flush=True)


def load_anny(config: AnnyBuildConfig | None = None, rebuild: bool = False) -> Topology:
    """The Anny topology, from the cache or built (and cached) on first use."""
    config = config or AnnyBuildConfig()
    path = cache_path(config)
    if path.is_file() and not rebuild:
        try:
            return Topology.load(path)
        except FastMetroError as error:
            _progress(f"ignoring unreadable cached topology ({error}); rebuilding")
    topology = build_anny_topology(config)
    topology.save(path)
    _progress(f"cached the Anny topology in {path}")
    return topology


# ---------------------------------------------------------------------------- building
def _load_anny_model():
    _progress("loading the Anny body model (its very first load builds Anny's own cache and takes minutes)")
    try:
        import anny
    except ImportError:
        raise FastMetroError("the 'anny' topology needs the Anny body model: pip install anny") from None
    import torch

    with torch.no_grad():
        return anny.Anny()


def _body_vertices(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Vertex indices of the largest connected component (ascending)."""
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(adjacency_from_faces(faces, num_vertices), directed=False)
    used = np.zeros(num_vertices, dtype=bool)
    used[faces.ravel()] = True
    largest = np.bincount(labels[used]).argmax()
    return np.flatnonzero((labels == largest) & used)


def _hinge_axes(model) -> dict:
    """Unit hinge axis per knee/elbow bone label, from the zero pose (world frame)."""
    import torch

    labels = list(model.bone_labels)
    with torch.no_grad():
        heads = model()["bone_poses"][0, :, :3, 3].numpy()
    axes = {}
    for side in ("L", "R"):
        # Knee: flexion about the left-right axis (positive = heel goes back).
        axes[f"lowerleg01.{side}"] = np.array([1.0, 0.0, 0.0])
        shoulder, elbow, wrist = (heads[labels.index(f"{b}.{side}")] for b in ("upperarm01", "lowerarm01", "wrist"))
        axis = np.cross(elbow - shoulder, wrist - elbow)
        axes[f"lowerarm01.{side}"] = axis / np.linalg.norm(axis)
    return axes


def _random_pose(model, batch: int, generator, hinge_axes: dict) -> dict:
    """Random local rotations (B, 4, 4) per bone, from POSE_STD and HINGES; others at rest."""
    import roma
    import torch

    pose = {}
    for label in model.bone_labels:
        stem = label.split(".")[0]
        if stem in HINGES:
            (low, high), wobble = HINGES[stem]
            angle = low + (high - low) * torch.rand(batch, 1, generator=generator, dtype=torch.float64)
            axis = torch.as_tensor(hinge_axes[label], dtype=torch.float64)
            rotvec = angle * axis + torch.randn(batch, 3, generator=generator, dtype=torch.float64) * wobble
        elif stem in POSE_STD:
            rotvec = torch.randn(batch, 3, generator=generator, dtype=torch.float64) * POSE_STD[stem]
        else:
            continue
        transform = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
        transform[:, :3, :3] = roma.rotvec_to_rotmat(rotvec)
        pose[label] = transform
    return pose


def sample_anny(model, num_samples: int, seed: int, body: np.ndarray, batch: int = 32):
    """Posed Anny bodies and their skeleton joints.

    Returns (vertices (N, V0, 3), joints (N, 14, 3)) in metres; ``body`` selects level-0 vertices.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    body_index = torch.as_tensor(np.array(body, dtype=np.int64))
    hinge_axes = _hinge_axes(model)
    labels = list(model.bone_labels)
    bone_index = [labels.index(name) for name in JOINT_BONES]
    head = labels.index("head")
    neck = labels.index("neck01")
    crown = int(torch.argmax(model.template_vertices[:, 2]))  # Anny is z-up
    vertex_batches, joint_batches = [], []
    for start in range(0, num_samples, batch):
        count = min(batch, num_samples - start)
        phenotype = {
            label: torch.rand(count, generator=generator, dtype=torch.float64) for label in model.phenotype_labels
        }
        with torch.no_grad():
            pose = _random_pose(model, count, generator, hinge_axes)
        output = model(pose_parameters=pose, phenotype_kwargs=phenotype)
        poses = output["bone_poses"]  # (B, J, 4, 4) world transform, origin at the bone head
        joints = poses[:, bone_index, :3, 3].clone()
        # Head: a rest-pose point carried rigidly by the head bone.
        rest_poses = output["rest_bone_poses"].expand(count, -1, -1, -1)
        rest_crown = output["rest_vertices"].expand(count, -1, -1)[:, crown]
        rest_neck = rest_poses[:, neck, :3, 3]
        rest_point = rest_crown.clone()
        rest_point[:, 2] = rest_neck[:, 2] + HEAD_HEIGHT_FRACTION * (rest_crown[:, 2] - rest_neck[:, 2])
        skinning = poses[:, head] @ torch.linalg.inv(rest_poses[:, head])
        joints[:, -1] = (skinning[:, :3, :3] @ rest_point[:, :, None])[..., 0] + skinning[:, :3, 3]
        vertex_batches.append(output["vertices"][:, body_index].numpy())
        joint_batches.append(joints.numpy())
    return np.concatenate(vertex_batches), np.concatenate(joint_batches)


def fit_joint_regressor(
    vertices: np.ndarray, joints: np.ndarray, candidates: list[np.ndarray], sum_weight: float = 10.0
) -> np.ndarray:
    """Non-negative least-squares joint regressor, one row per joint.

    Args:
        vertices: (N, V, 3) posed meshes (metres); joints: (N, K, 3) targets (metres).
        candidates: per joint, the vertex indices allowed non-zero weight.
        sum_weight: weight of the soft constraint that a row sums to 1 (translation equivariance);
            rows are renormalised to sum exactly to 1 afterwards.
    Returns (K, V) dense, non-negative, rows summing to 1.
    """
    from scipy.optimize import nnls

    num_samples, num_vertices, _ = vertices.shape
    regressor = np.zeros((joints.shape[1], num_vertices))
    for joint, candidate in enumerate(candidates):
        # Centre each sample on the target so the fit is about shape, not global position.
        centred = vertices[:, candidate] - joints[:, joint, None]  # (N, C, 3)
        design = centred.transpose(0, 2, 1).reshape(-1, len(candidate))  # (3N, C)
        design = np.concatenate([design, np.full((1, len(candidate)), sum_weight)])
        target = np.concatenate([np.zeros(3 * num_samples), [sum_weight]])
        weights, _ = nnls(design, target, maxiter=50 * len(candidate))
        if weights.sum() <= 0:
            raise FastMetroError(f"joint regressor fit failed for {BODY_JOINT_NAMES[joint]}")
        regressor[joint, candidate] = weights / weights.sum()
    return regressor


def joint_errors(regressor: np.ndarray, vertices: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(N, K) Euclidean errors (metres) of ``regressor @ vertices`` against ``joints``."""
    return np.linalg.norm(np.einsum("kv,nvd->nkd", regressor, vertices) - joints, axis=-1)


def build_anny_topology(config: AnnyBuildConfig = AnnyBuildConfig()) -> Topology:
    """Build the Anny topology (levels, sampling, 14-joint regressor, mirror permutation)."""
    started = time.perf_counter()
    model = _load_anny_model()
    _progress("building the Anny topology once (mesh sampling and joint regressor fit; 1-3 minutes)")
    import torch

    all_faces = model.get_triangular_faces().numpy().astype(np.int64)
    with torch.no_grad():
        rest = model()  # default phenotype, rest pose
    all_vertices = rest["vertices"][0].numpy().astype(np.float64)
    body = _body_vertices(all_faces, len(all_vertices))
    new_index = np.full(len(all_vertices), -1)
    new_index[body] = np.arange(len(body))
    faces = new_index[all_faces]
    faces = faces[(faces >= 0).all(1)]
    template = all_vertices[body]

    sampling_started = time.perf_counter()
    levels = sample_mesh(template, faces, config.sizes)
    sampling_seconds = time.perf_counter() - sampling_started

    # Joint regressor: NNLS on vertices near each joint, over random poses and phenotypes.
    fit_started = time.perf_counter()
    fit_vertices, fit_joints = sample_anny(model, config.num_fit_samples, config.seed, body)
    candidates = []
    for joint in range(len(JOINT_BONES)):
        radius = config.head_candidate_radius if joint == len(JOINT_BONES) - 1 else config.candidate_radius
        # Candidates near the joint in the mean fitted body (pose-averaged, robust to one pose).
        distance = np.linalg.norm(fit_vertices - fit_joints[:, joint, None], axis=-1).mean(0)
        candidates.append(np.flatnonzero(distance < radius))
    regressor = fit_joint_regressor(fit_vertices, fit_joints, candidates)
    test_vertices, test_joints = sample_anny(model, config.num_test_samples, config.seed + 1, body)
    test_error = joint_errors(regressor, test_vertices, test_joints)
    fit_seconds = time.perf_counter() - fit_started

    root_regressor = regressor[list(BODY_ROOT_JOINTS)].mean(0)
    vertex_flip = mirror_permutation(template, axis=0)
    metadata = {
        "anny_version": _anny_version(),
        "build_version": BUILD_VERSION,
        "build_config": asdict(config),
        "source_vertex_count": int(len(all_vertices)),
        "regressor_test_mean_error_mm": float(test_error.mean() * 1000),
        "regressor_test_joint_mean_error_mm": [float(e) for e in test_error.mean(0) * 1000],
        "sampling_seconds": sampling_seconds,
        "regressor_fit_seconds": fit_seconds,
        "build_seconds": time.perf_counter() - started,
    }
    for level in range(1, len(config.sizes) + 1):
        mean, worst = reconstruction_error(template, levels.kept_indices, levels.upsample, level)
        metadata[f"reconstruction_level{level}_mm"] = [mean * 1000, worst * 1000]
    _progress(
        f"Anny topology: levels {levels.vertex_counts}, joint regressor held-out error "
        f"{metadata['regressor_test_mean_error_mm']:.1f} mm, built in {metadata['build_seconds']:.0f} s"
    )
    return Topology(
        kind="body",
        name="anny",
        level_vertex_counts=levels.vertex_counts,
        faces=levels.faces,
        kept_indices=levels.kept_indices,
        upsample=levels.upsample,
        coarse_adjacency=adjacency_from_faces(levels.faces[-1], levels.vertex_counts[-1]),
        joint_regressor=regressor,
        joint_names=BODY_JOINT_NAMES,
        joint_flip=np.asarray(BODY_JOINT_FLIP),
        root_joints=BODY_ROOT_JOINTS,
        root_regressor=root_regressor,
        vertex_flip=vertex_flip,
        template=template,
        source_vertex_indices=body,
        metadata=metadata,
    )


__all__ = ["AnnyBuildConfig", "build_anny_topology", "load_anny", "cache_dir", "cache_path"]

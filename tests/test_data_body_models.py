"""SMPL/MANO linear-blend-skinning layer on a synthetic model file written by the test."""

from __future__ import annotations

import io
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fastmetro.data.body_models import axis_angle_to_matrix, load_body_model, read_model_arrays
from fastmetro.errors import FastMetroError

# joint tree: 0 root -> 1 -> 2, 0 -> 3 -> 4
PARENTS = [-1, 0, 1, 0, 3]
NUM_VERTICES = 50
NUM_BETAS = 4


def _model_arrays(seed=0, one_hot=True, posedirs=True, hands_mean=False) -> dict:
    rng = np.random.default_rng(seed)
    num_joints = len(PARENTS)
    template = rng.normal(size=(NUM_VERTICES, 3))
    owner = np.arange(NUM_VERTICES) % num_joints
    if one_hot:
        weights = np.eye(num_joints)[owner]
    else:
        weights = rng.random((NUM_VERTICES, num_joints)) ** 4
        weights /= weights.sum(1, keepdims=True)
    regressor = np.zeros((num_joints, NUM_VERTICES))
    for joint in range(num_joints):  # joint = mean of its own vertices
        regressor[joint, owner == joint] = 1.0 / np.sum(owner == joint)
    arrays = {
        "v_template": template,
        "shapedirs": rng.normal(scale=0.1, size=(NUM_VERTICES, 3, NUM_BETAS)),
        "posedirs": (
            rng.normal(scale=0.05, size=(NUM_VERTICES, 3, 9 * (num_joints - 1)))
            if posedirs
            else np.zeros((NUM_VERTICES, 3, 9 * (num_joints - 1)))
        ),
        "J_regressor": sp.csc_matrix(regressor),
        "weights": weights,
        "kintree_table": np.array([[4294967295] + PARENTS[1:], list(range(num_joints))], dtype=np.int64),
        "f": rng.integers(0, NUM_VERTICES, (20, 3)),
    }
    if hands_mean:
        arrays["hands_mean"] = rng.normal(scale=0.3, size=3 * (num_joints - 1))
    return arrays


def _write_npz(path, arrays):
    dense = {k: (v.toarray() if sp.issparse(v) else v) for k, v in arrays.items()}
    np.savez(path, **dense)
    return path


def _fake_chumpy(monkeypatch):
    """Modules named like chumpy's, so pickle records chumpy.ch.Ch / chumpy.reordering.Select."""
    chumpy = types.ModuleType("chumpy")
    ch_module = types.ModuleType("chumpy.ch")
    reordering = types.ModuleType("chumpy.reordering")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)

        def __getstate__(self):
            return {"x": self.x, "_parents": None, "dterms": ["x"]}

    class Select:
        def __init__(self, a, idxs, preferred_shape):
            self.a, self.idxs, self.preferred_shape = a, idxs, preferred_shape

        def __getstate__(self):
            return {"a": self.a, "idxs": self.idxs, "preferred_shape": self.preferred_shape}

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    Select.__module__, Select.__qualname__ = "chumpy.reordering", "Select"
    ch_module.Ch = Ch
    reordering.Select = Select
    for name, module in (("chumpy", chumpy), ("chumpy.ch", ch_module), ("chumpy.reordering", reordering)):
        monkeypatch.setitem(sys.modules, name, module)
    return Ch, Select


def _write_chumpy_pkl(path, arrays, monkeypatch, protocol=2):
    Ch, Select = _fake_chumpy(monkeypatch)
    shapedirs = arrays["shapedirs"]
    payload = dict(arrays)
    # shapedirs as a Select node over a flat terminal (as reordering graphs appear in model files)
    payload["shapedirs"] = Select(
        Ch(shapedirs.ravel()[::-1].copy()), np.arange(shapedirs.size)[::-1].copy(), shapedirs.shape
    )
    payload["weights"] = Ch(arrays["weights"])
    payload["v_template"] = Ch(arrays["v_template"])
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path


def _reference_lbs(arrays, pose, betas):
    """Independent numpy LBS with 4x4 homogeneous transforms (float64)."""
    template = arrays["v_template"] + arrays["shapedirs"] @ betas
    regressor = arrays["J_regressor"].toarray()
    joints = regressor @ template
    rotations = [_rodrigues(pose[3 * j : 3 * j + 3]) for j in range(len(PARENTS))]
    feature = np.concatenate([(r - np.eye(3)).ravel() for r in rotations[1:]])
    posed = template + arrays["posedirs"] @ feature
    world = []
    for joint, parent in enumerate(PARENTS):
        local = np.eye(4)
        local[:3, :3] = rotations[joint]
        local[:3, 3] = joints[joint] - (joints[parent] if parent >= 0 else 0)
        world.append(local if parent < 0 else world[parent] @ local)
    skinning = []
    for joint, transform in enumerate(world):
        unrest = np.eye(4)
        unrest[:3, 3] = -joints[joint]
        skinning.append(transform @ unrest)
    blended = np.einsum("vj,jab->vab", arrays["weights"], np.stack(skinning))
    homogeneous = np.concatenate([posed, np.ones((len(posed), 1))], 1)
    vertices = np.einsum("vab,vb->va", blended, homogeneous)[:, :3]
    return vertices, np.stack([w[:3, 3] for w in world])


def _rodrigues(axis_angle):
    angle = np.linalg.norm(axis_angle)
    if angle < 1e-12:
        return np.eye(3)
    k = axis_angle / angle
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def _run(model, pose, betas):
    output = model(torch.tensor(pose[None], dtype=torch.float32), torch.tensor(betas[None], dtype=torch.float32))
    return output.vertices[0].double().numpy(), output.joints[0].double().numpy()


def test_zero_pose_is_template_plus_shape_blend(tmp_path):
    arrays = _model_arrays()
    model = load_body_model(_write_npz(tmp_path / "model.npz", arrays))
    betas = np.array([0.5, -1.0, 2.0, 0.3])
    vertices, joints = _run(model, np.zeros(15), betas)
    expected = arrays["v_template"] + arrays["shapedirs"] @ betas
    np.testing.assert_allclose(vertices, expected, atol=1e-5)
    np.testing.assert_allclose(joints, arrays["J_regressor"].toarray() @ expected, atol=1e-5)


def test_single_joint_rotation_moves_only_its_subtree(tmp_path):
    arrays = _model_arrays(posedirs=False)
    model = load_body_model(_write_npz(tmp_path / "model.npz", arrays))
    pose = np.zeros(15)
    pose[3 * 3 : 3 * 3 + 3] = [0.0, 0.0, 0.8]  # joint 3, whose subtree is {3, 4}
    rest, rest_joints = _run(model, np.zeros(15), np.zeros(NUM_BETAS))
    posed, posed_joints = _run(model, pose, np.zeros(NUM_BETAS))
    owner = np.arange(NUM_VERTICES) % len(PARENTS)
    in_subtree = np.isin(owner, [3, 4])
    moved = np.linalg.norm(posed - rest, axis=1) > 1e-4
    np.testing.assert_array_equal(moved, in_subtree)
    # the subtree turned rigidly about joint 3
    rotation = _rodrigues(pose[9:12])
    expected = (rest[in_subtree] - rest_joints[3]) @ rotation.T + rest_joints[3]
    np.testing.assert_allclose(posed[in_subtree], expected, atol=1e-5)
    np.testing.assert_allclose(posed_joints[:3], rest_joints[:3], atol=1e-6)


def test_pose_blend_shape_offsets_unrotated_vertices(tmp_path):
    arrays = _model_arrays(posedirs=True)
    model = load_body_model(_write_npz(tmp_path / "model.npz", arrays))
    pose = np.zeros(15)
    pose[3:6] = [0.4, 0.0, 0.0]  # joint 1
    posed, _ = _run(model, pose, np.zeros(NUM_BETAS))
    owner = np.arange(NUM_VERTICES) % len(PARENTS)
    feature = np.zeros(36)
    feature[:9] = (_rodrigues(pose[3:6]) - np.eye(3)).ravel()
    root_vertices = owner == 0  # skinned to the unrotated root: only the pose blend moves them
    expected = arrays["v_template"] + arrays["posedirs"] @ feature
    np.testing.assert_allclose(posed[root_vertices], expected[root_vertices], atol=1e-5)


def test_matches_independent_reference_and_is_differentiable(tmp_path):
    arrays = _model_arrays(one_hot=False, seed=3)
    model = load_body_model(_write_npz(tmp_path / "model.npz", arrays))
    rng = np.random.default_rng(1)
    pose, betas = rng.normal(scale=0.6, size=15), rng.normal(size=NUM_BETAS)
    vertices, joints = _run(model, pose, betas)
    ref_vertices, ref_joints = _reference_lbs(arrays, pose, betas)
    np.testing.assert_allclose(vertices, ref_vertices, atol=1e-4)
    np.testing.assert_allclose(joints, ref_joints, atol=1e-4)
    # batched, rotation-matrix input gives the same, and gradients are finite
    pose_t = torch.tensor(np.stack([pose, np.zeros(15)]), dtype=torch.float32, requires_grad=True)
    betas_t = torch.tensor(np.stack([betas, betas]), dtype=torch.float32, requires_grad=True)
    output = model(pose_t, betas_t)
    np.testing.assert_allclose(output.vertices[0].detach().numpy(), ref_vertices, atol=1e-4)
    output.vertices.square().sum().backward()
    assert torch.isfinite(pose_t.grad).all() and pose_t.grad.abs().sum() > 0
    assert torch.isfinite(betas_t.grad).all()  # zero pose row: Rodrigues at 0 stays finite
    matrices = axis_angle_to_matrix(torch.tensor(pose, dtype=torch.float32).reshape(1, 5, 3))
    by_matrix = model(matrices, torch.tensor(betas[None], dtype=torch.float32)).vertices[0]
    np.testing.assert_allclose(by_matrix.numpy(), ref_vertices, atol=1e-4)


@pytest.mark.parametrize("protocol", [0, 2])
def test_chumpy_pickle_reads_like_npz(tmp_path, monkeypatch, protocol):
    arrays = _model_arrays(one_hot=False, seed=5)
    pkl = _write_chumpy_pkl(tmp_path / "model.pkl", arrays, monkeypatch, protocol=protocol)
    monkeypatch.delitem(sys.modules, "chumpy.ch")  # the reader must not need chumpy
    monkeypatch.delitem(sys.modules, "chumpy.reordering")
    monkeypatch.delitem(sys.modules, "chumpy")
    loaded = read_model_arrays(pkl)
    np.testing.assert_array_equal(loaded["shapedirs"], arrays["shapedirs"])
    np.testing.assert_array_equal(loaded["weights"], arrays["weights"])
    assert sp.issparse(loaded["J_regressor"])
    rng = np.random.default_rng(2)
    pose, betas = rng.normal(scale=0.5, size=15), rng.normal(size=NUM_BETAS)
    from_pkl = _run(load_body_model(pkl), pose, betas)[0]
    from_npz = _run(load_body_model(_write_npz(tmp_path / "model.npz", arrays)), pose, betas)[0]
    np.testing.assert_allclose(from_pkl, from_npz, atol=1e-6)


def test_hand_mean_offset(tmp_path):
    arrays = _model_arrays(hands_mean=True, seed=7)
    path = _write_npz(tmp_path / "mano.npz", arrays)
    curled = load_body_model(path)  # released: flat_hand_mean=False
    flat = load_body_model(path, flat_hand_mean=True)
    betas = np.zeros(NUM_BETAS)
    zero_pose = _run(curled, np.zeros(15), betas)[0]
    mean_pose = np.concatenate([np.zeros(3), arrays["hands_mean"]])
    np.testing.assert_allclose(zero_pose, _run(flat, mean_pose, betas)[0], atol=1e-5)
    assert np.abs(zero_pose - _run(flat, np.zeros(15), betas)[0]).max() > 1e-3


def test_malicious_or_broken_files_give_one_line_errors(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"v_template": Evil()}))
    with pytest.raises(FastMetroError, match="refusing"):
        read_model_arrays(evil)
    truncated = tmp_path / "trunc.pkl"
    buffer = io.BytesIO()
    pickle.dump({"v_template": np.zeros((3, 3))}, buffer, protocol=2)
    truncated.write_bytes(buffer.getvalue()[:40])
    with pytest.raises(FastMetroError, match="trunc.pkl"):
        read_model_arrays(truncated)
    incomplete = _write_npz(tmp_path / "partial.npz", {"v_template": np.zeros((3, 3))})
    with pytest.raises(FastMetroError, match="missing"):
        read_model_arrays(incomplete)
    arrays = _model_arrays()
    arrays["weights"] = arrays["weights"][:, :3]
    with pytest.raises(FastMetroError, match="weights"):
        load_body_model(_write_npz(tmp_path / "bad.npz", arrays))


def test_unknown_chumpy_nodes_only_fail_when_needed(tmp_path, monkeypatch):
    Ch, _ = _fake_chumpy(monkeypatch)
    ops = types.ModuleType("chumpy.ch_ops")

    class Mystery:
        def __getstate__(self):
            return {"a": Ch(np.zeros(3))}

    Mystery.__module__, Mystery.__qualname__ = "chumpy.ch_ops", "Mystery"
    ops.Mystery = Mystery
    monkeypatch.setitem(sys.modules, "chumpy.ch_ops", ops)
    arrays = _model_arrays()
    unused = tmp_path / "unused.pkl"
    unused.write_bytes(pickle.dumps({**arrays, "weights_prior": Mystery()}, protocol=2))
    assert "weights_prior" not in read_model_arrays(unused)
    needed = tmp_path / "needed.pkl"
    needed.write_bytes(pickle.dumps({**arrays, "weights": Mystery()}, protocol=2))
    with pytest.raises(FastMetroError, match="'weights'.*unsupported chumpy.ch_ops.Mystery"):
        read_model_arrays(needed)


@pytest.mark.parametrize("protocol", [0, 2])
def test_mano_and_body_model_readers_share_one_pickle_policy(tmp_path, monkeypatch, protocol):
    """``topology.mano`` and ``data.body_models`` read model pickles with the one restricted reader
    (:func:`fastmetro.model_files.read_model_pickle`): the same chumpy graphs, the same refusals."""
    from fastmetro.topology.mano import read_mano_joint_regressor

    Ch, Select = _fake_chumpy(monkeypatch)
    regressor = np.random.default_rng(3).random((16, 778))
    flat = regressor.ravel()[::-1].copy()
    payload = {"J_regressor": Select(Ch(flat), np.arange(flat.size)[::-1].copy(), regressor.shape)}
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    for name in ("chumpy.ch", "chumpy.reordering", "chumpy"):
        monkeypatch.delitem(sys.modules, name)  # reading must not need chumpy
    np.testing.assert_array_equal(read_mano_joint_regressor(path), regressor)
    with pytest.raises(FastMetroError, match="not a SMPL/MANO model file"):
        read_model_arrays(path)  # the same file reads; it just lacks the other keys

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"J_regressor": Evil()}, protocol=protocol))
    messages = set()
    for reader in (read_mano_joint_regressor, read_model_arrays):
        with pytest.raises(FastMetroError) as error:
            reader(evil)
        messages.add(str(error.value))
    message = messages.pop()
    assert not messages and "refusing to load" in message and "print" in message

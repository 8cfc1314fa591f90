"""The rigged exporters (``fastmetro.rig.gltf``, ``fastmetro.rig.bvh``) against :func:`skin`.

Checked three ways: by re-posing the written files here (a small numpy glTF reader and a BVH
parser with forward kinematics, independent of the writers' code), by Khronos' glTF validator
(npm ``gltf-validator``, run with node) and by Blender's own importers (``tests/blender_check.py``).
The clients come from ``make rig-deps``; without them those tests are skipped, except under CI
(``CI`` set), where a missing client fails.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from fastmetro.errors import FastMetroError
from fastmetro.rig.bvh import write_bvh
from fastmetro.rig.gltf import skin_sets, write_rigged_glb
from fastmetro.rig.motion import Motion, Rig, skin

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENCV_TO_YUP = np.diag([1.0, -1.0, -1.0])  # glTF's and BVH's axes (a rotation, its own inverse)
OPENCV_TO_BLENDER = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # y up -> Blender's z up, after the above
FPS = 5.0


def rigid(rotation: np.ndarray, translation) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, translation
    return matrix


def make_rig(seed: int = 0, num_bones: int = 10, num_vertices: int = 300, slots: int = 9) -> Rig:
    """A random tree with rotated bind frames, a point-cloud mesh and K = 9 skin slots (vertex 0
    uses all 9, with 9 bones; the others have repeats and zeros)."""
    rng = np.random.default_rng(seed)
    parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, num_bones)])
    bind = np.empty((num_bones, 4, 4))
    rotations = Rotation.random(num_bones, random_state=seed).as_matrix()
    for j in range(num_bones):
        head = [0.1, -0.9, 0.05] if j == 0 else bind[parents[j], :3, 3] + rng.uniform(-0.3, 0.3, 3)
        bind[j] = rigid(rotations[j], head)
    owner = rng.integers(0, num_bones, num_vertices)
    vertices = bind[owner, :3, 3] + rng.normal(0, 0.05, (num_vertices, 3))
    # Every vertex in a face (a client may drop unused vertices), plus random triangles.
    chain = np.stack([np.roll(np.arange(num_vertices), -shift) for shift in range(3)], axis=1)
    faces = np.concatenate([chain, [rng.choice(num_vertices, 3, replace=False) for _ in range(num_vertices)]])
    indices = rng.integers(0, num_bones, (num_vertices, slots))  # repeats within a row on purpose
    indices[:, 0] = owner
    weights = rng.uniform(0.0, 1.0, (num_vertices, slots))
    weights[rng.uniform(size=weights.shape) < 0.4] = 0.0  # unused slots
    weights[:, 0] += 0.1
    indices[0], weights[0] = np.arange(slots) % num_bones, 1.0
    weights /= weights.sum(axis=1, keepdims=True)
    names = tuple(f"bone {j}" if j % 3 == 1 else f"bone_{j}" for j in range(num_bones))  # spaces for BVH
    return Rig(names, parents, bind, vertices, faces, indices, weights)


def make_motion(rig: Rig, frames: int, seed: int = 1, name: str = "person_00", stretch: float = 0.0) -> Motion:
    """Random local rotations over ``frames``, bones keeping their bind offsets (``stretch``: not)."""
    rng = np.random.default_rng(seed)
    bind = rig.bind_poses
    local_bind = np.linalg.inv(bind[rig.parents[1:]]) @ bind[1:]  # (J - 1, 4, 4)
    poses = np.empty((frames, rig.num_bones, 4, 4))
    placement = np.empty((frames, 4, 4))
    for t in range(frames):
        turns = Rotation.random(rig.num_bones, random_state=seed * 100 + t).as_matrix()
        poses[t, 0] = rigid(turns[0], bind[0, :3, 3] + rng.normal(0, 0.1, 3))
        for j in range(1, rig.num_bones):
            local = local_bind[j - 1].copy()
            local[:3, :3] = turns[j]
            local[:3, 3] *= 1.0 + stretch * t
            poses[t, j] = poses[t, rig.parents[j]] @ local
        angle = Rotation.from_rotvec([0.3, 0.2 * t, 0.1]).as_matrix()
        placement[t] = rigid(angle, [0.2 * t, 0.3, 3.0 + 0.1 * t])
    return Motion(rig, poses, placement, fps=FPS, name=name)


# --- a small glTF reader: the file's own nodes, skin and animation, in numpy --------------------


def read_glb(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
    assert bin_type == 0x004E4942 and bin_length % 4 == 0 and 28 + json_length + bin_length == len(data)
    return json.loads(data[20 : 20 + json_length]), data[28 + json_length :]


def accessor(document: dict, blob: bytes, index: int) -> np.ndarray:
    acc = document["accessors"][index]
    view = document["bufferViews"][acc["bufferView"]]
    dtype = {5126: np.float32, 5121: np.uint8, 5123: np.uint16, 5125: np.uint32}[acc["componentType"]]
    size = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc["type"]]
    offset = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    assert offset % np.dtype(dtype).itemsize == 0 and "byteStride" not in view
    values = np.frombuffer(blob, dtype, acc["count"] * size, offset).reshape(acc["count"], size)
    return values.astype(np.float64)


def node_matrix(node: dict) -> np.ndarray:
    if "matrix" in node:
        return np.array(node["matrix"]).reshape(4, 4).T  # column-major
    x, y, z, w = node.get("rotation", [0, 0, 0, 1])
    scale = np.diag([*node.get("scale", [1, 1, 1]), 1.0])
    return rigid(Rotation.from_quat([x, y, z, w]).as_matrix(), node.get("translation", [0, 0, 0])) @ scale


def posed_nodes(document: dict, blob: bytes, animation: str | None, time_s: float) -> list[dict]:
    """The nodes with their TRS replaced by ``animation``'s keys at ``time_s`` (a key's time)."""
    nodes = [dict(node) for node in document["nodes"]]
    for anim in document.get("animations", []):
        if anim["name"] != animation:
            continue
        for channel in anim["channels"]:
            sampler = anim["samplers"][channel["sampler"]]
            times = accessor(document, blob, sampler["input"])[:, 0]
            (key,) = np.flatnonzero(np.isclose(times, time_s, atol=1e-6))
            values = accessor(document, blob, sampler["output"])[key]
            nodes[channel["target"]["node"]][channel["target"]["path"]] = values.tolist()
    return nodes


def world_matrices(document: dict, nodes: list[dict]) -> dict[int, np.ndarray]:
    world: dict[int, np.ndarray] = {}
    stack = [(root, np.eye(4)) for root in document["scenes"][document.get("scene", 0)]["nodes"]]
    while stack:
        index, parent = stack.pop()
        world[index] = parent @ node_matrix(nodes[index])
        stack += [(child, world[index]) for child in nodes[index].get("children", [])]
    return world


def repose_glb(path: Path, name: str, frame: int, fps: float = FPS) -> np.ndarray:
    """(V, 3) vertices of person ``name`` at ``frame``, glTF world coordinates."""
    document, blob = read_glb(path)
    nodes = posed_nodes(document, blob, name, frame / fps)
    world = world_matrices(document, nodes)
    (body,) = [i for i, node in enumerate(nodes) if node.get("name") == f"{name}_body"]
    assert body in document["scenes"][0]["nodes"] and not {"matrix", "rotation", "translation"} & set(nodes[body])
    skin_def = document["skins"][nodes[body]["skin"]]
    inverse_bind = accessor(document, blob, skin_def["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    joints = np.stack([world[j] for j in skin_def["joints"]]) @ inverse_bind
    (primitive,) = document["meshes"][nodes[body]["mesh"]]["primitives"]
    attributes = primitive["attributes"]
    positions = accessor(document, blob, attributes["POSITION"])
    blended = np.zeros((len(positions), 4, 4))
    for s in range(sum(key.startswith("JOINTS_") for key in attributes)):
        indices = accessor(document, blob, attributes[f"JOINTS_{s}"]).astype(int)
        weights = accessor(document, blob, attributes[f"WEIGHTS_{s}"])
        blended += np.einsum("vk,vkab->vab", weights, joints[indices])
    return np.einsum("vab,vb->va", blended[:, :3, :3], positions) + blended[:, :3, 3]


def expected_vertices(motion: Motion, frame: int) -> np.ndarray:
    return skin(motion, frame) @ OPENCV_TO_YUP.T


def test_glb_reposes_like_skin_at_every_frame(tmp_path):
    rig = make_rig()
    moving, still = make_motion(rig, 5), make_motion(rig, 1, seed=2, name="person_01")
    path = write_rigged_glb(tmp_path / "people.glb", [moving, still], colors=[(0.6, 0.7, 0.9), (0.9, 0.6, 0.5)])
    document, _ = read_glb(path)
    assert [a["name"] for a in document["animations"]] == ["person_00"]  # one frame: no animation
    assert len(document["meshes"][0]["primitives"][0]["attributes"]) == 1 + 2 * 3  # K = 9: 3 sets of 4
    for motion in (moving, still):
        for frame in range(motion.num_frames):
            error = np.abs(repose_glb(path, motion.name, frame) - expected_vertices(motion, frame)).max()
            assert error < 1e-5, (motion.name, frame, error)


def test_glb_animates_bones_whose_offsets_change(tmp_path):
    motion = make_motion(make_rig(seed=3), 4, seed=4, stretch=0.1)
    path = write_rigged_glb(tmp_path / "stretch.glb", [motion])
    for frame in range(motion.num_frames):
        assert np.abs(repose_glb(path, motion.name, frame) - expected_vertices(motion, frame)).max() < 1e-5


def test_skin_sets_merge_repeats_and_pad_with_zeros():
    indices = np.array([[3, 3, 1, 0, 2], [4, 0, 0, 0, 0]])
    weights = np.array([[0.2, 0.3, 0.1, 0.0, 0.4], [1.0, 0.0, 0.0, 0.0, 0.0]])
    joints, w = skin_sets(indices, weights, 5)
    assert joints.shape == (2, 4) and w.dtype == np.float32  # 3 non-zero weights at most: one set
    assert joints.tolist() == [[3, 2, 1, 0], [4, 0, 0, 0]]
    np.testing.assert_allclose(w, [[0.5, 0.4, 0.1, 0.0], [1.0, 0.0, 0.0, 0.0]], atol=1e-7)
    _, w9 = skin_sets(make_rig().skin_indices, make_rig().skin_weights, 10)
    assert np.abs(w9.astype(np.float64).sum(axis=1) - 1.0).max() < 1e-7


# --- BVH: parsed here, joints placed by forward kinematics ----------------------------------------


def parse_bvh(text: str) -> tuple[list[dict], float, np.ndarray]:
    """(joints [{name, parent, offset, channels}], frame time, (T, C) values) of a BVH file."""
    tokens = text.split()
    joints: list[dict] = []
    stack: list[int] = []
    position = 1  # after HIERARCHY
    while tokens[position] != "MOTION":
        token = tokens[position]
        if token in ("ROOT", "JOINT"):
            joints.append({"name": tokens[position + 1], "parent": stack[-1] if stack else -1})
            position += 2
        elif token == "End":  # End Site { OFFSET x y z }: a tip, no channels
            assert tokens[position + 1 : position + 4] == ["Site", "{", "OFFSET"] and tokens[position + 7] == "}"
            position += 8
        elif token == "{":
            stack.append(len(joints) - 1)
            position += 1
        elif token == "}":
            stack.pop()
            position += 1
        elif token == "OFFSET":
            joints[-1]["offset"] = np.array(tokens[position + 1 : position + 4], float)
            position += 4
        elif token == "CHANNELS":
            count = int(tokens[position + 1])
            joints[-1]["channels"] = tokens[position + 2 : position + 2 + count]
            position += 2 + count
        else:
            raise AssertionError(f"unexpected BVH token {token!r}")
    assert not stack and tokens[position + 1] == "Frames:" and tokens[position + 3 : position + 5] == ["Frame", "Time:"]
    frames, frame_time = int(tokens[position + 2]), float(tokens[position + 5])
    values = np.array(tokens[position + 6 :], float).reshape(frames, -1)
    return joints, frame_time, values


def bvh_heads(joints: list[dict], values: np.ndarray) -> np.ndarray:
    """(T, J, 3) joint positions by forward kinematics (channels applied in their listed order)."""
    heads = np.zeros((len(values), len(joints), 3))
    for t, row in enumerate(values):
        column, rotations = 0, list[np.ndarray]()
        for j, joint in enumerate(joints):
            rotation, translation = np.eye(3), joint["offset"].copy()
            for channel in joint["channels"]:
                axis, kind = channel[0].lower(), channel[1:]
                if kind == "position":
                    translation["xyz".index(axis)] += row[column]
                else:
                    rotation = rotation @ Rotation.from_euler(axis, row[column], degrees=True).as_matrix()
                column += 1
            parent = joint["parent"]
            if parent >= 0:
                translation = heads[t, parent] + rotations[parent] @ translation
                rotation = rotations[parent] @ rotation
            heads[t, j] = translation
            rotations.append(rotation)
        assert column == len(row)
    return heads


def motion_heads(motion: Motion) -> np.ndarray:
    """(T, J, 3) bone heads in the output frame (OpenCV camera), metres."""
    return (
        np.einsum("tab,tjb->tja", motion.placement[:, :3, :3], motion.bone_poses[:, :, :3, 3])
        + (motion.placement[:, None, :3, 3])
    )


@pytest.mark.parametrize("frames", [1, 5])
def test_bvh_forward_kinematics_places_the_bone_heads(tmp_path, frames):
    motion = make_motion(make_rig(), frames)
    joints, frame_time, values = parse_bvh(write_bvh(tmp_path / "person.bvh", motion).read_text())
    names = [name.replace(" ", "_") for name in motion.rig.bone_names]
    order = [names.index(joint["name"]) for joint in joints]  # the file lists joints depth-first
    assert sorted(order) == list(range(motion.rig.num_bones))
    assert [order[j["parent"]] if j["parent"] >= 0 else -1 for j in joints] == motion.rig.parents[order].tolist()
    assert joints[0]["channels"][:3] == ["Xposition", "Yposition", "Zposition"] and len(joints[1]["channels"]) == 3
    assert frame_time == pytest.approx(1 / FPS) and len(values) == frames
    error = np.abs(bvh_heads(joints, values) - motion_heads(motion)[:, order] @ OPENCV_TO_YUP.T).max()
    assert error < 1e-4, error


# --- bad input ----------------------------------------------------------------------------------


def _with(motion: Motion, **changes) -> Motion:
    fields = {"bone_poses": motion.bone_poses, "placement": motion.placement, "fps": motion.fps, "name": motion.name}
    return Motion(changes.pop("rig", motion.rig), **{**fields, **changes})


def _bad_motions() -> dict[str, Motion]:
    motion = make_motion(make_rig(), 3)
    mirrored, nan, scaled = motion.bone_poses.copy(), motion.placement.copy(), motion.bone_poses.copy()
    mirrored[1, 2, :3, :3] = mirrored[1, 2, :3, :3] @ np.diag([1.0, 1.0, -1.0])
    nan[2, 0, 3] = np.nan
    scaled[0, 4, :3, :3] *= 1.1
    rig = motion.rig
    bad_weights = rig.skin_weights.copy()
    bad_weights[5, 0] = -0.5
    bad_rig = Rig(rig.bone_names, rig.parents, rig.bind_poses, rig.vertices, rig.faces, rig.skin_indices, bad_weights)
    return {
        "reflection": _with(motion, bone_poses=mirrored),
        "nan placement": _with(motion, placement=nan),
        "scaled bone": _with(motion, bone_poses=scaled),
        "negative weight": _with(motion, rig=bad_rig),
    }


@pytest.mark.parametrize("case", ["reflection", "nan placement", "scaled bone", "negative weight"])
def test_bad_input_is_a_fastmetro_error(tmp_path, case):
    motion = _bad_motions()[case]
    with pytest.raises(FastMetroError):
        write_rigged_glb(tmp_path / "bad.glb", [motion])
    if case != "negative weight":  # BVH has no skin
        with pytest.raises(FastMetroError):
            write_bvh(tmp_path / "bad.bvh", motion)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_bvh_refuses_bones_that_change_length_and_glb_refuses_repeated_names(tmp_path):
    motion = make_motion(make_rig(), 3, stretch=0.1)
    with pytest.raises(FastMetroError, match="moves"):
        write_bvh(tmp_path / "stretch.bvh", motion)
    with pytest.raises(FastMetroError, match="unique"):
        write_rigged_glb(tmp_path / "twice.glb", [motion, motion])


# --- real clients: Khronos' glTF validator and Blender ------------------------------------------


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs this test: `make rig-deps` installs it)")
    pytest.skip(f"{reason}; `make rig-deps` installs it")


VALIDATE_JS = """
const validator = require(process.env.VALIDATOR);
const bytes = new Uint8Array(require("fs").readFileSync(process.env.GLB));
validator.validateBytes(bytes, {maxIssues: 0})
    .then((report) => process.stdout.write(JSON.stringify(report)))
    .catch((error) => { console.error(String(error)); process.exit(2); });
"""


def validate_glb(path: Path, folder: Path) -> dict:
    """The Khronos validator's report on ``path`` (skips, or fails in CI, when it is missing)."""
    package = Path(os.environ.get("FASTMETRO_GLTF_VALIDATOR", REPO_ROOT / ".venv/npm/node_modules/gltf-validator"))
    node = shutil.which("node")
    if node is None or not (package / "package.json").is_file():
        _missing(f"node ({node}) or the npm package gltf-validator ({package}) is missing")
    script = folder / "validate.js"
    script.write_text(VALIDATE_JS)
    environment = {**os.environ, "VALIDATOR": str(package.resolve()), "GLB": str(path)}
    result = subprocess.run([node, str(script)], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    issues = report["issues"]
    version = json.loads((package / "package.json").read_text())["version"]
    print(f"gltf-validator {version}: {issues['numErrors']} errors, {issues['numWarnings']} warnings")
    for message in issues["messages"]:
        print(f"  severity {message['severity']} {message['code']}: {message['message']} {message.get('pointer', '')}")
    if issues["numWarnings"]:
        codes = [m["code"] for m in issues["messages"] if m["severity"] == 1]
        warnings.warn(f"gltf-validator warnings: {codes}", stacklevel=1)
    return report


def test_khronos_validator_finds_no_error(tmp_path):
    rig = make_rig()
    motions = [make_motion(rig, 5), make_motion(rig, 1, seed=2, name="person_01")]
    path = write_rigged_glb(tmp_path / "people.glb", motions, colors=[(0.6, 0.7, 0.9), (0.9, 0.6, 0.5)])
    report = validate_glb(path, tmp_path)
    issues = report["issues"]
    assert issues["numErrors"] == 0, [m for m in issues["messages"] if m["severity"] == 0]
    assert report["info"]["animationCount"] == 1 and report["info"]["hasSkins"]


BLENDER_FRAMES = (0, 2, 4)


@pytest.fixture(scope="module")
def blender_run(tmp_path_factory):
    """One Blender run on a glb and a BVH of the same 5-frame motion; (motion, its JSON, seconds)."""
    blender = shutil.which("blender")
    if blender is None:
        _missing("blender is not installed")
    folder = tmp_path_factory.mktemp("blender")
    motion = make_motion(make_rig(), 5)
    glb = write_rigged_glb(folder / "person.glb", [motion], colors=[(0.6, 0.7, 0.9)])
    bvh = write_bvh(folder / "person.bvh", motion)
    out = folder / "blender.json"
    frames = ",".join(str(f) for f in BLENDER_FRAMES)
    arguments = ["--glb", str(glb), "--bvh", str(bvh), "--fps", str(FPS), "--frames", frames, "--out", str(out)]
    script = str(REPO_ROOT / "tests/blender_check.py")
    # --python-exit-code: an exception in the script fails the run (Blender exits 0 otherwise).
    command = [blender, "-b", "--factory-startup", "--python-exit-code", "1", "--python", script, "--"]
    start = time.perf_counter()
    result = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=180)
    seconds = time.perf_counter() - start
    assert result.returncode == 0 and out.is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    print(f"blender ran in {seconds:.1f} s")
    return motion, json.loads(out.read_text())


def test_blender_poses_the_glb_like_skin(blender_run):
    motion, result = blender_run
    record = result["glb"]
    (armature,) = record["armatures"]
    assert armature["bones"] == motion.rig.num_bones
    assert armature["frame_range"] == [0.0, motion.num_frames - 1.0]
    (mesh,) = record["meshes"]
    for frame in BLENDER_FRAMES:
        got = np.array(record["vertices"][str(frame)][mesh])
        expected = skin(motion, frame) @ OPENCV_TO_BLENDER.T
        if len(got) == len(expected):
            error = np.abs(got - expected).max()
        else:  # the importer split or merged vertices: compare each with its nearest expected one
            print(f"blender made {len(got)} vertices of {len(expected)}: matched by nearest neighbour")
            error = cKDTree(expected).query(got)[0].max()
        print(f"blender glb frame {frame}: max vertex error {error:.2e} m")
        assert error < 1e-3, (frame, error)


def test_blender_poses_the_bvh_like_the_motion(blender_run):
    motion, result = blender_run
    record = result["bvh"]
    (armature,) = record["armatures"]
    assert armature["bones"] == motion.rig.num_bones
    assert armature["frame_range"] == [1.0, float(motion.num_frames)]  # the importer starts at frame 1
    heads = motion_heads(motion) @ OPENCV_TO_BLENDER.T
    names = [name.replace(" ", "_") for name in motion.rig.bone_names]
    for frame in BLENDER_FRAMES:
        got = np.array([record["heads"][str(frame)][name] for name in names])
        error = np.abs(got - heads[frame]).max()
        print(f"blender bvh frame {frame}: max bone head error {error:.2e} m")
        assert error < 1e-3, (frame, error)

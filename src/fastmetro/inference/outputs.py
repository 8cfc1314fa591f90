"""Files written per image and per person: meshes (.obj/.ply/.glb), JSON, overlay PNG.

Coordinate frames of the files:

* ``.obj`` / ``.ply``: the person's mesh in the image's camera coordinates, metres, OpenCV axes
  (x right, y down, z forward), so all people of an image share one frame and project with the
  JSON's ``intrinsics``.
* ``.glb``: the same geometry converted to glTF axes (y up, camera looking down -z), plus the
  camera, so viewers open it as seen from the photo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fastmetro.inference.predictor import ImagePrediction, PersonPrediction
from fastmetro.io import write_bytes
from fastmetro.render import Renderer

# Distinct, light mesh colours (RGB 0..1), one per person.
PALETTE = (
    (0.65, 0.74, 0.86),
    (0.90, 0.66, 0.56),
    (0.62, 0.84, 0.62),
    (0.87, 0.80, 0.55),
    (0.78, 0.64, 0.86),
    (0.55, 0.82, 0.84),
)
# OpenCV camera axes -> glTF axes (rotation by 180 degrees about x).
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0])


def person_color(index: int) -> tuple[float, float, float]:
    return PALETTE[index % len(PALETTE)]


def _trimesh(vertices: np.ndarray, faces: np.ndarray, color=None):
    import trimesh

    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, np.float64), faces=np.asarray(faces), process=False)
    if color is not None:
        rgba = np.array([*np.asarray(color, np.float64) * 255, 255]).round().astype(np.uint8)
        mesh.visual.vertex_colors = np.tile(rgba, (len(vertices), 1))  # type: ignore[union-attr]  # ColorVisuals here
    return mesh


def depth_range(vertices: np.ndarray) -> tuple[float, float]:
    """Near/far clip planes (metres) that hold ``vertices`` (camera coordinates)."""
    depth = np.asarray(vertices)[:, 2]
    near = max(1e-3, float(depth.min()) * 0.5)
    return near, max(near * 10.0, float(depth.max()) * 2.0)


def write_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray, color=None) -> Path:
    """Write a triangle mesh as ``.obj`` or ``.ply`` (by suffix), atomically."""
    file_type = path.suffix.lower().lstrip(".")
    mesh = _trimesh(vertices, faces, color)
    return write_bytes(path, mesh.export(file_type=file_type))


def write_glb(path: Path, meshes: list[tuple[np.ndarray, np.ndarray, tuple]], image_size, intrinsics) -> Path:
    """A glTF binary scene: ``meshes`` = [(vertices OpenCV camera coords, faces, colour)], + camera."""
    import trimesh

    scene = trimesh.Scene()
    for index, (vertices, faces, color) in enumerate(meshes):
        scene.add_geometry(
            _trimesh(np.asarray(vertices) @ OPENCV_TO_GLTF.T, faces, color), node_name=f"person_{index:02d}"
        )
    width, height = image_size
    scene.camera = trimesh.scene.Camera(
        resolution=(int(width), int(height)), focal=(float(intrinsics[0, 0]), float(intrinsics[1, 1]))
    )
    scene.camera_transform = np.eye(4)  # at the origin, looking down -z: the photo's viewpoint
    return write_bytes(path, scene.export(file_type="glb"))


def person_record(person: PersonPrediction, joint_names, image_source: str, image_size) -> dict:
    """JSON-ready description of one person (metres and full-image pixels)."""
    width, height = image_size
    return {
        "image": image_source,
        "image_size": [int(width), int(height)],
        "box_xywh": [float(v) for v in person.box],
        "crop_box": {
            "center": [float(v) for v in person.crop_box.center],
            "side": float(person.crop_box.side),
            "scale": float(person.crop_box.scale),
        },
        "side": person.side,
        "camera": {
            "weak_perspective": {
                "s": float(person.camera[0]),
                "tx": float(person.camera[1]),
                "ty": float(person.camera[2]),
            },
            "intrinsics": np.asarray(person.intrinsics).round(6).tolist(),
            "translation": np.asarray(person.translation).round(6).tolist(),
            "convention": "OpenCV (x right, y down, z forward); pixel centres at integers",
        },
        "joint_names": list(joint_names),
        "joints_3d": np.asarray(person.joints).round(6).tolist(),
        "joints_3d_camera": np.asarray(person.joints_camera).round(6).tolist(),
        "mesh_joints_3d": np.asarray(person.mesh_joints).round(6).tolist(),
        "joints_2d": np.asarray(person.joints_2d).round(3).tolist(),
        "units": {
            "joints_3d": "metres (root-centred model space, the camera's frame; add translation for camera space)",
            "joints_2d": "pixels",
        },
        **smpl_record(person),
        **detection_record(person),
    }


def detection_record(person: PersonPrediction) -> dict:
    """The detector's score, and MediaPipe's landmarks where it found them ({} for given boxes)."""
    record = {} if person.score is None else {"detector_score": round(float(person.score), 6)}
    pose: Any = person.pose  # MediaPipe's result (duck-typed: body or hand)
    if pose is None or getattr(pose, "landmarks", None) is None:
        return record
    landmarks = {
        "names": list(pose.landmark_names),
        "image": np.asarray(pose.landmarks).round(4).tolist(),
        "world": np.asarray(pose.world_landmarks).round(5).tolist(),
        "presence": round(float(pose.presence), 6),
        "units": {
            "image": "x, y pixels; z pixels relative to the hips (hands: the wrist), smaller is nearer; "
            "visibility, presence 0..1 (hands: 0)",
            "world": "metres, hip-centred (hands: the hand's centre), x right, y down, z forward",
        },
        "model": "MediaPipe BlazePose GHUM 3D" if pose.side is None else "MediaPipe Hands",
    }
    if pose.handedness is not None:
        landmarks["handedness"] = {"side": pose.side, "probability": round(float(pose.handedness), 6)}
    return {**record, "landmarks": landmarks}


def smpl_record(person: PersonPrediction) -> dict:
    """SMPL parameters of a model with the SMPL parameter regressor ({} otherwise)."""
    if person.smpl_rotmat is None:
        return {}
    from scipy.spatial.transform import Rotation

    rotations = np.asarray(person.smpl_rotmat, dtype=np.float64)
    return {
        "smpl": {
            "rotmat": rotations.round(6).tolist(),
            "pose_axis_angle": Rotation.from_matrix(rotations).as_rotvec().reshape(-1).round(6).tolist(),
            "betas": np.asarray(person.smpl_betas).round(6).tolist(),
            "mesh": "person_XX_smpl.obj/.ply (with an SMPL model file, --body-model)",
        }
    }


def write_person(
    directory: Path, index: int, person: PersonPrediction, joint_names, image_source, image_size
) -> list[Path]:
    """``person_XX.{obj,ply,glb,json}`` in ``directory``."""
    stem = f"person_{index:02d}"
    color = person_color(index)
    vertices = person.vertices_camera
    written = [
        write_mesh(directory / f"{stem}.obj", vertices, person.faces),
        write_mesh(directory / f"{stem}.ply", vertices, person.faces, color),
        write_glb(directory / f"{stem}.glb", [(vertices, person.faces, color)], image_size, person.intrinsics),
    ]
    if person.smpl_vertices is not None:  # the parametric mesh next to the non-parametric one
        smpl_vertices = person.smpl_vertices + person.translation
        assert person.smpl_faces is not None  # set together with smpl_vertices
        written.append(write_mesh(directory / f"{stem}_smpl.obj", smpl_vertices, person.smpl_faces))
        written.append(write_mesh(directory / f"{stem}_smpl.ply", smpl_vertices, person.smpl_faces, color))
    record = person_record(person, joint_names, image_source, image_size)
    written.append(write_bytes(directory / f"{stem}.json", json.dumps(record, indent=1) + "\n"))
    return written


def write_image_outputs(
    directory: Path,
    prediction: ImagePrediction,
    joint_names,
    image_source,
    image=None,
    renderer_pool=None,
    max_side: int = 1024,
) -> list[Path]:
    """Every person's files, the image's ``scene.glb``, and ``overlay.png`` when ``image`` is given."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for index, person in enumerate(prediction.people):
        written += write_person(directory, index, person, joint_names, image_source, prediction.image_size)
    if prediction.people:
        meshes = [(p.vertices_camera, p.faces, person_color(i)) for i, p in enumerate(prediction.people)]
        written.append(
            write_glb(directory / "scene.glb", meshes, prediction.image_size, prediction.people[0].intrinsics)
        )
    if image is not None:
        panel = overlay_panel(image, prediction, renderer_pool, max_side)
        written.append(write_png(directory / "overlay.png", panel))
    return written


def write_png(path: Path, rgb: np.ndarray) -> Path:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    return write_bytes(path, encoded.tobytes())


# ----------------------------------------------------------------------------- rendering
class RendererPool:
    """One offscreen :class:`fastmetro.render.Renderer` per output size, created on demand."""

    def __init__(self):
        self._renderers = {}

    def get(self, width: int, height: int):

        key = (int(width), int(height))
        if key not in self._renderers:
            self._renderers[key] = Renderer(*key)
        return self._renderers[key]

    def release(self) -> None:
        for renderer in self._renderers.values():
            renderer.release()
        self._renderers.clear()


def scaled_view(image: np.ndarray, intrinsics: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink ``image`` so its longer side is at most ``max_side``; intrinsics follow."""
    height, width = image.shape[:2]
    ratio = min(1.0, max_side / max(height, width))
    if ratio == 1.0:
        return image, np.asarray(intrinsics, np.float64)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    sx, sy = size[0] / width, size[1] / height
    scaled = np.asarray(intrinsics, np.float64).copy()
    scaled[0, 0] *= sx
    scaled[1, 1] *= sy
    # Pixel centres at integers: u_small = (u + 0.5) * ratio - 0.5.
    scaled[0, 2] = (scaled[0, 2] + 0.5) * sx - 0.5
    scaled[1, 2] = (scaled[1, 2] + 0.5) * sy - 0.5
    return small, scaled


def drawable(person: PersonPrediction) -> bool:
    """A person whose camera puts the mesh in front of the camera (s > 0, finite)."""
    return bool(person.camera[0] > 0 and np.isfinite(person.vertices_camera).all())


def combined_mesh(people: list[PersonPrediction], colors=None):
    """Concatenate the drawable people's camera-space meshes: vertices (V, 3), faces (F, 3),
    colours (V, 3); colours stay those of each person's index. None if nobody is drawable."""
    vertices, faces, vertex_colors, offset = [], [], [], 0
    for index, person in enumerate(people):
        if not drawable(person):
            continue  # e.g. an untrained model's negative scale: nothing sensible to draw
        vertices.append(person.vertices_camera)
        faces.append(person.faces + offset)
        color = person_color(index) if colors is None else colors[index]
        vertex_colors.append(np.broadcast_to(np.asarray(color, np.float32), (len(person.vertices), 3)))
        offset += len(person.vertices)
    if not vertices:
        return None
    return np.concatenate(vertices), np.concatenate(faces), np.concatenate(vertex_colors)


def render_people(
    image: np.ndarray,
    people: list[PersonPrediction],
    intrinsics: np.ndarray,
    pool: RendererPool,
    opacity: float = 0.85,
    colors=None,
) -> np.ndarray:
    """The people's meshes drawn over ``image`` (H, W, 3) uint8 with ``intrinsics``."""
    mesh = combined_mesh(people, colors)
    if mesh is None:
        return image.copy()
    vertices, faces, vertex_colors = mesh
    height, width = image.shape[:2]
    near, far = depth_range(vertices)
    result = pool.get(width, height).render(vertices, faces, intrinsics, color=vertex_colors, near=near, far=far)
    blended = image.astype(np.float32)
    mask = result.mask
    blended[mask] = opacity * result.rgb[mask] + (1.0 - opacity) * blended[mask]
    return blended.round().astype(np.uint8)


def side_view(
    people: list[PersonPrediction],
    intrinsics: np.ndarray,
    size: tuple[int, int],
    pool: RendererPool,
    background: int = 255,
) -> np.ndarray:
    """The same meshes turned 90 degrees about the vertical axis through their centre."""
    width, height = size
    canvas = np.full((height, width, 3), background, np.uint8)
    mesh = combined_mesh(people)
    if mesh is None:
        return canvas
    vertices, faces, vertex_colors = mesh
    centre = vertices.mean(axis=0)
    turn = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # 90 degrees about y
    turned = (vertices - centre) @ turn.T + centre
    near, far = depth_range(turned)
    result = pool.get(width, height).render(turned, faces, intrinsics, color=vertex_colors, near=near, far=far)
    canvas[result.mask] = result.rgb[result.mask]
    return canvas


def overlay_panel(
    image: np.ndarray, prediction: ImagePrediction, pool: RendererPool | None = None, max_side: int = 1024
) -> np.ndarray:
    """[input | meshes over the input | side view], each at most ``max_side`` pixels."""
    own_pool = pool is None
    pool = pool or RendererPool()
    try:
        people = prediction.people
        intrinsics = people[0].intrinsics if people else np.eye(3)
        small, small_k = scaled_view(image, intrinsics, max_side)
        height, width = small.shape[:2]
        over = render_people(small, people, small_k, pool)
        side = side_view(people, small_k, (width, height), pool)
        return np.concatenate([small, over, side], axis=1)
    finally:
        if own_pool:
            pool.release()


__all__ = [
    "PALETTE",
    "person_color",
    "write_mesh",
    "write_glb",
    "write_person",
    "write_image_outputs",
    "write_png",
    "person_record",
    "RendererPool",
    "render_people",
    "side_view",
    "overlay_panel",
    "scaled_view",
]

"""Synthetic video clips with ground truth: Anny bodies walking past each other, a moving camera.

A clip is ``frames`` images of ``size`` pixels from a :class:`~fastmetro.data.synthetic.crowd.CrowdMaker`
(its bodies, clothing, lights, backgrounds and renderer). 1-3 people, each with its own shape,
pose family and clothing (the crowd scene's draw), walk along the ground at their own depth
(4-8 m) across the view, the first two towards each other so that they cross mid-clip (the
nearer one passes in front of the other: a partial occlusion) with a walking bob (2 Hz, 3 cm)
and a slow sway of the heading; the camera pans (yaw) and slides sideways. The motion is
procedural and rigid per body: the limbs keep the drawn pose (no gait), so the clips test
tracking and the smoothness of the root and the camera-space results, not of the limbs.

Ground truth per frame and person (:class:`ClipPerson`): the track id (the person's slot), the
box of its projected vertices clipped to the image, its visible fraction, the label mesh's
vertices and joints in camera coordinates (metres, OpenCV axes), the clip's intrinsics.
:func:`write_clip` writes ``clip.mp4``, ``frames/frame_XXXXXX.png`` and ``labels.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from fastmetro.data.synthetic.clothing import sample_clothing
from fastmetro.data.synthetic.crowd import CROWD_SALT, MAX_PEOPLE, CrowdMaker, PersonMesh
from fastmetro.data.synthetic.lighting import sample_lights
from fastmetro.data.synthetic.scene import WORLD_TO_FRONT_CAMERA, Camera
from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write

VIDEO_SALT = 57  # clip streams never coincide with a crowd scene's
DEPTHS = (4.0, 8.0)  # metres along the ground
WALK_SPEED = (0.9, 1.5)  # metres per second
BOB = (0.03, 2.0)  # metres, Hz: the up-and-down of a walk


@dataclass(frozen=True)
class ClipPerson:
    """One person in one frame: ``track_id``, ``box`` (x, y, w, h) px, ``visible_fraction``,
    ``vertices`` (V0, 3) and ``joints`` (K, 3) in camera coordinates, metres."""

    track_id: int
    box: tuple[float, float, float, float]
    visible_fraction: float
    vertices: np.ndarray
    joints: np.ndarray


@dataclass
class SyntheticClip:
    name: str
    fps: float
    intrinsics: np.ndarray
    images: list[np.ndarray] = field(default_factory=list)
    people: list[list[ClipPerson]] = field(default_factory=list)  # per frame


def render_clip(
    maker: CrowdMaker, seed: int, index: int, people: int = 2, frames: int = 30, fps: float = 15.0
) -> SyntheticClip:
    """Clip ``index`` of ``seed`` (see the module docstring)."""
    if not 1 <= people <= 3:
        raise FastMetroError(f"synthetic clips have 1-3 people, got {people}")
    if frames < 2:
        raise FastMetroError(f"synthetic clips have at least 2 frames, got {frames}")
    rng = np.random.default_rng([seed, index, VIDEO_SALT])
    width, height = maker.size
    focal = (width / 2.0) / np.tan(np.radians(rng.uniform(50.0, 65.0)) / 2.0)
    intrinsics = np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    eye, pitch = rng.uniform(1.3, 1.7), rng.uniform(2.0, 8.0)
    keys = [(seed, index * MAX_PEOPLE + CROWD_SALT, slot) for slot in range(people)]
    _, vertices, normals, families = maker.bodies.pose_bodies(keys)
    duration = (frames - 1) / fps
    walkers: list[dict[str, float]] = []
    for slot in range(people):
        depth = rng.uniform(*DEPTHS) if slot != 1 else walkers[0]["depth"] + rng.uniform(1.0, 2.0)
        direction = (1.0 if slot % 2 == 0 else -1.0) * (1 if rng.uniform() < 0.5 else -1) ** (slot // 2)
        speed = rng.uniform(*WALK_SPEED)
        half_view = depth * (width / 2.0) / focal  # metres of ground seen across half the image
        cross = rng.uniform(-0.15, 0.15) * half_view  # where the walk passes mid-clip
        start = cross - direction * speed * duration / 2.0
        walkers.append(
            dict(depth=depth, direction=direction, speed=speed, start=start, phase=rng.uniform(0, 2 * np.pi))
        )
    colours = []

    for key in keys:
        own = maker.bodies.streams(key)["scene"]
        colours.append(
            sample_clothing(own, maker.bodies.body.regions, maker.bodies.rest_points, maker.bodies.split.patterns)
        )
    side = int(max(width, height) * 1.5)
    square = maker.bodies.backgrounds.sample(rng, side, maker.bodies.config.backgrounds)
    lights = sample_lights(rng)
    pan, slide = rng.uniform(-8.0, 8.0), rng.uniform(-0.6, 0.6)  # degrees, metres over the clip
    clip = SyntheticClip(f"clip_{index:03d}", float(fps), intrinsics)
    body = maker.bodies.body
    for frame in range(frames):
        t = frame / fps
        u = t / duration
        yaw = pan * (u - 0.5)
        rotation = (
            Rotation.from_euler("x", pitch, degrees=True).as_matrix()
            @ Rotation.from_euler("y", yaw, degrees=True).as_matrix()
            @ WORLD_TO_FRONT_CAMERA
        )
        centre = np.array([slide * (u - 0.5), 0.0, eye])
        camera = Camera(rotation, -rotation @ centre, intrinsics)
        meshes = []
        for slot, walker in enumerate(walkers):
            heading = -90.0 * walker["direction"] + 10.0 * np.sin(2 * np.pi * 0.3 * t + walker["phase"])
            spin = Rotation.from_euler("z", heading, degrees=True).as_matrix()
            points = vertices[slot] @ spin.T
            low, high = points.min(0), points.max(0)
            ground = np.array([walker["start"] + walker["direction"] * walker["speed"] * t, walker["depth"]])
            lift = BOB[0] * (1 + np.sin(2 * np.pi * BOB[1] * t + walker["phase"])) / 2
            offset = np.array([*(ground - (low[:2] + high[:2]) / 2), lift - low[2]])
            meshes.append(
                PersonMesh(
                    camera.to_camera(points + offset).astype(np.float32),
                    (normals[slot] @ (camera.rotation @ spin).T).astype(np.float32),
                    colours[slot],
                    float(walker["depth"]),
                    families[slot],
                )
            )
        order = sorted(range(people), key=lambda k: meshes[k].distance)
        shift = int(round((yaw / 8.0 + 1) / 2 * (side - width) * 0.5))
        top = (side - height) // 2
        background = np.ascontiguousarray(square[top : top + height, shift : shift + width])
        image, _, fractions = maker.compose(camera, [meshes[k] for k in order], background, lights)
        grain = rng.standard_normal(image.shape, dtype=np.float32) * 2.0
        clip.images.append(np.clip(image + grain, 0, 255).astype(np.uint8))
        labelled = []
        for rank, k in enumerate(order):
            person = maker._person(camera, meshes[k], fractions[rank])
            label_vertices, joints = body.labels(meshes[k].vertices.astype(np.float64))
            labelled.append(ClipPerson(k, person.box, float(fractions[rank]), label_vertices, joints))
        clip.people.append(sorted(labelled, key=lambda p: p.track_id))
    return clip


def write_clip(clip: SyntheticClip, out_dir: str | Path) -> Path:
    """``clip.mp4``, ``frames/frame_XXXXXX.png`` and ``labels.json`` (per frame: track ids,
    boxes, visible fractions, joints in camera space) in ``out_dir/<clip name>``."""
    import cv2
    import imageio.v3 as iio  # imageio: the video writer of the inference outputs too

    folder = Path(out_dir) / clip.name
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    for frame, image in enumerate(clip.images):
        cv2.imwrite(str(folder / "frames" / f"frame_{frame:06d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    iio.imwrite(folder / "clip.mp4", np.stack(clip.images), plugin="pyav", codec="libx264", fps=clip.fps)
    labels = {
        "fps": clip.fps,
        "intrinsics": clip.intrinsics.round(6).tolist(),
        "frames": [
            [
                {
                    "track_id": p.track_id,
                    "box": [round(v, 2) for v in p.box],
                    "visible_fraction": round(p.visible_fraction, 4),
                    "joints_3d_camera": p.joints.round(5).tolist(),
                }
                for p in people
            ]
            for people in clip.people
        ],
    }
    with atomic_write(folder / "labels.json", "w") as handle:
        json.dump(labels, handle)
    return folder


__all__ = ["ClipPerson", "SyntheticClip", "render_clip", "write_clip"]

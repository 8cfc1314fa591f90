"""Synthetic scenes with several people at known boxes: the data of the person-detection benchmark.

A scene is one camera at about human eye height looking over a flat ground (Anny world: x left,
y forward from the camera, z up, metres) on which 1-4 Anny bodies stand, walk, sit... at
different distances (2.5-30 m, log-uniform: near people cut by the image border, small people
far away) and positions (some placed just behind another: partial overlaps). The bodies, their
shapes, pose families (upright ones dominate, :data:`CROWD_POSES`), clothing, the lights and the
backgrounds are the synthetic generator's own (:class:`~fastmetro.data.synthetic.shard_maker.ShardMaker`,
:func:`~fastmetro.data.synthetic.clothing.sample_clothing`, :func:`~fastmetro.data.synthetic.lighting.sample_lights`,
:class:`~fastmetro.data.synthetic.backgrounds.SplitBackgrounds`: scikit-image photos without
people, or procedural textures); what this module adds is the staging and the ground truth.

Ground truth per person (:class:`CrowdPerson`): the full-body box from its projected vertices
clipped to the image (occluded parts included; pixel-centre coordinates, the image spans
``[-0.5, W - 0.5]`` as in :mod:`fastmetro.inference.camera`), its visible fraction (pixels where
it is the nearest surface / pixels it covers when rendered alone, both inside the image), the
fraction of its vertices inside the image, and ``ignore``: a person mostly hidden or cut away,
or too small, is neither a miss when not found nor a false positive when found.

Scene ``index`` of ``seed`` is the same whatever else is rendered, in any order or process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from fastmetro.data.synthetic.clothing import sample_clothing
from fastmetro.data.synthetic.config import SynthConfig, sample_generators
from fastmetro.data.synthetic.lighting import sample_lights
from fastmetro.data.synthetic.scene import WORLD_TO_FRONT_CAMERA, Camera
from fastmetro.data.synthetic.shard_maker import ShardMaker
from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write
from fastmetro.render import MeshPart, Renderer

#: Pose families of crowd scenes (``--poses`` syntax): mostly people on their feet, as in photos.
CROWD_POSES = "standing=4,walking=3,sitting=0.6,kneeling=0.3,squatting=0.4,athletic=0.8,jumping=0.4,lying=0.2"
MAX_PEOPLE = 16
CROWD_SALT = 31  # crowd streams never coincide with a training sample's
DEPTH_RANGE = (2.5, 30.0)  # metres along the ground, log-uniform
HORIZONTAL_FOV = (45.0, 75.0)  # degrees: phone and compact-camera lenses
EYE_HEIGHT = (1.2, 1.9)  # metres; PITCH below in degrees, + = looking down
PITCH = (-3.0, 12.0)
ELEVATED_PROBABILITY = 0.2  # a camera on a balcony / a first floor, looking down more
ELEVATED_HEIGHT = (2.0, 5.0)
ELEVATED_PITCH = (8.0, 25.0)
OVERLAP_PROBABILITY = 0.5  # a person placed just behind or in front of one already placed
JUMP_LIFT = (0.05, 0.35)  # metres: jumping people leave the ground
GAP = 0.15  # metres between two bodies' footprints
SHOULDERS = 0.5  # metres: a body's width, seen from the front
PLACEMENT_ATTEMPTS = 40
#: A person counts only when at least this much of it is visible, in frame and tall enough.
MIN_VISIBLE_FRACTION = 0.3
MIN_IN_FRAME = 0.3
MIN_BOX_HEIGHT = 24.0  # pixels


@dataclass(frozen=True)
class CrowdPerson:
    """One person of a scene.

    box: (x, y, w, h) pixels, the projected body clipped to the image; visible_fraction: visible
    pixels / pixels when alone (0..1); in_frame: fraction of its vertices inside the image;
    ignore: too hidden, cut or small to count; distance: metres along the ground from the camera;
    family: its pose family; facing: degrees between the way its pelvis faces and the way to the
    camera, on the ground (0 = facing the camera, 180 = its back to it).
    """

    box: tuple[float, float, float, float]
    visible_fraction: float
    in_frame: float
    ignore: bool
    distance: float
    family: str
    facing: float


@dataclass(frozen=True)
class CrowdScene:
    """One rendered scene: image (H, W, 3) uint8 RGB, its people (nearest first), and ids (H, W)
    uint8: 1 + the index in ``people`` of the person seen at each pixel, 0 for the background."""

    index: int
    image: np.ndarray
    people: tuple[CrowdPerson, ...]
    ids: np.ndarray

    def boxes(self, counted_only: bool = True) -> list[tuple[float, float, float, float]]:
        """The people's boxes (by default only those that count, i.e. not ``ignore``)."""
        return [p.box for p in self.people if not (counted_only and p.ignore)]


@dataclass(frozen=True)
class PersonMesh:
    """A posed, dressed body in camera coordinates: vertices and normals (V, 3) metres / unit,
    colours (V, 3) in 0..1, its distance along the ground (metres), pose family and facing
    (degrees, see :class:`CrowdPerson`)."""

    vertices: np.ndarray
    normals: np.ndarray
    colours: np.ndarray
    distance: float
    family: str
    facing: float = 0.0


class _CrowdBodies(ShardMaker):
    """The generator's bodies (shape, pose family, intersection-checked pose, clothing inputs),
    drawn from crowd streams: ``pose_bodies`` takes keys ``(seed, scene index, slot)``."""

    def streams(self, key) -> dict[str, np.random.Generator]:

        seed, index, slot = key
        return sample_generators(seed, index * MAX_PEOPLE + slot, (CROWD_SALT,))


def sample_street_camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    """A camera at ``EYE_HEIGHT`` (sometimes elevated) above the ground point (0, 0, 0), looking
    along +y with a small pitch and roll; pinhole, principal point at the image centre."""
    focal = (width / 2.0) / np.tan(np.radians(rng.uniform(*HORIZONTAL_FOV)) / 2.0)
    elevated = rng.uniform() < ELEVATED_PROBABILITY
    eye = rng.uniform(*(ELEVATED_HEIGHT if elevated else EYE_HEIGHT))
    pitch = rng.uniform(*(ELEVATED_PITCH if elevated else PITCH))
    roll = float(np.clip(rng.normal(0.0, 2.0), -6.0, 6.0))
    # As in scene.View: a + tilt about the camera's x axis turns the view down.
    rotation = (
        Rotation.from_euler("z", roll, degrees=True).as_matrix()
        @ Rotation.from_euler("x", pitch, degrees=True).as_matrix()
        @ WORLD_TO_FRONT_CAMERA
    )
    intrinsics = np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    return Camera(rotation, -rotation @ np.array([0.0, 0.0, eye]), intrinsics)


def place_people(
    rng: np.random.Generator,
    camera: Camera,
    radii: np.ndarray,
    heights: np.ndarray,
    size: tuple[int, int],
    depth_range: tuple[float, float] = DEPTH_RANGE,
) -> np.ndarray:
    """(N, 2) ground positions (x, y metres) for bodies of footprint radii (N,) and heights (N,).

    Each body's middle projects inside the image (so the border cuts some bodies, never more
    than about half of one); footprints never overlap. Some bodies go right behind or in front
    of an earlier one (partial occlusion).
    """
    width, height = size
    focal, cx = camera.intrinsics[0, 0], camera.intrinsics[0, 2]
    placed: list[np.ndarray] = []
    columns: list[float] = []
    for radius, body_height in zip(radii, heights):
        position, column = None, 0.0
        for _attempt in range(PLACEMENT_ATTEMPTS):
            distance = float(np.exp(rng.uniform(*np.log(depth_range))))
            column = rng.uniform(0.0, 1.0) * width
            if placed and rng.uniform() < OVERLAP_PROBABILITY:
                partner = int(rng.integers(len(placed)))
                distance = placed[partner][1] * rng.uniform(0.6, 1.8)
                # Shifted by about a shoulder width (0.5 m) at the nearer of the two: overlapping.
                shift = rng.normal(0.0, 0.6) * focal * SHOULDERS / min(distance, placed[partner][1])
                column = float(np.clip(columns[partner] + shift, 0.0, width))
            # Lateral offset that puts the body's middle at that column (roll ignored: a few px).
            depth = camera.to_camera(np.array([0.0, distance, body_height / 2]))[2]
            candidate = np.array([(column - cx) / focal * depth, distance])
            middle = camera.to_camera(np.array([*candidate, body_height / 2]))
            row = camera.project(middle[None])[0, 1]
            apart = all(np.linalg.norm(candidate - other) > radius + radii[k] + GAP for k, other in enumerate(placed))
            if middle[2] > 1.0 and -0.5 <= row <= height - 0.5 and apart:
                position = candidate
                break
        if position is None:  # a crowded or odd view: far away, where there is always room
            position = np.array([(rng.uniform() - 0.5) * 4.0 * len(placed), depth_range[1] + 2.0 * len(placed)])
        placed.append(position)
        columns.append(column)
    return np.array(placed).reshape(-1, 2)


class CrowdMaker:
    """Renders crowd scenes of one image size. Owns an Anny model and two OpenGL contexts
    (create one per process). ``samples``: MSAA of the colour image (the id render has none)."""

    def __init__(
        self,
        size: tuple[int, int] = (640, 480),
        split: str = "train",
        backgrounds: str = "mixed",
        samples: int = 4,
        poses: str = CROWD_POSES,
        depth_range: tuple[float, float] = DEPTH_RANGE,
    ):

        width, height = (int(v) for v in size)
        if width < 32 or height < 32:
            raise FastMetroError(f"crowd scenes: image size must be at least 32x32 pixels, got {width}x{height}")
        self.size = (width, height)
        near, far = (float(v) for v in depth_range)
        if not 1.0 <= near <= far <= 200.0:
            raise FastMetroError(
                f"crowd scenes: depth_range must satisfy 1 <= near <= far <= 200 m, got {depth_range!r}"
            )
        self.depth_range = (near, far)  # metres along the ground, log-uniform (2.5-8: group photos)
        self.bodies = _CrowdBodies(
            SynthConfig(
                out_dir=Path("."), num=1, size=16, poses=poses, split=split, backgrounds=backgrounds, occluders=False
            )
        )
        self.bodies.renderer.release()  # its square renderer is never used: ours are W x H
        self.renderer = Renderer(width, height, samples=samples)
        self.id_renderer = Renderer(width, height)

    def release(self) -> None:
        self.renderer.release()
        self.id_renderer.release()

    def scene(self, seed: int, index: int, people: tuple[int, int] = (1, 4)) -> CrowdScene:
        """Scene ``index`` of ``seed`` with ``people[0]..people[1]`` (inclusive) people."""
        low, high = check_people(people)
        rng = np.random.default_rng([seed, index, CROWD_SALT])
        count = int(rng.integers(low, high + 1))
        camera = sample_street_camera(rng, *self.size)
        keys = [(seed, index, slot) for slot in range(count)]
        _, vertices, normals, families = self.bodies.pose_bodies(keys)
        meshes = self._stage(rng, camera, keys, vertices, normals, families)
        background = self._background(rng)
        lights = sample_lights(rng)
        image, ids, fractions = self.compose(camera, meshes, background, lights)
        grain = rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(1.0, 4.0)
        image = np.clip(image + grain, 0, 255).astype(np.uint8)  # sensor noise over the whole picture
        labelled = [self._person(camera, mesh, fraction) for mesh, fraction in zip(meshes, fractions)]
        return CrowdScene(index, image, tuple(labelled), ids)

    def _stage(self, rng, camera: Camera, keys, vertices, normals, families) -> list[PersonMesh]:
        """Each body turned to a random heading, standing on the ground at its place, nearest first."""
        bodies = self.bodies
        turned, colours, lifts = [], [], []
        for key, body_vertices, family in zip(keys, vertices, families):
            own = bodies.streams(key)["scene"]
            spin = Rotation.from_euler("z", own.uniform(-180.0, 180.0), degrees=True).as_matrix()
            turned.append((spin, body_vertices @ spin.T))
            colours.append(sample_clothing(own, bodies.body.regions, bodies.rest_points, bodies.split.patterns))
            lifts.append(own.uniform(*JUMP_LIFT) if family == "jumping" else 0.0)
        low = np.array([points.min(0) for _, points in turned])
        high = np.array([points.max(0) for _, points in turned])
        centres = (low[:, :2] + high[:, :2]) / 2.0
        radii = np.array([np.linalg.norm(points[:, :2] - c, axis=1).max() for (_, points), c in zip(turned, centres)])
        ground = place_people(rng, camera, radii, high[:, 2] - low[:, 2], self.size, self.depth_range)
        meshes = []
        for k, (spin, points) in enumerate(turned):
            offset = np.array([*(ground[k] - centres[k]), lifts[k] - low[k, 2]])
            facing = _facing(self.bodies.body, points, ground[k])
            meshes.append(
                PersonMesh(
                    camera.to_camera(points + offset).astype(np.float32),
                    (normals[k] @ (camera.rotation @ spin).T).astype(np.float32),
                    colours[k],
                    float(ground[k][1]),
                    families[k],
                    facing,
                )
            )
        return sorted(meshes, key=lambda mesh: mesh.distance)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """(H, W, 3) uint8: a window of one of the generator's square backgrounds."""
        width, height = self.size
        side = max(width, height)
        square = self.bodies.backgrounds.sample(rng, side, self.bodies.config.backgrounds)
        top, left = int(rng.integers(side - height + 1)), int(rng.integers(side - width + 1))
        return np.ascontiguousarray(square[top : top + height, left : left + width])

    def compose(
        self, camera: Camera, meshes: list[PersonMesh], background: np.ndarray | None = None, lights=None
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Render ``meshes`` together: image (H, W, 3) uint8, ids (H, W) uint8 (1 + mesh index of
        the nearest surface, 0 = none) and each mesh's visible fraction (0 when wholly out of view)."""
        faces = self.bodies.body.faces
        width, height = self.size
        nearest = np.full((height, width), np.inf, np.float32)
        ids = np.zeros((height, width), np.uint8)
        alone = []
        for k, mesh in enumerate(meshes):  # one depth render per person: its pixels when alone
            view = self.id_renderer.render(mesh.vertices, faces, camera.intrinsics, normals=mesh.normals)
            alone.append(int(view.mask.sum()))
            assert view.depth is not None  # rendered with depth (the default)
            closer = view.mask & (view.depth < nearest)
            nearest[closer], ids[closer] = view.depth[closer], k + 1
        visible = np.bincount(ids.ravel(), minlength=len(meshes) + 1)[1:]
        fractions = [float(seen) / count if count else 0.0 for seen, count in zip(visible, alone)]
        if not meshes:
            return (np.zeros((height, width, 3), np.uint8) if background is None else background.copy()), ids, []
        others = tuple(MeshPart(m.vertices, faces, m.colours, m.normals) for m in meshes[1:])
        first = meshes[0]
        colour = self.renderer.render(
            first.vertices,
            faces,
            camera.intrinsics,
            color=first.colours,
            background=background,
            light=lights,
            extra_meshes=others,
            normals=first.normals,
            with_depth=False,
        )
        return colour.rgb, ids, fractions

    def _person(self, camera: Camera, mesh: PersonMesh, visible_fraction: float) -> CrowdPerson:
        width, height = self.size
        pixels = camera.project(mesh.vertices.astype(np.float64))
        limit = np.array([width - 0.5, height - 0.5])
        inside = ((pixels >= -0.5) & (pixels <= limit)).all(1)
        low, high = np.clip(pixels.min(0), -0.5, limit), np.clip(pixels.max(0), -0.5, limit)
        box = (float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1]))
        in_frame = float(inside.mean())
        ignore = visible_fraction < MIN_VISIBLE_FRACTION or in_frame < MIN_IN_FRAME or box[3] < MIN_BOX_HEIGHT
        return CrowdPerson(
            box,
            round(visible_fraction, 4),
            round(in_frame, 4),
            bool(ignore),
            round(mesh.distance, 3),
            mesh.family,
            round(mesh.facing, 1),
        )


def _facing(body, world_vertices: np.ndarray, ground: np.ndarray) -> float:
    """Degrees between the way the pelvis faces (across the hips, LSP joints 2 = right and
    3 = left, turned a quarter about up) and the way to the camera above (0, 0), on the ground."""
    _, joints = body.labels(world_vertices.astype(np.float64))
    front = np.cross(joints[3] - joints[2], [0.0, 0.0, 1.0])[:2]
    towards = -np.asarray(ground, dtype=np.float64)
    cosine = front @ towards / max(float(np.linalg.norm(front) * np.linalg.norm(towards)), 1e-12)
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def check_people(people: tuple[int, int]) -> tuple[int, int]:
    """(low, high) people per scene, 1 <= low <= high <= MAX_PEOPLE, or a one-line error."""
    try:
        low, high = (int(v) for v in people)
    except (TypeError, ValueError):
        raise FastMetroError(f"crowd scenes: people must be a (low, high) pair, got {people!r}") from None
    if not 1 <= low <= high <= MAX_PEOPLE:
        raise FastMetroError(f"crowd scenes: people must satisfy 1 <= low <= high <= {MAX_PEOPLE}, got {people!r}")
    return low, high


def render_crowd_scenes(
    num: int,
    seed: int = 0,
    size: tuple[int, int] = (640, 480),
    people: tuple[int, int] = (1, 4),
    start: int = 0,
    maker: CrowdMaker | None = None,
    **options,
) -> Iterator[CrowdScene]:
    """Scenes ``start .. start + num - 1`` of ``seed`` at ``size`` (W, H) pixels.

    ``maker``: a :class:`CrowdMaker` of that size to reuse (its Anny model loads in seconds once
    cached, but still costs memory); otherwise one is made with ``options`` (split, backgrounds,
    samples, poses) and released at the end.
    """
    check_people(people)
    if maker is not None and tuple(maker.size) != tuple(size):
        raise FastMetroError(f"crowd scenes: the maker renders {maker.size}, asked for {tuple(size)}")
    own = maker is None
    if maker is None:
        maker = CrowdMaker(size, **options)
    try:
        for index in range(start, start + num):
            yield maker.scene(seed, index, people)
    finally:
        if own:
            maker.release()


def write_labelled_set(scenes, out_dir: str | Path, prefix: str = "crowd") -> Path:
    """Write scenes as ``<prefix>_<index>.png`` plus ``boxes.json`` (``{image name: [[x, y, w, h], ...]}``,
    the people that count: what ``fastmetro infer --boxes`` reads) and ``people.json`` (every
    person with its visible fraction, in-frame fraction, ignore flag, distance, pose family, facing).
    Returns the boxes file."""
    import json

    import cv2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    boxes, people = {}, {}
    for scene in scenes:
        name = f"{prefix}_{scene.index:05d}.png"
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise FastMetroError(f"{out_dir / name}: PNG encoding failed")
        with atomic_write(out_dir / name) as handle:
            handle.write(encoded.tobytes())
        boxes[name] = [[round(v, 1) for v in box] for box in scene.boxes()]
        people[name] = [{**vars(person), "box": [round(v, 1) for v in person.box]} for person in scene.people]
    with atomic_write(out_dir / "people.json", "w") as handle:
        json.dump(people, handle, indent=1)
    with atomic_write(out_dir / "boxes.json", "w") as handle:
        json.dump(boxes, handle, indent=1)
    return out_dir / "boxes.json"

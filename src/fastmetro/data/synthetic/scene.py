"""Everything around the body in a synthetic sample: shape, camera, colours, light, background.

Each ``sample_*`` function takes its own ``numpy.random.Generator`` so a sample's content depends
only on (seed, index), never on the order or the process that draws it.

Camera model: pinhole, square pixels, principal point at the image centre (``cx = cy = (S-1)/2``
in pixel-centre coordinates), OpenCV axes (x right, y down, z forward). The body is rotated to a
random yaw (all around) and elevation (-15..35 degrees; meant as "camera above looking down for
+", but the rotation below turns the view the other way, so version-1 data see the body from
below for + -- kept as it is so version-1 folders resume identically; version 2's
:mod:`~fastmetro.data.synthetic.framing` has the intended sign), the
camera rolls in-plane (+-20 degrees, occasionally up to +-60), and the distance is chosen so the
whole mesh projects inside the image with a random margin (3-12 %% of the side; up to 15 %%
further back).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from fastmetro.data.synthetic import textures
from fastmetro.render import Light, MeshPart

FOV_DEGREES = (25.0, 65.0)
ELEVATION_DEGREES = (-15.0, 35.0)
ROLL_DEGREES = 20.0
WIDE_ROLL_DEGREES = 60.0
WIDE_ROLL_PROBABILITY = 0.1
MARGIN = (0.03, 0.12)
OCCLUDER_PROBABILITY = 0.25

# Anny world (x left, y back, z up) -> camera looking at the body's front: x_cam = x_world
# (the body's left is the image's right), y_cam = -z_world, z_cam = y_world.
WORLD_TO_FRONT_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

# scikit-image's bundled photographs (no download, no people): the real-photo backgrounds.
PHOTO_NAMES = (
    "brick",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "rocket",
    "page",
    "text",
    "retina",
)


def sample_phenotypes(rng: np.random.Generator) -> np.ndarray:
    """(11,) Anny phenotype values in [0, 1] (see body.PHENOTYPE_LABELS).

    Mostly adults (age 0.45..1 = late teens to old), 15 %% children (0.25..0.45); every other
    parameter uniform; the three ancestry weights from a flat Dirichlet.
    """
    gender = rng.uniform()
    age = rng.uniform(0.25, 0.45) if rng.uniform() < 0.15 else rng.uniform(0.45, 1.0)
    muscle, weight, height, proportions, cupsize, firmness = rng.uniform(size=6)
    ancestry = rng.dirichlet(np.ones(3))
    return np.array([gender, age, muscle, weight, height, proportions, cupsize, firmness, *ancestry])


@dataclass(frozen=True)
class Camera:
    """World -> camera: ``x_cam = rotation @ x_world + translation``; intrinsics (3, 3) px."""

    rotation: np.ndarray
    translation: np.ndarray
    intrinsics: np.ndarray

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return points @ self.rotation.T + self.translation

    def project(self, camera_points: np.ndarray) -> np.ndarray:
        """(N, 3) camera-space metres -> (N, 2) pixels."""
        projected = camera_points @ self.intrinsics.T
        return projected[:, :2] / projected[:, 2:3]


def sample_camera(rng: np.random.Generator, vertices: np.ndarray, size: int) -> Camera:
    """A camera that sees all of ``vertices`` ((V, 3) Anny world) inside a ``size`` square image."""
    fov = np.radians(rng.uniform(*FOV_DEGREES))
    focal = (size / 2.0) / np.tan(fov / 2.0)
    yaw = rng.uniform(-180.0, 180.0)
    elevation = rng.uniform(*ELEVATION_DEGREES)
    roll_limit = WIDE_ROLL_DEGREES if rng.uniform() < WIDE_ROLL_PROBABILITY else ROLL_DEGREES
    roll = rng.uniform(-roll_limit, roll_limit)
    margin = rng.uniform(*MARGIN)
    slack = rng.uniform(0.0, 1.0, size=3)

    # This first sampler tilts by -elevation: positive values in fact look up from below.
    view = View.of(vertices, yaw, -elevation, roll, size, focal, margin)
    return Camera(view.rotation, view.whole_body_translation(slack), view.intrinsics)


@dataclass(frozen=True)
class View:
    """A body seen from a direction, centred; what both camera samplers frame from.

    ``rotation``: turn about world up (yaw), tilt about the camera's x (``tilt`` degrees, + = the
    view turns down), roll in-plane. ``points``: rotated vertices minus their box ``centre``;
    ``tan_half``: half the usable image (``margin`` left free) in tangent units; ``needed``: the
    smallest distance d with |x| / (z + d) <= tan_half for every vertex and both image axes.
    """

    rotation: np.ndarray
    points: np.ndarray
    centre: np.ndarray
    intrinsics: np.ndarray
    tan_half: float
    needed: float

    @classmethod
    def of(
        cls, vertices: np.ndarray, yaw: float, tilt: float, roll: float, size: int, focal: float, margin: float
    ) -> View:
        rotation = (
            Rotation.from_euler("z", roll, degrees=True).as_matrix()
            @ Rotation.from_euler("x", tilt, degrees=True).as_matrix()
            @ WORLD_TO_FRONT_CAMERA
            @ Rotation.from_euler("z", yaw, degrees=True).as_matrix()
        )
        points = vertices @ rotation.T
        centre = (points.min(0) + points.max(0)) / 2.0
        points = points - centre
        tan_half = (size / 2.0 - 0.5) * (1.0 - 2.0 * margin) / focal
        needed = float(np.max(np.abs(points[:, :2]).max(1) / tan_half - points[:, 2]))
        principal = (size - 1) / 2.0
        intrinsics = np.array([[focal, 0.0, principal], [0.0, focal, principal], [0.0, 0.0, 1.0]])
        return cls(rotation, points, centre, intrinsics, tan_half, needed)

    def whole_body_translation(self, slack: np.ndarray) -> np.ndarray:
        """The body fully in view, a little further than needed and off-centre within the spare
        room, by the three uniform draws ``slack``; camera point = rotated point + this."""
        points, tan_half = self.points, self.tan_half
        distance = self.needed * (1.0 + 0.15 * slack[0])
        depth = points[:, 2] + distance
        room_x = tan_half - np.max(np.abs(points[:, 0]) / depth)
        room_y = tan_half - np.max(np.abs(points[:, 1]) / depth)
        shift = np.array([(2 * slack[1] - 1) * room_x, (2 * slack[2] - 1) * room_y]) * depth.min() * 0.8
        return np.array([shift[0], shift[1], distance]) - self.centre


def sample_light(rng: np.random.Generator) -> Light:
    """A directional key light from the camera's hemisphere plus a tinted ambient term."""
    direction = rng.normal(size=3)
    direction[2] = abs(direction[2]) + 0.3  # pointing into the scene: lights the visible side
    warmth = rng.uniform(-0.1, 0.1)
    intensity = rng.uniform(0.45, 0.9)
    tint = np.array([1.0 + warmth, 1.0, 1.0 - warmth])
    ambient = rng.uniform(0.2, 0.5)
    return Light(
        direction=tuple(direction / np.linalg.norm(direction)),
        color=tuple(intensity * tint),
        ambient=tuple(ambient * tint),
        specular=float(rng.uniform(0.0, 0.2)),
    )


SKIN_TONES = np.array(
    [
        [0.98, 0.84, 0.72],
        [0.93, 0.75, 0.6],
        [0.84, 0.63, 0.47],
        [0.72, 0.52, 0.37],
        [0.55, 0.38, 0.26],
        [0.36, 0.24, 0.16],
    ]
)
HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.5, 0.35, 0.2], [0.8, 0.68, 0.45], [0.6, 0.6, 0.6]])


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform()
    saturation = rng.uniform(0.1, 0.9)
    value = rng.uniform(0.15, 0.95)
    # HSV -> RGB
    index = int(hue * 6) % 6
    fraction = hue * 6 - int(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - fraction * saturation), value * (1 - (1 - fraction) * saturation)
    return np.array([(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)][index])


def sample_vertex_colours(
    rng: np.random.Generator, regions: dict[str, np.ndarray], rest_height: np.ndarray
) -> np.ndarray:
    """(V, 3) colours: skin, hair, a top, trousers or shorts, shoes.

    regions: (V,) bool masks by dominant bone (body.CLOTHING_REGIONS); rest_height: (V,) rest-pose
    z (metres), used for the hair line.
    """
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.05)
    colours = np.tile(skin, (len(rest_height), 1))
    top, bottom, shoes = _random_colour(rng), _random_colour(rng), _random_colour(rng) * 0.6
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
    colours[regions["torso"] | regions["upper_arm"]] = top
    if rng.uniform() < 0.5:  # long sleeves
        colours[regions["forearm"]] = top
    colours[regions["hips"] | regions["thigh"]] = bottom
    if rng.uniform() < 0.6:  # long trousers
        colours[regions["shank"]] = bottom
    if rng.uniform() < 0.85:
        colours[regions["feet"]] = shoes
    head_top = rest_height[regions["head"]].max()
    hair_line = head_top - rng.uniform(0.04, 0.12)
    colours[regions["skull"] & (rest_height > hair_line)] = hair
    # A little per-vertex noise so flat colours are not perfectly flat.
    colours *= rng.uniform(0.93, 1.07, size=(len(colours), 1))
    return np.clip(colours, 0.0, 1.0).astype(np.float32)


BACKGROUND_KINDS = ("mixed", "studio")


class Backgrounds:
    """Background images.

    ``mixed`` (default): random crops of real photos (60 %) and procedural textures (clouds,
    stripes, floor/wall). ``studio``: a plain backdrop (a floor/wall split with a soft vertical
    gradient in muted colours, as in a capture studio such as Human3.6M's), which a network
    trained from scratch learns to ignore much sooner than clutter.
    """

    def __init__(self, photo_names=PHOTO_NAMES):
        import skimage.data

        self.photos = []
        for name in photo_names:
            try:
                image = np.asarray(getattr(skimage.data, name)())
            except Exception:  # a photo that needs a download is simply skipped
                continue
            if image.dtype == bool:
                image = image.astype(np.uint8) * 255
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            self.photos.append(np.ascontiguousarray(image[:, :, :3].astype(np.uint8)))

    def sample(self, rng: np.random.Generator, size: int, kind: str = "mixed") -> np.ndarray:
        """(size, size, 3) uint8 background of the given kind (see :data:`BACKGROUND_KINDS`)."""
        if kind == "studio":
            return self._studio(rng, size)
        if kind != "mixed":
            raise ValueError(f"background kind must be one of {BACKGROUND_KINDS}, got {kind!r}")
        if self.photos and rng.uniform() < 0.6:
            return self._photo(rng, size)
        return self._procedural(rng, size)

    @staticmethod
    def _studio(rng: np.random.Generator, size: int) -> np.ndarray:
        # Muted colours: mixed towards mid grey so the backdrop never outshines the body.
        wall, floor = (0.5 * _random_colour(rng) + 0.25 for _ in range(2))
        rows = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
        horizon = rng.uniform(0.55, 0.9)
        shade = 1.0 - 0.25 * np.abs(rows - horizon)  # lighter towards the floor line
        image = np.where(rows > horizon, floor, wall) * shade * 255.0
        image = np.broadcast_to(image, (size, size, 3)).astype(np.float32)
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * 3.0  # sensor-like grain
        return np.clip(image, 0, 255).astype(np.uint8)

    def _photo(self, rng: np.random.Generator, size: int) -> np.ndarray:
        import cv2

        photo = self.photos[rng.integers(len(self.photos))]
        height, width = photo.shape[:2]
        side = int(rng.uniform(0.4, 1.0) * min(height, width))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = photo[top : top + side, left : left + side]
        if rng.uniform() < 0.5:
            crop = crop[:, ::-1]
        image = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)
        tint = rng.uniform(0.7, 1.2, size=3)
        return np.clip(image * tint, 0, 255).astype(np.uint8)

    def _procedural(self, rng: np.random.Generator, size: int) -> np.ndarray:

        kind = rng.integers(3)
        base, other = _random_colour(rng), _random_colour(rng)
        field = (textures.clouds, textures.stripes, textures.room)[kind](rng, size)
        return _paint(rng, field, base, other)


def _paint(rng: np.random.Generator, field: np.ndarray, base: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8: ``base`` where the (S, S) field is 0, ``other`` where it is 1, plus grain."""
    field = field.astype(np.float32)[..., None]
    image = base.astype(np.float32) * (1 - field) + other.astype(np.float32) * field
    image = image.astype(np.float32) * 255.0
    image += rng.standard_normal(image.shape, dtype=np.float32) * 5.0  # sensor-like grain
    return np.clip(image, 0, 255).astype(np.uint8)


def sample_occluder(rng: np.random.Generator, camera_points: np.ndarray) -> MeshPart | None:
    """With probability OCCLUDER_PROBABILITY, a box between the camera and the body.

    camera_points: (V, 3) body vertices in camera coordinates. The box covers a random part of
    the body's extent (it may hide a limb or the torso, never the whole body).
    """
    import trimesh

    if rng.uniform() >= OCCLUDER_PROBABILITY:
        return None
    low, high = camera_points.min(0), camera_points.max(0)
    nearest = low[2]
    depth = nearest * rng.uniform(0.6, 0.9)
    scale = depth / camera_points[:, 2].mean()
    extent = (high - low) * scale
    size = np.array([extent[0] * rng.uniform(0.15, 0.5), extent[1] * rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.3)])
    if rng.uniform() < 0.5:
        size[1] = extent[1] * rng.uniform(0.5, 1.2)  # a pole or a door frame
        size[0] = extent[0] * rng.uniform(0.08, 0.2)
    target = low + (high - low) * rng.uniform(0.1, 0.9, size=3)
    centre = np.array([target[0] * scale, target[1] * scale, depth])
    box = trimesh.creation.box(extents=size)
    box.unmerge_vertices()  # one vertex per face corner: flat-shaded faces, not a smooth blob
    spin = Rotation.from_euler("xyz", rng.uniform(-25, 25, size=3), degrees=True).as_matrix()
    vertices = np.asarray(box.vertices) @ spin.T + centre
    return MeshPart(vertices=vertices, faces=np.asarray(box.faces), color=_random_colour(rng))

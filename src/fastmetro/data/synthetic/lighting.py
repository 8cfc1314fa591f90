"""Scene lighting of generator version 2: one to three coloured lights and a tinted ambient term.

A key light from the camera's side, often a dimmer fill from the other side, sometimes a rim
light from behind the subject (it only catches the silhouette). Each light has a colour
temperature (2500-9000 K: tungsten to overcast sky), the ambient term its own; one exposure
factor scales everything (dim rooms to bright sun). No cast shadows: a shadow map per sample
would roughly double the llvmpipe render time.
"""

from __future__ import annotations

import numpy as np

from fastmetro.render import Light


def kelvin_to_rgb(kelvin: float) -> np.ndarray:
    """(3,) RGB of a black body at ``kelvin`` (1000-40000 K), scaled so the largest channel is 1.

    Tanner Helland's fit of the CIE black-body colours (a published curve fit, accurate to a
    few per cent, plenty for lighting).
    """
    t = float(np.clip(kelvin, 1000.0, 40000.0)) / 100.0
    if t <= 66:
        red = 255.0
        green = 99.4708025861 * np.log(t) - 161.1195681661
        blue = 0.0 if t <= 19 else 138.5177312231 * np.log(t - 10) - 305.0447927307
    else:
        red = 329.698727446 * (t - 60) ** -0.1332047592
        green = 288.1221695283 * (t - 60) ** -0.0755148492
        blue = 255.0
    rgb = np.clip(np.array([red, green, blue]), 0.0, 255.0) / 255.0
    return rgb / rgb.max()


def _towards_scene(rng: np.random.Generator, side: float) -> np.ndarray:
    """A unit direction from a light on the camera's side (``side`` -1 left .. +1 right) into the scene."""
    direction = np.array([-side * rng.uniform(0.2, 1.0), rng.uniform(-0.2, 1.0), rng.uniform(0.3, 1.0)])
    return direction / np.linalg.norm(direction)


def sample_lights(rng: np.random.Generator) -> tuple[Light, ...]:
    """1-3 lights (camera coordinates: x right, y down, z forward); the first carries the ambient term."""
    exposure = rng.uniform(0.7, 1.3)
    key_side = 1.0 if rng.uniform() < 0.5 else -1.0
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    ambient_tint = kelvin_to_rgb(rng.uniform(4000.0, 12000.0))
    ambient = rng.uniform(0.12, 0.45) * exposure * ambient_tint
    key_intensity = rng.uniform(0.35, 0.85) * exposure
    lights = [
        Light(
            direction=tuple(_towards_scene(rng, key_side)),
            color=tuple(key_intensity * kelvin_to_rgb(rng.uniform(2500.0, 8000.0))),
            ambient=tuple(ambient),
            specular=float(rng.uniform(0.0, 0.25)),
        )
    ]
    if count >= 2:  # fill from the other side
        lights.append(
            Light(
                direction=tuple(_towards_scene(rng, -key_side * rng.uniform(0.3, 1.0))),
                color=tuple(rng.uniform(0.08, 0.35) * exposure * kelvin_to_rgb(rng.uniform(3000.0, 9000.0))),
                ambient=(0.0, 0.0, 0.0),
                specular=0.0,
            )
        )
    if count >= 3:  # rim: from behind the subject, towards the camera, grazing the outline
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle), -rng.uniform(0.2, 0.6)])
        lights.append(
            Light(
                direction=tuple(direction / np.linalg.norm(direction)),
                color=tuple(rng.uniform(0.3, 0.8) * exposure * kelvin_to_rgb(rng.uniform(3000.0, 9000.0))),
                ambient=(0.0, 0.0, 0.0),
                specular=float(rng.uniform(0.0, 0.3)),
            )
        )
    return tuple(lights)

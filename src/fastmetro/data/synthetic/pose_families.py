"""Whole-body pose families with coordinated limbs, built procedurally.

No permissively licensed collection of real human motion can be installed here (PyPI has BVH
parsers but no motion data under a licence that allows this use; Anny ships one CC0 walk cycle),
so each family is a small generative model written from how the body moves: it draws a few
coordinated parameters (gait phase and stride; sitting on a chair, on the floor or
cross-legged; which knee is down...) and sets the joints that carry the posture together; every
other joint gets a calm everyday draw and every set joint a few degrees of jitter
(:class:`~fastmetro.data.synthetic.pose_builder.FamilyPoser`). All angles are degrees in the
left-side convention of :mod:`fastmetro.data.synthetic.pose_builder` (hip / shoulder x- = flexion
forward, y- = abduction, z = rotation; spine x- = bend forward; knee / elbow = flexion).

=========  ==========================================================  =========================
family     variants                                                    camera elevation (deg)
=========  ==========================================================  =========================
standing   today's sampler: every joint inside everyday ranges         -15..35
walking    walking / running gait, arms swinging against the legs      -15..35
sitting    chair, floor with legs out, knees hugged, cross-legged      -10..45
kneeling   upright on both knees, sitting on the heels, one knee down  -10..45
squatting  deep or half squat, arms forward / on the knees / hanging   -10..45
lying      supine, prone (head turned), on either side (recovery)      20..85
crawling   hands and knees, bear crawl; opposite limbs move together   0..60
jumping    star jump, tuck jump, split leap, arms-up jump              -20..30
athletic   front / side kick, lunge, arms overhead, forward fold,      -15..35
           throw
inverted   handstand (legs together / split / bent), cartwheel         -15..35
=========  ==========================================================  =========================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastmetro.data.synthetic.pose_builder import FamilyPoser, PoseSpec, tilt

SPINE = ("spine05", "spine04", "spine03", "spine02", "spine01")
NECK = ("neck01", "neck02", "neck03")


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _spine(poser: FamilyPoser, spec: PoseSpec, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> None:
    """Spread a trunk bend (x), side bend (y) and twist (z) over the five spine segments."""
    for bone in SPINE:
        poser.euler(spec, bone, x / 5, y / 5, z / 5)


def _neck(poser: FamilyPoser, spec: PoseSpec, x: float = 0.0, z: float = 0.0) -> None:
    """Nod (x+ = look up) and turn (z) shared by the neck and the head."""
    for bone in (*NECK, "head"):
        poser.euler(spec, bone, x / 4, 0.0, z / 4)


def _overhead(rng, poser: FamilyPoser, spec: PoseSpec, side: str, spread: tuple[float, float] = (0.05, 0.4)) -> None:
    """An arm straight up along the head (a little out to the side, a little forward or back)."""
    poser.aim(spec, f"upperarm01.{side}", (_u(rng, *spread), _u(rng, -0.25, 0.15), 1.0), twist=_u(rng, -20, 20))


def _free_arms(rng, poser: FamilyPoser, spec: PoseSpec) -> None:
    """One of a few everyday arm settings (both arms), or nothing (calm random arms)."""
    choice = _choose(rng, {"calm": 2, "lap": 1, "forward": 1, "akimbo": 0.7, "wave": 0.6})
    if choice == "lap":
        for side in "LR":
            poser.euler(spec, f"upperarm01.{side}", -_u(rng, 15, 35), _u(rng, 0, 20), _u(rng, -10, 10))
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 50, 90))
    elif choice == "forward":
        for side in "LR":
            poser.euler(spec, f"upperarm01.{side}", -_u(rng, 50, 90), _u(rng, -10, 20), -_u(rng, 20, 45))
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 60))
    elif choice == "akimbo":
        for side in "LR":
            poser.euler(spec, f"upperarm01.{side}", _u(rng, 0, 15), -_u(rng, 0, 15), _u(rng, 10, 30))
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 80, 110))
    elif choice == "wave":
        side = "LR"[int(rng.integers(2))]
        poser.euler(spec, f"upperarm01.{side}", -_u(rng, 20, 60), -_u(rng, 60, 100), 0.0)
        poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 70, 130))


# ---------------------------------------------------------------------------- families
def walking(rng, poser: FamilyPoser) -> PoseSpec:
    spec = PoseSpec()
    running = rng.uniform() < 0.35
    phase = _u(rng, 0, 2 * np.pi)
    hip_amplitude = _u(rng, 25, 45) if running else _u(rng, 12, 28)
    arm_amplitude = hip_amplitude * _u(rng, 0.6, 1.2)
    for side, sign in (("L", 1.0), ("R", -1.0)):
        swing = sign * np.sin(phase)  # +1: this leg fully forward, its arm fully back
        lagging = max(0.0, -swing + 0.3) / 1.3  # the trailing / swinging leg bends its knee
        hip = -hip_amplitude * swing - (12 if running else 0)
        poser.euler(spec, f"upperleg01.{side}", hip, _u(rng, -4, 2), _u(rng, -5, 5))
        knee = _u(rng, 3, 12)
        knee += lagging * (_u(rng, 70, 110) if running else _u(rng, 25, 55))
        poser.hinge(spec, f"lowerleg01.{side}", knee)
        poser.euler(spec, f"foot.{side}", _u(rng, 0, 20) * lagging - _u(rng, 0, 10) * max(swing, 0), 0.0, 0.0)
        poser.euler(spec, f"upperarm01.{side}", arm_amplitude * swing, _u(rng, 0, 10), _u(rng, -10, 10))
        poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 70, 100) if running else _u(rng, 5, 35))
    _spine(poser, spec, x=-_u(rng, 5, 20) if running else -_u(rng, 0, 6), z=-8 * np.sin(phase))
    spec.finger_curl = (_u(rng, 10, 50),) * 2
    return spec


def sitting(rng, poser: FamilyPoser) -> PoseSpec:
    spec = PoseSpec()
    variant = _choose(rng, {"chair": 0.5, "legs_out": 0.2, "knees_up": 0.15, "cross_legged": 0.15})
    if variant == "chair":
        spread = _u(rng, 0, 18)
        for side in "LR":
            poser.euler(spec, f"upperleg01.{side}", -_u(rng, 75, 100), 0.0, spread + _u(rng, -5, 5))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 65, 110))
        _spine(poser, spec, x=_u(rng, -25, 10))
        _free_arms(rng, poser, spec)
    elif variant == "legs_out":
        for side in "LR":
            poser.euler(spec, f"upperleg01.{side}", -_u(rng, 80, 95), 0.0, _u(rng, 0, 15))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 0, 35))
        lean_back = _u(rng, 0, 25)
        spec.root = tilt(x=-lean_back)
        for side in "LR":  # hands on the floor behind
            poser.euler(spec, f"upperarm01.{side}", _u(rng, 25, 45) + lean_back * 0.5, -_u(rng, 0, 15), 0.0)
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 15))
    elif variant == "knees_up":
        for side in "LR":
            poser.euler(spec, f"upperleg01.{side}", -_u(rng, 100, 118), 0.0, _u(rng, 0, 12))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 105, 130))
            poser.euler(spec, f"upperarm01.{side}", -_u(rng, 35, 60), _u(rng, -5, 10), -_u(rng, 5, 25))
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 30, 70))
        spec.root = tilt(x=-_u(rng, 0, 15))
        _spine(poser, spec, x=-_u(rng, 5, 20))
    else:  # cross-legged: thighs forward and out, shanks folded in front, crossed at the ankles
        for side in "LR":
            poser.aim(spec, f"upperleg01.{side}", (_u(rng, 0.55, 0.8), -1.0, -_u(rng, 0.0, 0.2)), twist=_u(rng, 55, 75))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 115, 135))
        _spine(poser, spec, x=_u(rng, -15, 5))
        _free_arms(rng, poser, spec)
    return spec


def kneeling(rng, poser: FamilyPoser) -> PoseSpec:
    spec = PoseSpec()
    variant = _choose(rng, {"upright": 0.35, "on_heels": 0.3, "one_knee": 0.35})
    if variant == "upright":
        for side in "LR":
            poser.euler(spec, f"upperleg01.{side}", _u(rng, -15, 5), 0.0, _u(rng, 0, 8))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 80, 100))
            poser.euler(spec, f"foot.{side}", _u(rng, 25, 40))
    elif variant == "on_heels":  # thighs sloping down to the knees, knees folded flat (past the everyday 140)
        for side in "LR":
            poser.euler(spec, f"upperleg01.{side}", -_u(rng, 62, 80), 0.0, _u(rng, 0, 12))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 150, 158))
            poser.euler(spec, f"foot.{side}", _u(rng, 25, 40))
        _spine(poser, spec, x=_u(rng, -25, 5))
    else:
        down, up = ("L", "R") if rng.uniform() < 0.5 else ("R", "L")
        poser.euler(spec, f"upperleg01.{up}", -_u(rng, 75, 100), 0.0, _u(rng, 0, 10))
        poser.hinge(spec, f"lowerleg01.{up}", _u(rng, 75, 100))
        poser.euler(spec, f"upperleg01.{down}", _u(rng, -10, 12), 0.0, _u(rng, 0, 8))
        poser.hinge(spec, f"lowerleg01.{down}", _u(rng, 80, 105))
        poser.euler(spec, f"foot.{down}", _u(rng, 15, 40))
    _free_arms(rng, poser, spec)
    return spec


def squatting(rng, poser: FamilyPoser) -> PoseSpec:
    spec = PoseSpec()
    depth = _u(rng, 0.4, 1.0)  # 1 = full squat, heels down, thighs on the calves
    spread = _u(rng, 8, 30)
    for side in "LR":
        poser.euler(spec, f"upperleg01.{side}", -(60 + 60 * depth), 0.0, spread)
        poser.hinge(spec, f"lowerleg01.{side}", 60 + 78 * depth)
        poser.euler(spec, f"foot.{side}", -_u(rng, 10, 25) + (_u(rng, 0, 35) if rng.uniform() < 0.3 else 0.0))
    _spine(poser, spec, x=-_u(rng, 10, 35))
    arms = _choose(rng, {"forward": 1, "on_knees": 1, "hanging": 1})
    for side in "LR":
        if arms == "forward":
            poser.euler(spec, f"upperarm01.{side}", -_u(rng, 60, 95), _u(rng, 0, 15), -_u(rng, 25, 45))
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 50))
        elif arms == "on_knees":
            poser.euler(spec, f"upperarm01.{side}", -_u(rng, 35, 55), _u(rng, -10, 5), -_u(rng, 0, 20))
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 20, 70))
        else:
            poser.euler(spec, f"upperarm01.{side}", -_u(rng, 10, 30), _u(rng, -15, 5), 0.0)
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 30))
    return spec


def lying(rng, poser: FamilyPoser) -> PoseSpec:
    spec = PoseSpec()
    variant = _choose(rng, {"supine": 0.4, "prone": 0.3, "side": 0.3})
    roll = _u(rng, -15, 15)
    if variant == "supine":
        spec.root = tilt(y=roll) @ tilt(x=-90 + _u(rng, -10, 5))
        legs = _choose(rng, {"straight": 2, "one_knee_up": 1, "knees_up": 1})
        for side in "LR":
            raised = legs == "knees_up" or (legs == "one_knee_up" and side == "L")
            poser.euler(
                spec, f"upperleg01.{side}", -_u(rng, 40, 75) if raised else _u(rng, -15, 5), 0.0, _u(rng, -5, 10)
            )
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 70, 110) if raised else _u(rng, 0, 12))
        arms = _choose(rng, {"sides": 2, "overhead": 1, "behind_head": 1, "on_belly": 1})
        for side in "LR":
            if arms == "overhead":
                poser.euler(spec, f"upperarm01.{side}", 0.0, -_u(rng, 100, 140), 0.0)
                poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 40))
            elif arms == "behind_head":
                poser.euler(spec, f"upperarm01.{side}", -_u(rng, 10, 30), -_u(rng, 95, 115), 0.0)
                poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 115, 140))
            elif arms == "on_belly":
                poser.euler(spec, f"upperarm01.{side}", -_u(rng, 15, 35), _u(rng, 5, 20), 0.0)
                poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 70, 100))
    elif variant == "prone":
        spec.root = tilt(y=roll) @ tilt(x=90 + _u(rng, -5, 10))
        for side in "LR":
            poser.euler(spec, f"upperleg01.{side}", _u(rng, -5, 12), 0.0, _u(rng, -5, 10))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 0, 70) if rng.uniform() < 0.3 else _u(rng, 0, 12))
        if rng.uniform() < 0.5:  # arms folded under the head
            for side in "LR":
                poser.euler(spec, f"upperarm01.{side}", -_u(rng, 20, 40), -_u(rng, 85, 110), 0.0)
                poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 100, 130))
            _neck(poser, spec, x=_u(rng, 10, 30))
        else:
            _neck(poser, spec, x=_u(rng, 0, 20), z=_u(rng, 40, 70) * (1 if rng.uniform() < 0.5 else -1))
    else:  # on a side, in the recovery position or stretched out
        down = "L" if rng.uniform() < 0.5 else "R"
        up = "R" if down == "L" else "L"
        spec.root = tilt(x=roll) @ tilt(y=(90 if down == "L" else -90) + _u(rng, -10, 10))
        poser.euler(spec, f"upperleg01.{up}", -_u(rng, 40, 90), 0.0, 0.0)
        poser.hinge(spec, f"lowerleg01.{up}", _u(rng, 40, 100))
        poser.euler(spec, f"upperleg01.{down}", -_u(rng, 0, 30), 0.0, 0.0)
        poser.hinge(spec, f"lowerleg01.{down}", _u(rng, 0, 40))
        poser.euler(spec, f"upperarm01.{down}", -_u(rng, 60, 100), _u(rng, -10, 10), -_u(rng, 10, 40))
        poser.hinge(spec, f"lowerarm01.{down}", _u(rng, 10, 90))
        poser.euler(spec, f"upperarm01.{up}", -_u(rng, 0, 40), _u(rng, 0, 15), 0.0)
        poser.hinge(spec, f"lowerarm01.{up}", _u(rng, 0, 80))
    return spec


def crawling(rng, poser: FamilyPoser) -> PoseSpec:
    spec = PoseSpec()
    bear = rng.uniform() < 0.3  # on hands and feet, hips high
    phase = np.sin(_u(rng, 0, 2 * np.pi)) * _u(rng, 5, 15)  # opposite limbs forward together
    spec.root = tilt(x=(_u(rng, 100, 115) if bear else _u(rng, 75, 95)))
    for side, sign in (("L", 1.0), ("R", -1.0)):
        if bear:
            poser.euler(spec, f"upperleg01.{side}", -_u(rng, 95, 110) - sign * phase, 0.0, _u(rng, 0, 10))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 5, 35))
        else:
            poser.euler(spec, f"upperleg01.{side}", -_u(rng, 80, 100) - sign * phase, 0.0, _u(rng, 0, 10))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 85, 110))
        # Upper arm towards the floor (the body's front), the opposite arm forward with the leg.
        poser.aim(spec, f"upperarm01.{side}", (_u(rng, 0.1, 0.3), -1.0, -sign * phase / 40), twist=0.0)
        poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 20))
    _neck(poser, spec, x=_u(rng, 10, 45))
    spec.finger_curl = (_u(rng, 0, 15),) * 2
    return spec


def jumping(rng, poser: FamilyPoser) -> PoseSpec:
    spec = PoseSpec()
    variant = _choose(rng, {"star": 0.35, "tuck": 0.3, "split_leap": 0.2, "arms_up": 0.15})
    if variant == "star":
        for side in "LR":
            poser.euler(spec, f"upperarm01.{side}", 0.0, -_u(rng, 100, 150), 0.0)
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 20))
            poser.euler(spec, f"upperleg01.{side}", _u(rng, -10, 5), -_u(rng, 20, 38), 0.0)
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 0, 20))
            poser.euler(spec, f"foot.{side}", _u(rng, 20, 40))
    elif variant == "tuck":
        for side in "LR":
            poser.euler(spec, f"upperleg01.{side}", -_u(rng, 70, 110), 0.0, _u(rng, 0, 12))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 90, 130))
            poser.euler(spec, f"upperarm01.{side}", -_u(rng, 30, 90), _u(rng, -10, 10), -_u(rng, 10, 35))
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 20, 90))
        _spine(poser, spec, x=-_u(rng, 5, 20))
    elif variant == "split_leap":
        front, back = ("L", "R") if rng.uniform() < 0.5 else ("R", "L")
        poser.euler(spec, f"upperleg01.{front}", -_u(rng, 60, 95), 0.0, 0.0)
        poser.hinge(spec, f"lowerleg01.{front}", _u(rng, 0, 25))
        poser.euler(spec, f"upperleg01.{back}", _u(rng, 18, 30), 0.0, 0.0)
        poser.hinge(spec, f"lowerleg01.{back}", _u(rng, 0, 60))
        poser.euler(spec, f"upperarm01.{back}", -_u(rng, 60, 110), -_u(rng, 0, 30), 0.0)
        poser.euler(spec, f"upperarm01.{front}", 0.0, -_u(rng, 40, 80), 0.0)
        spec.root = tilt(x=_u(rng, 0, 15))
    else:
        for side in "LR":
            _overhead(rng, poser, spec, side)
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 25))
            poser.euler(spec, f"upperleg01.{side}", -_u(rng, 0, 25), 0.0, _u(rng, 0, 8))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 20, 80))
            poser.euler(spec, f"foot.{side}", _u(rng, 20, 40))
        _spine(poser, spec, x=_u(rng, 0, 15))
    return spec


def athletic(rng, poser: FamilyPoser) -> PoseSpec:
    spec = PoseSpec()
    variant = _choose(
        rng, {"front_kick": 1, "side_kick": 0.7, "lunge": 1.2, "arms_overhead": 1, "forward_fold": 0.7, "throw": 0.8}
    )
    one, other = ("L", "R") if rng.uniform() < 0.5 else ("R", "L")
    if variant in ("front_kick", "side_kick"):
        if variant == "front_kick":
            poser.euler(spec, f"upperleg01.{one}", -_u(rng, 70, 110), 0.0, _u(rng, -5, 10))
            spec.root = tilt(x=-_u(rng, 0, 15))
        else:
            lean = _u(rng, 10, 30)
            poser.euler(spec, f"upperleg01.{one}", -_u(rng, 0, 25), -_u(rng, 45, 70), 0.0)
            poser.euler(spec, f"upperleg01.{other}", 0.0, min(lean, 20.0), 0.0)
            spec.root = tilt(y=lean if one == "R" else -lean)  # the trunk leans away from the kick
        poser.hinge(spec, f"lowerleg01.{one}", _u(rng, 0, 40))
        poser.hinge(spec, f"lowerleg01.{other}", _u(rng, 0, 25))
        for side in "LR":  # guard
            poser.euler(spec, f"upperarm01.{side}", -_u(rng, 30, 60), _u(rng, -20, 5), -_u(rng, 10, 30))
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 95, 135))
    elif variant == "lunge":
        poser.euler(spec, f"upperleg01.{one}", -_u(rng, 70, 95), 0.0, _u(rng, 0, 10))
        poser.hinge(spec, f"lowerleg01.{one}", _u(rng, 70, 100))
        knee_down = rng.uniform() < 0.4
        poser.euler(spec, f"upperleg01.{other}", _u(rng, 10, 25), 0.0, 0.0)
        poser.hinge(spec, f"lowerleg01.{other}", _u(rng, 75, 95) if knee_down else _u(rng, 5, 40))
        poser.euler(spec, f"foot.{other}", _u(rng, 10, 35))
        arms = _choose(rng, {"overhead": 1, "hips": 1, "forward": 1})
        for side in "LR":
            if arms == "overhead":
                _overhead(rng, poser, spec, side)
            elif arms == "hips":
                poser.euler(spec, f"upperarm01.{side}", _u(rng, 0, 15), -_u(rng, 0, 15), _u(rng, 10, 30))
                poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 80, 110))
            else:
                poser.euler(spec, f"upperarm01.{side}", -_u(rng, 70, 95), 0.0, -_u(rng, 25, 45))
    elif variant == "arms_overhead":
        style = rng.uniform()
        for side in "LR":
            if style < 0.5:
                _overhead(rng, poser, spec, side)
            else:
                poser.euler(spec, f"upperarm01.{side}", _u(rng, -20, 10), -_u(rng, 110, 150), 0.0)
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 30))
        _spine(poser, spec, x=_u(rng, 0, 20), y=_u(rng, -15, 15))
        if rng.uniform() < 0.3:  # on one leg (tree pose)
            poser.aim(spec, f"upperleg01.{one}", (0.9, -0.5, -0.6), twist=_u(rng, 40, 60))
            poser.hinge(spec, f"lowerleg01.{one}", _u(rng, 110, 135))
    elif variant == "forward_fold":
        fold = _u(rng, 50, 95)
        spec.root = tilt(x=fold)  # the trunk tips forward; the hips give it back to the legs
        for side in "LR":
            poser.euler(spec, f"upperleg01.{side}", -fold, 0.0, _u(rng, 0, 8))
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 0, 20))
            poser.euler(spec, f"upperarm01.{side}", -_u(rng, 50, 100), _u(rng, -5, 10), -_u(rng, 15, 35))
        _spine(poser, spec, x=-_u(rng, 10, 40))
    else:  # throw / serve: one arm cocked overhead, the other forward, trunk turned
        poser.euler(spec, f"upperarm01.{one}", -_u(rng, 130, 170), -_u(rng, 0, 30), 0.0)
        poser.hinge(spec, f"lowerarm01.{one}", _u(rng, 50, 120))
        poser.euler(spec, f"upperarm01.{other}", -_u(rng, 60, 100), 0.0, -_u(rng, 20, 40))
        poser.hinge(spec, f"lowerarm01.{other}", _u(rng, 0, 50))
        poser.euler(spec, f"upperleg01.{other}", -_u(rng, 20, 45), 0.0, 0.0)
        poser.hinge(spec, f"lowerleg01.{other}", _u(rng, 10, 40))
        _spine(poser, spec, x=_u(rng, -5, 10), z=_u(rng, 15, 35) * (1 if one == "L" else -1))
    return spec


def inverted(rng, poser: FamilyPoser) -> PoseSpec:
    spec = PoseSpec()
    if rng.uniform() < 0.55:  # handstand: arms along the body above the head, head down
        spec.root = tilt(y=_u(rng, -12, 12)) @ tilt(x=180 + _u(rng, -15, 15))
        for side in "LR":
            _overhead(rng, poser, spec, side, spread=(0.1, 0.35))
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 15))
        legs = _choose(rng, {"together": 1, "split": 1, "bent": 0.7})
        if legs == "split":
            one, other = ("L", "R") if rng.uniform() < 0.5 else ("R", "L")
            poser.euler(spec, f"upperleg01.{one}", -_u(rng, 30, 70), 0.0, 0.0)
            poser.euler(spec, f"upperleg01.{other}", _u(rng, 10, 25), 0.0, 0.0)
        elif legs == "bent":
            for side in "LR":
                poser.euler(spec, f"upperleg01.{side}", _u(rng, -25, 10), 0.0, _u(rng, 0, 10))
                poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 40, 100))
        else:
            for side in "LR":
                poser.euler(spec, f"upperleg01.{side}", _u(rng, -8, 5), _u(rng, 0, 5), 0.0)
        spec.finger_curl = (_u(rng, 0, 15),) * 2
        _neck(poser, spec, x=_u(rng, 0, 35))
    else:  # cartwheel: a star turned on its side, up to upside down
        spec.root = tilt(y=_u(rng, 60, 150) * (1 if rng.uniform() < 0.5 else -1))
        for side in "LR":
            poser.euler(spec, f"upperarm01.{side}", _u(rng, -15, 10), -_u(rng, 120, 155), 0.0)
            poser.hinge(spec, f"lowerarm01.{side}", _u(rng, 0, 15))
            poser.euler(spec, f"upperleg01.{side}", _u(rng, -10, 5), -_u(rng, 25, 42), 0.0)
            poser.hinge(spec, f"lowerleg01.{side}", _u(rng, 0, 25))
    return spec


@dataclass(frozen=True)
class Family:
    """A pose family: its generator (None for ``standing``, today's sampler) and camera elevations."""

    name: str
    draw: Callable[[np.random.Generator, FamilyPoser], PoseSpec] | None
    elevation: tuple[float, float]  # degrees, + = camera above looking down


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("standing", None, (-15.0, 35.0)),
        Family("walking", walking, (-15.0, 35.0)),
        Family("sitting", sitting, (-10.0, 45.0)),
        Family("kneeling", kneeling, (-10.0, 45.0)),
        Family("squatting", squatting, (-10.0, 45.0)),
        Family("lying", lying, (20.0, 85.0)),
        Family("crawling", crawling, (0.0, 60.0)),
        Family("jumping", jumping, (-20.0, 30.0)),
        Family("athletic", athletic, (-15.0, 35.0)),
        Family("inverted", inverted, (-15.0, 35.0)),
    )
}

"""The training distribution and the generalisation test set: disjoint sources by construction.

``fastmetro synth`` (``--split train``, the default) draws backgrounds, clothing patterns, pose
families and camera fields of view from the *train* lists below; ``--split generalisation``
draws them from the *held-out* lists (and the families / fields of view both share), so a model
trained on the first is measured on photographs, textures, patterns, postures and lenses it has
never seen. The generalisation split also salts every random stream, so its bodies and scenes
are not the training set's samples with another background.

==================  =====================================  ===================================
source              train                                  held out (generalisation only)
==================  =====================================  ===================================
photos (skimage)    brick, clock, coffee, coins, grass,    chelsea (= cat), gravel, rocket,
                    hubble_deep_field, immunohisto-        cell, colorwheel
                    chemistry, moon, page, text, retina
textures            clouds, stripes, room, tiles           cells (Voronoi), blobs
clothing patterns   solid, stripes, checks, noise          dots, bands
pose families       all but crawling                       crawling (with all the others)
field of view       25..65 degrees                         15..25 and 65..80 degrees
==================  =====================================  ===================================
"""

from __future__ import annotations

from dataclasses import dataclass

from fastmetro.errors import FastMetroError

TRAIN_PHOTOS = (
    "brick",
    "clock",
    "coffee",
    "coins",
    "grass",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "text",
    "retina",
)
HELD_OUT_PHOTOS = ("chelsea", "cat", "gravel", "rocket", "cell", "colorwheel")
TRAIN_TEXTURES = ("clouds", "stripes", "room", "tiles")
HELD_OUT_TEXTURES = ("cells", "blobs")
TRAIN_PATTERNS = ("solid", "stripes", "checks", "noise")
HELD_OUT_PATTERNS = ("dots", "bands")
HELD_OUT_FAMILIES = ("crawling",)


@dataclass(frozen=True)
class SplitSpec:
    """Where one split draws its sources from (see the module table)."""

    name: str
    photos: tuple[str, ...]
    textures: tuple[str, ...]
    patterns: tuple[str, ...]
    excluded_families: tuple[str, ...]  # never drawn in this split
    family_boost: tuple[tuple[str, float], ...]  # multiplies the weight of these families in "mixed"
    fov_degrees: tuple[tuple[float, float], ...]  # one range is picked (by width), then a value in it
    seed_salt: tuple[int, ...]  # appended to every random stream's seed


SPLITS = {
    "train": SplitSpec(
        "train",
        TRAIN_PHOTOS,
        TRAIN_TEXTURES,
        TRAIN_PATTERNS,
        excluded_families=HELD_OUT_FAMILIES,
        family_boost=(),
        fov_degrees=((25.0, 65.0),),
        seed_salt=(),
    ),
    "generalisation": SplitSpec(
        "generalisation",
        HELD_OUT_PHOTOS,
        HELD_OUT_TEXTURES,
        HELD_OUT_PATTERNS,
        excluded_families=(),
        family_boost=(("crawling", 2.0),),
        fov_degrees=((15.0, 25.0), (65.0, 80.0)),
        seed_salt=(1,),
    ),
}


def get_split(name: str) -> SplitSpec:
    if name not in SPLITS:
        raise FastMetroError(f"--split must be one of {', '.join(SPLITS)}, got {name!r}")
    return SPLITS[name]


def split_pose_weights(split: SplitSpec, weights: dict[str, float], mixed: bool) -> dict[str, float]:
    """The family weights a split draws from; refuses a family the split holds out.

    ``mixed``: the weights came from ``--poses mixed`` (held-out families are then dropped
    silently from the train split and boosted in the generalisation split).
    """
    if mixed:
        boost = dict(split.family_boost)
        return {
            name: weight * boost.get(name, 1.0)
            for name, weight in weights.items()
            if name not in split.excluded_families
        }
    refused = [name for name in weights if name in split.excluded_families]
    if refused:
        raise FastMetroError(
            f"--poses: {', '.join(refused)} is held out for the generalisation split; "
            f"the {split.name} split cannot draw it"
        )
    return dict(weights)

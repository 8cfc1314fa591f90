"""Crowd scenes (several Anny bodies per image): boxes, visibility, ignore flags, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastmetro.errors import FastMetroError

SIZE = (160, 120)
SEED = 3
NUM = 6


@pytest.fixture(scope="module")
def maker():
    from fastmetro.data.synthetic.crowd import CrowdMaker

    crowd_maker = CrowdMaker(SIZE, samples=0)
    yield crowd_maker
    crowd_maker.release()


@pytest.fixture(scope="module")
def scenes(maker):
    from fastmetro.data.synthetic.crowd import render_crowd_scenes

    return list(render_crowd_scenes(NUM, seed=SEED, size=SIZE, people=(2, 4), maker=maker))


def _pixel_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a mask's pixels, edges at pixel centre +- 0.5."""
    rows, columns = np.nonzero(mask)
    return columns.min() - 0.5, rows.min() - 0.5, columns.max() + 0.5, rows.max() + 0.5


def _iou(a, b) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_scene_shapes_and_counts(scenes):
    width, height = SIZE
    for scene in scenes:
        assert scene.image.shape == (height, width, 3) and scene.image.dtype == np.uint8
        assert scene.ids.shape == (height, width)
        assert 2 <= len(scene.people) <= 4
        assert scene.ids.max() <= len(scene.people)
        distances = [person.distance for person in scene.people]
        assert distances == sorted(distances)  # nearest first
        for person in scene.people:
            x, y, w, h = person.box
            assert -0.5 <= x and x + w <= width - 0.5 + 1e-6 and -0.5 <= y and y + h <= height - 0.5 + 1e-6
            assert 0.0 <= person.visible_fraction <= 1.0 and 0.0 <= person.in_frame <= 1.0


def test_boxes_are_where_the_pixels_are(scenes):
    checked = 0
    for scene in scenes:
        for k, person in enumerate(scene.people):
            mask = scene.ids == k + 1
            if mask.sum() < 20:
                continue
            x0, y0, x1, y1 = _pixel_box(mask)
            x, y, w, h = person.box
            # Visible pixels lie inside the box (a rasterised edge pixel may reach half a pixel out).
            assert x - 1 <= x0 and x1 <= x + w + 1 and y - 1 <= y0 and y1 <= y + h + 1, (scene.index, k)
            if person.visible_fraction == 1.0:  # nothing hides it: the box is about the pixels' box
                # (a finger thinner than a pixel may stick out of the rasterised silhouette)
                assert _iou((x0, y0, x1 - x0, y1 - y0), person.box) > 0.85, (scene.index, k)
                np.testing.assert_allclose([x0, y0, x1, y1], [x, y, x + w, y + h], atol=max(1.5, 0.1 * h))
                checked += 1
    assert checked >= 3


def test_occlusion_lowers_the_visible_fraction(scenes):
    occluded = 0
    for scene in scenes:
        for k, person in enumerate(scene.people):
            nearer_overlapping = any(_overlap(other.box, person.box) for other in scene.people[:k])
            if not nearer_overlapping and person.in_frame > 0:
                assert person.visible_fraction == 1.0, (scene.index, k)
            if person.visible_fraction < 0.99:
                assert nearer_overlapping, (scene.index, k)
                occluded += 1
    assert occluded >= 1  # these scenes hold some occlusion (fixed seed)


def test_one_body_behind_another(maker):
    from fastmetro.data.synthetic.crowd import PersonMesh
    from fastmetro.data.synthetic.scene import Camera

    body = maker.bodies.body
    rest = body.forward(np.full((1, 11), 0.5), np.tile(np.eye(4), (1, len(body.bone_labels), 1, 1)))[0]
    # Anny world (x left, y back, z up) -> camera (x right, y down, z forward) seeing the front.
    upright = rest @ np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]).T
    normals = body.normals(upright)
    colours = np.full_like(upright, 0.6)
    meshes = [
        PersonMesh((upright + [0, 0, depth]).astype(np.float32), normals, colours, depth, "standing")
        for depth in (4.0, 7.0)
    ]
    width, height = maker.size
    intrinsics = np.array([[150.0, 0, (width - 1) / 2], [0, 150.0, (height - 1) / 2], [0, 0, 1]])
    camera = Camera(np.eye(3), np.zeros(3), intrinsics)
    image, ids, fractions = maker.compose(camera, meshes)
    assert fractions[0] == 1.0 and fractions[1] < 0.2
    assert set(np.unique(ids)) == {0, 1, 2}
    assert image.shape == (height, width, 3)


def test_facing_is_measured_from_the_hips(maker):
    from fastmetro.data.synthetic.crowd import _facing

    body = maker.bodies.body
    rest = body.forward(np.full((1, 11), 0.5), np.tile(np.eye(4), (1, len(body.bone_labels), 1, 1)))[0]
    # Anny's front looks along -y: from (0, 5) the camera at (0, 0) is straight ahead.
    assert _facing(body, rest, np.array([0.0, 5.0])) == pytest.approx(0.0, abs=5.0)
    assert _facing(body, rest, np.array([0.0, -5.0])) == pytest.approx(180.0, abs=5.0)
    assert _facing(body, rest, np.array([5.0, 0.0])) == pytest.approx(90.0, abs=5.0)


def test_ignore_flags_follow_the_rules(scenes):
    from fastmetro.data.synthetic import crowd

    for scene in scenes:
        for person in scene.people:
            small = person.box[3] < crowd.MIN_BOX_HEIGHT
            hidden = person.visible_fraction < crowd.MIN_VISIBLE_FRACTION or person.in_frame < crowd.MIN_IN_FRAME
            assert person.ignore == (small or hidden)
        assert scene.boxes() == [p.box for p in scene.people if not p.ignore]


def test_same_seed_same_scene_any_order(maker, scenes):
    again = maker.scene(SEED, scenes[2].index, people=(2, 4))
    np.testing.assert_array_equal(again.image, scenes[2].image)
    np.testing.assert_array_equal(again.ids, scenes[2].ids)
    assert again.people == scenes[2].people
    other = maker.scene(SEED + 1, scenes[2].index, people=(2, 4))
    assert not np.array_equal(other.image, scenes[2].image)


def test_people_range_is_checked(maker):
    from fastmetro.data.synthetic.crowd import render_crowd_scenes

    for bad in ((0, 2), (3, 2), (1, 99)):
        with pytest.raises(FastMetroError, match="people"):
            next(render_crowd_scenes(1, size=SIZE, people=bad, maker=maker))
    with pytest.raises(FastMetroError, match="maker renders"):
        next(render_crowd_scenes(1, size=(64, 64), maker=maker))
    assert len(maker.scene(0, 0, people=(1, 1)).people) == 1


def test_labelled_set_reads_as_a_boxes_file(scenes, tmp_path):
    from fastmetro.data.synthetic.crowd import write_labelled_set
    from fastmetro.inference.boxes import read_boxes_file

    path = write_labelled_set(scenes[:2], tmp_path)
    boxes = read_boxes_file(path)
    assert set(boxes) == {f"crowd_{scene.index:05d}.png" for scene in scenes[:2]}
    for scene in scenes[:2]:
        name = f"crowd_{scene.index:05d}.png"
        assert (tmp_path / name).is_file()
        assert len(boxes[name]) == len(scene.boxes())
    people = json.loads((tmp_path / "people.json").read_text())
    assert [p["ignore"] for p in people[f"crowd_{scenes[0].index:05d}.png"]] == [p.ignore for p in scenes[0].people]


def _benchmark():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "detection.py"
    spec = importlib.util.spec_from_file_location("detection_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def test_benchmark_matching_rules():
    bench = _benchmark()
    found = bench.Found
    people = [((0, 0, 10, 20), False), ((100, 0, 10, 20), False), ((200, 0, 10, 20), True)]
    result = bench.match(
        [
            found((1, 0, 10, 20), 0.9),
            found((0, 1, 10, 20), 0.8),
            found((201, 0, 10, 20), 0.7),
            found((300, 0, 10, 20), 0.6),
            found((100, 0, 10, 20), 0.1),
        ],
        people,
        threshold=0.5,
    )
    # One match for the first person (the second detection of it is a false positive), the ignored
    # person's detection counts neither way, the lone box is a false positive, the 0.1 one is dropped.
    assert (result["tp"], result["fp"], result["fn"]) == (1, 2, 1)
    assert result["matched"] == [0] and result["ious"][0] == pytest.approx(180 / 220)
    # Greedy by score: the best-scored detection takes the person even if a later one fits better.
    result = bench.match([found((2, 0, 10, 20), 0.9), found((0, 0, 10, 20), 0.8)], people[:1], threshold=0.0)
    assert result["ious"] == [pytest.approx(8 / 12)] and result["fp"] == 1


def test_benchmark_runs_with_the_stand_in(tmp_path, capsys):
    bench = _benchmark()
    code = bench.main(
        [
            "--detector",
            "standin",
            "--num",
            "3",
            "--size",
            "96x72",
            "--runs",
            "1",
            "--out",
            str(tmp_path / "photos"),
            "--write-scenes",
            str(tmp_path / "scenes"),
            "--json",
            str(tmp_path / "result.json"),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "| score >= | precision | recall |" in text and "| coffee |" in text
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["synthetic"]["scenes"] == 3
    assert all(row["found"] == [] for row in result["photos"] if not row.get("missing"))  # it knows no photo
    assert (tmp_path / "photos" / "coffee.png").is_file() and (tmp_path / "scenes" / "boxes.json").is_file()

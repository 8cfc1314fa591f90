"""People found in photographs: anchors, decoding, NMS, regions, and the whole pipeline on real photos."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastmetro.errors import FastMetroError
from fastmetro.mediapipe import detection as det
from fastmetro.mediapipe.regions import Region


# ----------------------------------------------------------------------------- detection maths
def test_anchor_grids_match_the_networks_outputs():
    pose = det.ssd_anchor_centres(det.POSE_DETECTOR)
    palm = det.ssd_anchor_centres(det.PALM_DETECTOR)
    assert pose.shape == (2254, 2) and palm.shape == (2016, 2)  # the heads' anchor counts
    # Stride 8 first: two anchors per cell of the 28 x 28 grid, row by row.
    assert np.allclose(pose[:4], [[0.5 / 28, 0.5 / 28]] * 2 + [[1.5 / 28, 0.5 / 28]] * 2)
    # The three stride-32 layers share one 7 x 7 grid: six anchors per cell at the end.
    assert np.allclose(pose[-6:], [[6.5 / 7, 6.5 / 7]] * 6)
    assert np.allclose(palm[-6:], [[11.5 / 12, 11.5 / 12]] * 6)


def test_decode_puts_box_and_keypoints_at_their_anchor():
    spec = det.POSE_DETECTOR
    anchors = det.ssd_anchor_centres(spec)
    raw = np.zeros((len(anchors), 12), np.float32)
    scores = np.full((len(anchors), 1), -10.0, np.float32)
    index = 1000
    raw[index] = [22.4, -11.2, 44.8, 22.4, 0, 0, 11.2, 11.2, 0, 0, 0, 0]  # input pixels (224 px)
    scores[index] = 2.0
    found = det.decode(raw, scores, anchors, spec, threshold=0.5)
    assert len(found) == 1
    x, y = anchors[index]
    assert found[0].score == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert np.allclose(found[0].box, [x + 0.1 - 0.1, y - 0.05 - 0.05, x + 0.1 + 0.1, y - 0.05 + 0.05])
    assert np.allclose(found[0].keypoints[:2], [[x, y], [x + 0.05, y + 0.05]])
    assert det.decode(raw, scores, anchors, spec, threshold=0.9) == []


def test_weighted_nms_averages_one_persons_anchors_and_keeps_others():
    def one(score, x, kx):
        return det.RawDetection(score, np.array([x, 0.1, x + 0.2, 0.3]), np.array([[kx, 0.5]]))

    merged = det.weighted_nms([one(0.9, 0.10, 0.40), one(0.3, 0.12, 0.44), one(0.8, 0.60, 0.9)], 0.3)
    assert [round(d.score, 2) for d in merged] == [0.9, 0.8]
    assert merged[0].keypoints[0, 0] == pytest.approx((0.9 * 0.40 + 0.3 * 0.44) / 1.2)
    assert merged[0].box[0] == pytest.approx((0.9 * 0.10 + 0.3 * 0.12) / 1.2)


def test_mirrored_detection_is_mirrored_back():
    detection = det.RawDetection(0.7, np.array([0.1, 0.2, 0.3, 0.5]), np.array([[0.25, 0.4], [0.9, 0.1]]))
    back = det.mirrored(detection)
    assert np.allclose(back.box, [0.7, 0.2, 0.9, 0.5]) and np.allclose(back.keypoints, [[0.75, 0.4], [0.1, 0.1]])
    assert np.allclose(det.mirrored(back).box, detection.box)


def test_letterbox_places_pixels_where_it_maps_them_back():
    image = np.zeros((120, 300, 3), np.uint8)
    image[60:64, 200:204] = 255  # a white square centred at (202, 62) in continuous pixels
    box = det.Letterbox.of((300, 120), 224)
    assert box.scale == pytest.approx(224 / 300) and box.pad == pytest.approx((0.0, (224 - 120 * 224 / 300) / 2))
    boxed = box.apply(image)
    ys, xs = np.nonzero(boxed[..., 0] > 100)
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5]) / 224  # normalised continuous coordinates
    assert np.allclose(box.to_image(centre), [202, 62], atol=1.0)
    assert boxed[:10].max() == 0 and boxed[-10:].max() == 0  # black bars above and below


def test_letterbox_of_a_large_image_averages_before_shrinking():
    stripes = np.zeros((2000, 2000, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a plain sampler would keep 0 or 255
    boxed = det.Letterbox.of((2000, 2000), 224).apply(stripes)
    assert abs(float(boxed[50:150, 50:150].mean()) - 127.5) < 10


def test_tile_grid_covers_the_image_with_overlapping_squares():
    assert det.tile_grid(640, 480, 0) == []
    tiles = det.tile_grid(640, 480, 2)  # 320 px squares, half a square apart
    assert {(w, h) for _, _, w, h in tiles} == {(320, 320)}
    assert sorted({x for x, _, _, _ in tiles}) == [0, 160, 320] and sorted({y for _, y, _, _ in tiles}) == [0, 160]
    covered = np.zeros((480, 640), bool)
    for x, y, w, h in det.tile_grid(641, 479, 3):
        assert x >= 0 and y >= 0 and x + w <= 641 and y + h <= 479
        covered[y : y + h, x : x + w] = True
    assert covered[:479, :640].all()


# ----------------------------------------------------------------------------- regions
def test_upright_region_from_alignment_points():
    region = Region.from_alignment(np.array([100.0, 200.0]), np.array([100.0, 150.0]), scale=1.25)
    assert region.rotation == pytest.approx(0.0) and region.size == pytest.approx(125.0)
    assert region.center == pytest.approx((100.0, 200.0))
    assert np.allclose(region.corners(), [[37.5, 137.5], [162.5, 137.5], [162.5, 262.5], [37.5, 262.5]])


def test_a_lying_persons_region_is_turned_upright():
    # Hip centre at (200, 100), the head to the right: the crop must show the head at the top.
    image = np.zeros((200, 400, 3), np.uint8)
    image[95:105, 250:300] = 255  # "head" strip to the right of the hips
    region = Region.from_alignment(np.array([200.0, 100.0]), np.array([300.0, 100.0]), scale=1.0)
    assert region.rotation == pytest.approx(math.pi / 2)
    crop = region.crop(image, 64, border="zero")
    ys, xs = np.nonzero(crop[..., 0] > 100)
    assert ys.max() < 32 and abs(xs.mean() - 31.5) < 2  # above the centre, on the midline
    # Crop pixels map back onto the image where the strip is.
    back = region.to_image(np.stack([xs + 0.5, ys + 0.5], axis=1), 64)
    assert np.all((back[:, 0] > 245) & (back[:, 0] < 305) & (np.abs(back[:, 1] - 100) < 8))


def test_palm_region_moves_towards_the_fingers():
    wrist, knuckle = np.array([100.0, 200.0]), np.array([100.0, 160.0])
    region = Region.from_alignment(wrist, knuckle, scale=2.6, shift_y=-0.5)
    assert region.center == pytest.approx((100.0, 160.0)) and region.size == pytest.approx(208.0)
    # A palm box 40 x 30 px around (100, 180), fingers pointing right: moved 15 px to the right.
    palm = Region.from_box(
        np.array([80.0, 165.0, 120.0, 195.0]),
        np.array([90.0, 180.0]),
        np.array([120.0, 180.0]),
        scale=2.6,
        shift_y=-0.5,
    )
    assert palm.rotation == pytest.approx(math.pi / 2) and palm.size == pytest.approx(104.0)
    assert palm.center == pytest.approx((115.0, 180.0))


# ----------------------------------------------------------------------------- the networks on photos
@pytest.fixture(scope="module")
def finder():
    from fastmetro.mediapipe.people import PeopleFinder

    return PeopleFinder()


def _photo(name):
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def test_people_in_photos_and_nobody_in_a_cup_of_coffee(finder):
    astronaut = finder(_photo("astronaut"))
    assert len(astronaut) == 1
    x, y, w, h = astronaut[0].box
    # Eileen Collins fills the photo's left two thirds, head near the top, cut at the bottom edge.
    assert x < 80 and y < 60 and 250 < w < 430 and h > 430
    assert astronaut[0].presence > 0.9 and astronaut[0].landmarks.shape == (33, 5)
    nose, left_hip = astronaut[0].landmarks[0, :2], astronaut[0].landmarks[23, :2]
    assert 200 < nose[0] < 260 and 100 < nose[1] < 160  # her face
    assert left_hip[1] > nose[1] + 150
    assert np.abs(astronaut[0].world_landmarks).max() < 1.5  # metres around the hips
    cameraman = finder(_photo("camera"))
    assert len(cameraman) == 1 and cameraman[0].box[3] > 350
    for name in ("coffee", "chelsea", "rocket"):
        assert finder(_photo(name)) == [], name


def test_batched_search_equals_one_by_one(finder):
    images = [_photo("astronaut"), _photo("coffee"), _photo("camera")]
    together = finder.find(images)
    for image, found in zip(images, together):
        alone = finder(image)
        assert len(alone) == len(found)
        # The networks agree to ~1e-5 across batch sizes; an anchor near the threshold may join
        # one weighted mean and not the other, which moves a region and its landmarks by < 1 px.
        for a, b in zip(alone, found):
            assert np.allclose(a.box, b.box, atol=2.0) and np.allclose(a.landmarks[:, :2], b.landmarks[:, :2], atol=3.0)


def test_detector_only_boxes_and_bad_settings():
    from fastmetro.mediapipe.people import PeopleFinder

    found = PeopleFinder(landmarks=None)(_photo("astronaut"))
    assert len(found) == 1 and found[0].landmarks is None and found[0].box[2] > 200
    with pytest.raises(FastMetroError, match="landmarks must be one of"):
        PeopleFinder(kind="hand", landmarks="heavy")
    with pytest.raises(FastMetroError, match="threshold must be within 0..1"):
        PeopleFinder(threshold=2.0)
    with pytest.raises(FastMetroError, match=r"expected an \(H, W, 3\) uint8 RGB image"):
        PeopleFinder(landmarks=None)(np.zeros((10, 10), np.uint8))


def test_hand_finder_runs_and_finds_no_hand_in_coffee():
    from fastmetro.mediapipe.people import PeopleFinder

    hands = PeopleFinder(kind="hand")
    assert hands(_photo("coffee")) == []
    found = hands(_photo("astronaut"))  # her hands rest on the helmet: whatever is found is a checked hand
    for hand in found:
        assert hand.side in ("left", "right") and hand.landmarks.shape == (21, 5) and 0.5 <= hand.handedness <= 1


def test_tiles_find_a_person_too_small_for_one_pass():
    import cv2

    from fastmetro.mediapipe.people import PeopleFinder

    # The astronaut's portrait at 120 px in a 960 x 720 frame: her face is ~6 px in one 224 px pass.
    small = cv2.resize(_photo("astronaut"), (120, 120), interpolation=cv2.INTER_AREA)
    canvas = np.full((720, 960, 3), 120, np.uint8)
    canvas[420:540, 560:680] = small
    assert PeopleFinder(tiles=0)(canvas) == []
    found = PeopleFinder(tiles=3)(canvas)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert 550 < x < 600 and 400 < y < 445 and x + w < 700 and y + h > 520


def test_following_people_runs_the_detector_only_now_and_then(finder, monkeypatch):
    """A video of the astronaut moving right 4 px a frame: the detector runs on the first frame
    and every 5th; in between the landmarks of the frame before find her again, her face
    moving with her (24 px in 6 frames)."""
    from fastmetro.mediapipe.follow import PeopleFollower

    photo = _photo("astronaut")
    follower = PeopleFollower(finder, detect_every=5)
    faces = []
    for frame in range(7):
        found = follower(np.roll(photo, 4 * frame, axis=1))
        assert len(found) == 1 and found[0].presence > 0.9
        faces.append(found[0].landmarks[:11, 0].mean())  # the face's landmarks (her box is cut by the edge)
    assert follower.detections == 2 and follower.frames == 7  # frames 0 and 5
    assert abs(faces[-1] - faces[0] - 24) < 8, faces
    # The photo changes to coffee: the landmark network still "sees" her (presence 0.97), in a
    # box of another size, so she is lost at once and the detector, seeing nobody, ends her.
    coffee = _photo("coffee")
    last = follower.people
    assert len(follower(coffee)) == 0 and follower.detections == 3
    # Without the size check, the ghost would stay until two detector runs in a row missed her.
    from fastmetro.mediapipe import people

    monkeypatch.setattr(people, "MAX_FOLLOW_RESIZE", 1e6)
    follower.people = last
    ghosts = [len(follower(coffee)) for _ in range(12)]
    assert ghosts[0] == 1 and ghosts[-1] == 0 and ghosts.index(0) <= 10, ghosts
    monkeypatch.undo()
    assert len(follower(coffee)) == 0  # nobody followed: the detector on every frame now
    assert len(follower(photo)) == 1
    follower.reset()
    assert follower.people == [] and follower.detections == 0
    with pytest.raises(FastMetroError, match="detect_every"):
        PeopleFollower(finder, detect_every=0)


def test_a_followed_box_that_jumps_in_size_is_lost(finder, monkeypatch):
    """The landmark network in someone's region can take the person passing in front of them:
    a box that grows or shrinks past MAX_FOLLOW_RESIZE in one frame counts as lost."""
    import cv2

    from fastmetro.mediapipe import people

    photo = _photo("astronaut")

    def scene(scale):  # the astronaut, at ``scale``, in the middle of a grey 768 px square
        canvas = np.full((768, 768, 3), 110, np.uint8)
        small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        top, left = 384 - small.shape[0] // 2, 384 - small.shape[1] // 2
        canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
        return canvas

    before = finder.find([scene(0.6)])[0]
    assert len(before) == 1
    nearer = scene(0.8)  # a third larger: her box grows 1.2-1.4x
    [kept] = finder.follow([nearer], [before])[0]
    growth = np.array(kept.box[2:]) / np.array(before[0].box[2:])
    assert np.all((growth > 1.1) & (growth < 1.5)), growth
    monkeypatch.setattr(people, "MAX_FOLLOW_RESIZE", 1.05)
    assert finder.follow([nearer], [before])[0] == []
    region = before[0].region
    plausible = people._plausible
    monkeypatch.setattr(people, "MAX_FOLLOW_RESIZE", 1.5)
    base = people.FoundPerson((10.0, 10.0, 100.0, 200.0), 0.9, region)
    for box, expected in (((0, 0, 140, 260), True), ((0, 0, 160, 200), False), ((0, 0, 100, 120), False)):
        assert plausible(people.FoundPerson(box, 0.9, region), base) is expected, box

"""Videos as tracks: the One-Euro filter, the tracker, `fastmetro infer` on a clip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fastmetro.cli import main
from fastmetro.errors import FastMetroError
from fastmetro.inference import camera as cam
from fastmetro.inference.predictor import PersonPrediction
from fastmetro.inference.smoothing import OneEuroFilter, alpha, smooth_sequence
from fastmetro.inference.tracking import Tracker, box_iou


# ----------------------------------------------------------------------------- One-Euro
def test_one_euro_leaves_a_constant_signal_unchanged():
    values = np.full((50, 4, 3), 0.37)
    times = np.arange(50) / 30.0
    for mode in ("causal", "offline"):
        np.testing.assert_allclose(smooth_sequence(values, times, mode, min_cutoff=0.5, beta=2.0), values, atol=1e-12)


def test_one_euro_lags_a_step_by_its_cutoff():
    """beta = 0: a first-order low-pass at min_cutoff. After a unit step, sample n is
    1 - (1 - a)^n with a = 1 / (1 + tau / dt), tau = 1 / (2 pi fc): at 30 frames/s and 1 Hz,
    a = 0.1732..., half the step is reached ln 0.5 / ln(1 - a) = 3.65 samples after it."""
    fps, cutoff, step_at = 30.0, 1.0, 10
    times = np.arange(60) / fps
    values = (np.arange(60) >= step_at).astype(float)
    smoothed = smooth_sequence(values, times, "causal", min_cutoff=cutoff, beta=0.0)
    a = 1.0 / (1.0 + (1.0 / (2 * math.pi * cutoff)) / (1.0 / fps))
    assert alpha(cutoff, 1.0 / fps) == pytest.approx(a)
    n = np.arange(60 - step_at) + 1
    np.testing.assert_allclose(smoothed[step_at:], 1.0 - (1.0 - a) ** n, atol=1e-9)
    assert np.all(smoothed[:step_at] == 0.0)
    half = math.log(0.5) / math.log(1.0 - a)  # 3.65 samples
    assert 3.5 < half < 3.8
    first_over_half = int(np.argmax(smoothed >= 0.5)) - step_at
    assert first_over_half == math.ceil(half) - 1  # sample index step_at + k holds n = k + 1 samples
    # offline: forward then backward, the lags cancel: the step's midpoint stays at the step
    offline = smooth_sequence(values, times, "offline", min_cutoff=cutoff, beta=0.0)
    assert offline[step_at - 1] < 0.5 < offline[step_at]
    assert abs((offline[step_at - 1] + offline[step_at]) / 2 - 0.5) < 0.05


def test_one_euro_follows_fast_motion_with_beta():
    ramp = np.arange(40, dtype=float) * 0.1  # 3 m/s at 30 frames/s
    times = np.arange(40) / 30.0
    slow = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    fast = OneEuroFilter(min_cutoff=1.0, beta=5.0)
    lag_slow = [value - slow(value, 1 / 30) for value in ramp][-1]
    lag_fast = [value - fast(value, 1 / 30) for value in ramp][-1]
    assert 0 < lag_fast < 0.5 * lag_slow
    assert smooth_sequence(ramp, times, "none").tolist() == ramp.tolist()


# ----------------------------------------------------------------------------- tracker
def fake_person(box, root) -> PersonPrediction:
    joints = np.random.default_rng(0).normal(0, 0.2, (14, 3))
    x, y, w, h = box
    return PersonPrediction(
        box=tuple(box),
        crop_box=cam.CropBox((x + w / 2, y + h / 2), max(w, h)),
        side="right",
        camera=np.array([1.0, 0.0, 0.0]),
        intrinsics=np.array([[500.0, 0, 160], [0, 500, 120], [0, 0, 1]]),
        translation=np.asarray(root, float),
        vertices=np.zeros((10, 3)),
        faces=np.zeros((1, 3), int),
        joints=joints,
        mesh_joints=joints,
        joints_2d=np.zeros((14, 2)),
    )


def crossing(frames=30, gap=0.0):
    """Two people walking towards each other and past; at the crossing their boxes overlap."""
    scenes = []
    for t in range(frames):
        u = t / (frames - 1)
        a_x, b_x = 20 + 200 * u, 220 - 200 * u
        a = fake_person((a_x, 60, 60, 140), (-1.0 + 2.0 * u, 0.0, 5.0))
        b = fake_person((b_x, 70 + gap, 56, 130), (1.0 - 2.0 * u, 0.0, 5.6))
        scenes.append([a, b] if t % 2 else [b, a])  # the detector's order changes
    return scenes


def test_two_people_crossing_keep_their_ids():
    tracker = Tracker(birth=3, patience=5)
    seen = []
    for frame, people in enumerate(crossing()):
        ids = tracker.update(frame, frame / 25, people)
        seen.append(
            {id_: person.box[0] < 120 if frame < 15 else person.box[0] > 120 for id_, person in zip(ids, people)}
        )
    assert sorted(tracker.tracks) == [0, 1]
    for track in tracker.tracks.values():  # each track moves one way all along
        xs = [item.person.box[0] for item in track.history]
        assert len(xs) == 30
        steps = np.sign(np.diff(xs))
        assert np.all(steps == steps[0])
    assert seen[0] == {None: True} or None in seen[0]  # not born on the first frame


def test_tracks_are_born_late_and_die_after_patience():
    tracker = Tracker(birth=3, patience=2)
    person = fake_person((10, 10, 50, 100), (0, 0, 4))
    assert [tracker.update(f, f / 25, [person]) for f in range(3)] == [[None], [None], [0]]
    for f in range(3, 6):  # unseen for 3 frames > patience 2: dead
        assert tracker.update(f, f / 25, []) == []
    assert tracker.update(6, 6 / 25, [person]) == [None]
    assert len(tracker.tracks[0].history) == 3
    one_off = Tracker(birth=2)
    one_off.update(0, 0, [person])
    one_off.update(1, 0.04, [])
    assert one_off.tracks == {} and one_off.live == []


def painted(people, colors, size=(240, 320)) -> np.ndarray:
    """A grey frame with each person's box filled in its colour (what the appearance sees)."""
    image = np.full((*size, 3), 128, np.uint8)
    for person, color in zip(people, colors):
        x, y, w, h = (int(round(v)) for v in person.box)
        image[max(0, y) : y + h, max(0, x) : x + w] = color
    return image


def hidden_and_moved(track_with_image: bool, color_back=(30, 60, 220)):
    """Person a walks right all along; person b walks left, is hidden for 12 frames, and comes
    out where its walk would not take it (it stopped behind a): far from its predicted box."""
    tracker = Tracker(birth=3, patience=30)
    ids = []
    for frame in range(40):
        a = fake_person((20 + 4 * frame, 60, 50, 120), (-1.0 + 0.02 * frame, 0.0, 5.0))
        if frame < 10:
            b = fake_person((250 - 4 * frame, 70, 50, 120), (1.0 - 0.02 * frame, 0.0, 6.0))
        else:  # out again at x = 200 instead of the ~160 - 4 * (frame - 10) its speed predicts
            b = fake_person((200, 70, 50, 120), (0.3, 0.0, 7.5))
        people, colors = ([a], [(220, 30, 30)]) if 10 <= frame < 22 else ([a, b], [(220, 30, 30), (30, 60, 220)])
        if len(people) == 2:
            colors[1] = (30, 60, 220) if frame < 10 else color_back
        image = painted(people, colors) if track_with_image else None
        ids.append(tracker.update(frame, frame / 25, people, image))
    return ids


def test_a_hidden_person_is_found_again_by_colour():
    seen = hidden_and_moved(True)
    assert seen[5] == [0, 1] and seen[15] == [0]
    assert all(ids == [0, 1] for ids in seen[22:]), seen[22:]  # b keeps id 1 when it comes out
    motion_only = hidden_and_moved(False)
    assert motion_only[25] == [0, 2]  # no frame: b's motion says nothing, it comes back as a new track
    stranger = hidden_and_moved(True, color_back=(40, 200, 40))  # someone else in green comes out
    assert stranger[25] == [0, 2]


def test_a_hidden_person_walking_on_keeps_its_id_by_its_mean_velocity():
    tracker = Tracker()
    for frame in range(40):
        a = fake_person((10 + 5 * frame, 60, 50, 120), (0.02 * frame, 0.0, 5.0))
        people = [] if 12 <= frame < 24 else [a]
        ids = tracker.update(frame, frame / 25, people)
    assert ids == [0] and list(tracker.tracks) == [0]


def test_a_live_tracker_keeps_bounded_history():
    tracker = Tracker(keep=8)
    person = fake_person((10, 10, 50, 100), (0, 0, 4))
    for frame in range(50):
        tracker.update(frame, frame / 25, [person])
    assert len(tracker.tracks[0].history) == 8
    for frame in range(50, 50 + tracker.settings.patience + 1):
        tracker.update(frame, frame / 25, [])
    assert tracker.tracks == {} and tracker.live == []  # a dead track is forgotten
    with pytest.raises(FastMetroError, match="keep"):
        Tracker(keep=2)


def test_video_options_default_to_the_librarys_settings():
    import argparse

    from fastmetro.inference.tracking import TrackerSettings
    from fastmetro.inference.video import DETECT_EVERY
    from fastmetro.inference.video_commands import add_video_arguments

    parser = argparse.ArgumentParser()
    add_video_arguments(parser)
    args = parser.parse_args([])
    defaults = TrackerSettings()
    assert (args.track_birth, args.track_patience) == (defaults.birth, defaults.patience)
    assert args.detect_every == DETECT_EVERY


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 0, 10, 10)) == 0.0


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, smpl_topology):
    import torch

    import fastmetro
    from fastmetro.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = fastmetro.create_model("FastMETRO-S-R18", topology=smpl_topology)
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "tiny.safetensors")


@pytest.fixture()
def clip(tmp_path):
    import imageio.v3 as iio

    frames = np.random.default_rng(0).integers(0, 255, (6, 64, 80, 3), dtype=np.uint8)
    video = tmp_path / "clip.mp4"
    iio.imwrite(video, frames, plugin="pyav", codec="libx264", fps=5)
    return video


def test_a_video_with_nobody_writes_an_empty_valid_result(checkpoint, clip, tmp_path, smpl_dir):
    from fastmetro.inference.predictor import Predictor
    from fastmetro.inference.runner import InferenceRunner
    from fastmetro.inference.video import track_video

    predictor = Predictor(checkpoint=checkpoint, data_dir=smpl_dir, image_size=64)
    with InferenceRunner(predictor, boxes=lambda image: [], overlay=False) as runner:
        video = track_video(runner, clip, out_dir=tmp_path / "out")
    assert video.frames == 6 and video.tracks == {} and video.failures == []
    summary = json.loads((tmp_path / "out" / "clip" / "tracks.json").read_text())
    assert summary["frames"] == 6 and summary["tracks"] == {} and summary["fps"] == pytest.approx(5.0)
    assert (tmp_path / "out" / "clip" / "overlay.mp4").stat().st_size > 0


@pytest.mark.parametrize("mode", ["none", "causal", "offline"])
def test_smooth_choices_reach_the_outputs(checkpoint, clip, tmp_path, smpl_dir, mode, capsys):
    out = tmp_path / "out"
    arguments = ["infer", str(clip), "--checkpoint", str(checkpoint), "--data-dir", str(smpl_dir), "--out", str(out)]
    arguments += ["--image-size", "64", "--bbox", "10,5,40,55", "--smooth", mode, "--track-birth", "2"]
    assert main(arguments) == 0
    assert "1 track(s)" in capsys.readouterr().out
    folder = out / "clip" / "track_00"
    records = [json.loads((folder / f"frame_{i:06d}.json").read_text()) for i in range(6)]
    assert (folder / "frame_000000.obj").is_file() and (out / "clip" / "overlay.mp4").is_file()
    raw = np.array([r["joints_3d_camera"] for r in records])
    smoothed = np.array([r["smoothed"]["joints_3d_camera"] for r in records])
    assert all(r["smoothed"]["mode"] == mode and r["track_id"] == 0 for r in records)
    assert [r["frame"] for r in records] == list(range(6))
    if mode == "none":
        np.testing.assert_allclose(smoothed, raw, atol=2e-6)
    else:
        assert np.abs(smoothed - raw).max() > 1e-5  # an untrained net's noisy frames get smoothed
        assert np.abs(np.diff(smoothed, 2, axis=0)).mean() < np.abs(np.diff(raw, 2, axis=0)).mean()


def test_no_track_keeps_frame_folders_and_bad_video_options(checkpoint, clip, tmp_path, smpl_dir, capsys):
    out = tmp_path / "out"
    base = ["infer", str(clip), "--checkpoint", str(checkpoint), "--data-dir", str(smpl_dir), "--out", str(out)]
    assert main([*base, "--image-size", "64", "--no-overlay", "--no-track", "--bbox", "10,5,40,55"]) == 0
    assert sorted(p.name for p in out.iterdir())[0] == "clip_f000000"
    for option, value in (("--min-cutoff", "0"), ("--track-birth", "0"), ("--tiles", "9"), ("--beta", "-1")):
        assert main([*base, option, value]) != 0
        assert option in capsys.readouterr().err

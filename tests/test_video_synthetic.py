"""Synthetic clips with ground truth: two Anny bodies crossing, tracked through their true boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastmetro.inference import camera as cam
from fastmetro.inference.predictor import PersonPrediction
from fastmetro.inference.tracking import Tracker, box_iou


def as_prediction(person) -> PersonPrediction:
    """The ground truth dressed as a network result (root-centred joints + translation)."""
    root = person.joints[[2, 3]].mean(0)
    x, y, w, h = person.box
    return PersonPrediction(
        box=person.box,
        crop_box=cam.CropBox((x + w / 2, y + h / 2), max(w, h)),
        side="right",
        camera=np.array([1.0, 0.0, 0.0]),
        intrinsics=np.eye(3),
        translation=root,
        vertices=person.vertices - root,
        faces=np.zeros((1, 3), int),
        joints=person.joints - root,
        mesh_joints=person.joints - root,
        joints_2d=np.zeros((len(person.joints), 2)),
    )


@pytest.mark.slow
def test_two_bodies_cross_and_keep_their_ids(tmp_path):
    from fastmetro.data.synthetic.crowd import CrowdMaker
    from fastmetro.data.synthetic.video import render_clip, write_clip

    maker = CrowdMaker((224, 168), split="generalisation", samples=1)
    try:
        clip = render_clip(maker, 0, 0, people=2, frames=20)
    finally:
        maker.release()
    assert len(clip.images) == 20 and clip.images[0].shape == (168, 224, 3)
    assert all([p.track_id for p in people] == [0, 1] for people in clip.people)
    centres = np.array([[p.box[0] + p.box[2] / 2 for p in people] for people in clip.people])
    order = np.sign(centres[:, 0] - centres[:, 1])
    assert order[0] == -order[-1]  # they swap sides: a crossing
    assert max(box_iou(*(p.box for p in people)) for people in clip.people) > 0.05  # boxes overlap on the way
    tracker = Tracker(birth=2, patience=3)
    ids = [tracker.update(f, f / clip.fps, [as_prediction(p) for p in people]) for f, people in enumerate(clip.people)]
    assert all(frame_ids == [0, 1] or frame_ids == [1, 0] for frame_ids in ids[2:])
    assert len({tuple(frame_ids) for frame_ids in ids[1:]}) == 1  # the same person keeps the same id
    folder = write_clip(clip, tmp_path)
    labels = json.loads((folder / "labels.json").read_text())
    assert len(labels["frames"]) == 20 and labels["frames"][0][1]["track_id"] == 1
    assert (folder / "clip.mp4").stat().st_size > 0 and (folder / "frames" / "frame_000019.png").is_file()

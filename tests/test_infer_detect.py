"""People found without a box: MediaPipe's detector in `fastmetro infer`, the Predictor and the runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fastmetro.cli import main
from fastmetro.errors import FastMetroError
from fastmetro.inference.detector import Detection, MediaPipeDetector, detector_for, make_detector


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, smpl_topology, mano_topology):
    import torch

    import fastmetro
    from fastmetro.model.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    small = dict(model_dims=(64, 32), feedforward_dims=(128, 64), num_heads=2)
    body = fastmetro.create_model("FastMETRO-S-R18", topology=smpl_topology, **small)
    hand = fastmetro.create_model("FastMETRO-S-R18", topology=mano_topology, **small)
    return {
        "body": save_checkpoint(body, folder / "body.safetensors"),
        "hand": save_checkpoint(hand, folder / "hand.safetensors"),
        "body_model": body,
        "hand_model": hand,
    }


@pytest.fixture()
def photos(tmp_path):
    import skimage.data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.png")
    return folder


def test_infer_finds_the_person_and_writes_her_landmarks(tiny_models, photos, tmp_path, smpl_dir, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            str(photos),
            "--checkpoint",
            str(tiny_models["body"]),
            "--data-dir",
            str(smpl_dir),
            "--out",
            str(out),
            "--image-size",
            "64",
            "--no-overlay",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "done: 2 image(s), 1 person(s), 0 failed" in captured.out
    assert "coffee.png: the detector found no person" in captured.err
    record = json.loads((out / "astronaut" / "person_00.json").read_text())
    x, y, w, h = record["box_xywh"]
    assert x < 80 and y < 60 and w > 250 and h > 430  # her body, not the whole 512 x 512 photo
    assert 0.5 < record["detector_score"] <= 1.0
    landmarks = record["landmarks"]
    assert landmarks["names"][0] == "nose" and len(landmarks["image"]) == 33 and len(landmarks["world"]) == 33
    assert landmarks["presence"] > 0.9 and len(landmarks["image"][0]) == 5
    nose = landmarks["image"][0]
    assert 200 < nose[0] < 260 and 100 < nose[1] < 160


def test_detector_none_keeps_the_whole_image(tiny_models, photos, tmp_path, smpl_dir, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            str(photos / "coffee.png"),
            "--checkpoint",
            str(tiny_models["body"]),
            "--data-dir",
            str(smpl_dir),
            "--out",
            str(out),
            "--image-size",
            "64",
            "--no-overlay",
            "--detector",
            "none",
        ]
    )
    assert code == 0
    assert "using the whole image as the box" in capsys.readouterr().err
    record = json.loads((out / "coffee" / "person_00.json").read_text())
    assert record["box_xywh"] == [0.0, 0.0, 600.0, 400.0] and "landmarks" not in record


def test_hand_models_get_the_palm_detector(tiny_models):
    from fastmetro.inference.predictor import Predictor
    from fastmetro.inference.runner import InferenceRunner

    body_detector = make_detector("mediapipe")
    assert body_detector.kind == "body" and detector_for(body_detector, is_hand=False) is body_detector
    hand_detector = detector_for(body_detector, is_hand=True)
    assert isinstance(hand_detector, MediaPipeDetector) and hand_detector.kind == "hand"
    predictor = Predictor(model=tiny_models["hand_model"], image_size=64, detector="mediapipe")
    assert predictor.detector.kind == "hand"
    runner = InferenceRunner(
        Predictor(model=tiny_models["hand_model"], image_size=64), boxes=body_detector, overlay=False
    )
    assert runner.boxes.detector.kind == "hand"
    with pytest.raises(FastMetroError, match="detector must be 'mediapipe', 'none' or a callable"):
        Predictor(model=tiny_models["body_model"], detector="yolo")


def test_a_hand_detectors_side_reaches_the_prediction(tiny_models):
    from fastmetro.inference.predictor import Predictor

    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    found = [Detection((10, 10, 50, 50), 0.9, side="left"), Detection((80, 20, 50, 50), 0.8)]
    prediction = Predictor(model=tiny_models["hand_model"], image_size=64, detector=lambda _: found).predict(image)
    assert [p.side for p in prediction.people] == ["left", "right"]
    assert [p.score for p in prediction.people] == [0.9, 0.8]


def test_missing_networks_fail_in_one_line_naming_the_command(
    tiny_models, photos, tmp_path, smpl_dir, capsys, monkeypatch
):
    from fastmetro.mediapipe import networks

    monkeypatch.setenv("FASTMETRO_MEDIAPIPE_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(networks, "_cache", {})
    code = main(
        [
            "infer",
            str(photos / "astronaut.png"),
            "--checkpoint",
            str(tiny_models["body"]),
            "--data-dir",
            str(smpl_dir),
            "--out",
            str(tmp_path / "out"),
            "--image-size",
            "64",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "fastmetro assets fetch" in err and len(err.strip().splitlines()) == 1

"""InferenceRunner from Python: inputs of every kind, box sources, batching with failure isolation."""

from __future__ import annotations

import numpy as np
import pytest

from fastmetro.errors import FastMetroError
from fastmetro.inference.boxes import PersonBox
from fastmetro.inference.detector import Detection
from fastmetro.inference.images import Frame
from fastmetro.inference.runner import Failure, ImageResult, InferenceRunner


@pytest.fixture(scope="module")
def tiny_model(smpl_topology):
    import torch

    import fastmetro

    torch.manual_seed(0)
    return fastmetro.create_model(
        "FastMETRO-S-R18", topology=smpl_topology, model_dims=(64, 32), feedforward_dims=(128, 64), num_heads=2
    ).eval()


def predictor(model, **kwargs):
    from fastmetro.inference.predictor import Predictor

    return Predictor(model=model, image_size=64, **kwargs)


def images(count=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (90 + 7 * i, 110, 3), dtype=np.uint8) for i in range(count)]


def test_batched_run_isolates_the_bad_image_and_matches_single_runs(tiny_model):
    pictures = images(5)
    boxes = {f"image_{i:04d}": [(10, 10, 60, 70)] for i in range(5)}
    boxes["image_0002"] = [(500, 500, 10, 10)]  # outside image 2 only
    runner = InferenceRunner(predictor(tiny_model, batch_size=4), boxes=boxes, overlay=False)
    summary = runner.run(pictures)
    assert [r.name for r in summary.results] == ["image_0000", "image_0001", "image_0003", "image_0004"]
    assert len(summary.failures) == 1 and summary.failures[0].source == "<array 2>"
    assert "<array 2>: box" in summary.failures[0].message and "outside" in summary.failures[0].message
    # Batched crops give the meshes a one-image batch gives (the batch was rerun image by image).
    single = InferenceRunner(predictor(tiny_model, batch_size=1), boxes=boxes, overlay=False).run(pictures)
    for batched, alone in zip(summary.results, single.results):
        assert np.allclose(batched.prediction.people[0].vertices, alone.prediction.people[0].vertices, atol=1e-4)
    assert summary.people == 4


def test_sources_given_mapping_detector_and_whole_image(tiny_model):
    picture = images(1)[0]
    frame = Frame(name="shot", source="shots/shot.jpg", pixels=picture)
    given = InferenceRunner(
        predictor(tiny_model), boxes=[(5, 5, 40, 50), PersonBox((30, 20, 50, 60), side="left")], overlay=False
    ).predict_one(picture)
    assert [p.box for p in given.prediction.people] == [(5.0, 5.0, 40.0, 50.0), (30.0, 20.0, 50.0, 60.0)]
    assert [p.side for p in given.prediction.people] == ["right", "left"]
    # A mapping is looked up by the file name; an image not in it uses the whole image, with a warning.
    by_name = InferenceRunner(predictor(tiny_model), boxes={"shot.jpg": [(1, 2, 30, 40)]}, overlay=False)
    assert by_name.run([frame]).results[0].prediction.people[0].box == (1.0, 2.0, 30.0, 40.0)
    missing = by_name.predict_one(picture, name="other")
    assert missing.prediction.people[0].box == (0.0, 0.0, 110.0, 90.0)
    assert missing.warnings == ["other: not in the boxes file; using the whole image as the box"]
    # A detector (any callable) gives the boxes; finding nobody is a warning and no person.
    detected = InferenceRunner(
        predictor(tiny_model), boxes=lambda image: [Detection((3, 4, 50, 60), 0.9)], overlay=False
    ).predict_one(picture)
    assert detected.prediction.people[0].box == (3.0, 4.0, 50.0, 60.0)
    nobody = InferenceRunner(predictor(tiny_model), boxes=lambda image: [], overlay=False).predict_one(picture, "x")
    assert nobody.prediction.people == [] and nobody.warnings == ["x: the detector found no person"]
    whole = InferenceRunner(predictor(tiny_model), overlay=False).predict_one(picture, "w")
    assert whole.prediction.people[0].box == (0.0, 0.0, 110.0, 90.0)
    assert whole.warnings[0] == "w: no person box given; using the whole image as the box"


def test_paths_outputs_and_json_only_mode(tiny_model, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for i, picture in enumerate(images(2)):
        Image.fromarray(picture).save(folder / f"p{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    with InferenceRunner(
        predictor(tiny_model), boxes=[(10, 10, 60, 70)], out_dir=out, max_side=64, attention_joint="Head"
    ) as runner:
        items = list(runner.iter_results([folder]))
    assert [type(item) for item in items] == [Failure, ImageResult, ImageResult]  # bad.png sorts first
    assert items[0].message == f"{folder / 'bad.png'}: not a readable image"
    result = items[1]
    names = {path.name for path in result.files}
    assert {
        "person_00.obj",
        "person_00.ply",
        "person_00.glb",
        "person_00.json",
        "scene.glb",
        "overlay.png",
        "attention_cross_person_00_Head.png",
        "attention_self_person_00_Head.png",
    } == names
    assert all(path.parent == out / "p0" and path.is_file() for path in result.files)
    assert result.overlay.shape == (52, 3 * 64, 3)  # 90x110 scaled to a longer side of 64, three panels
    assert set(result.attention) == {"attention_cross_person_00_Head.png", "attention_self_person_00_Head.png"}
    json_only = InferenceRunner(
        predictor(tiny_model), boxes=[(10, 10, 60, 70)], out_dir=tmp_path / "j", overlay=False, mesh_files=False
    ).run([folder / "p1.png"])
    assert [p.name for p in json_only.results[0].files] == ["person_00.json"]


def test_bad_runner_settings(tiny_model, tmp_path):
    with pytest.raises(FastMetroError, match="focal_length must be a finite number"):
        InferenceRunner(predictor(tiny_model, focal_length=float("nan")))
    with pytest.raises(FastMetroError, match="focal_length must be > 0"):
        InferenceRunner(predictor(tiny_model, focal_length=-1000.0))
    with pytest.raises(FastMetroError, match="max_side must be >= 1"):
        InferenceRunner(predictor(tiny_model), max_side=0)
    with pytest.raises(FastMetroError, match="no such file or folder"):
        InferenceRunner(predictor(tiny_model)).run([tmp_path / "missing.png"])
    with pytest.raises(FastMetroError, match="cannot run on int inputs"):
        InferenceRunner(predictor(tiny_model)).run([3])
    too_big = InferenceRunner(predictor(tiny_model), max_pixels=1000).run(images(1))
    assert "over the limit of 0.001 megapixels" in too_big.failures[0].message

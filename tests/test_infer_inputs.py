"""Bad and unusual inputs: images, boxes, checkpoints, detector weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastmetro.errors import FastMetroError
from fastmetro.inference.images import expand_inputs, load_image


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_truncated_jpeg_and_png_are_one_line_errors(tmp_path):
    for suffix in ("jpg", "png"):
        full = save(
            Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)),
            tmp_path / f"full.{suffix}",
        )
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
        with pytest.raises(FastMetroError) as caught:
            load_image(cut)
        assert str(cut) in str(caught.value) and "\n" not in str(caught.value)


def test_not_an_image_and_missing_file(tmp_path):
    garbage = tmp_path / "notes.png"
    garbage.write_text("hello")
    with pytest.raises(FastMetroError, match="notes.png: not a readable image"):
        load_image(garbage)
    with pytest.raises(FastMetroError, match="missing.png: file not found"):
        load_image(tmp_path / "missing.png")


def test_grayscale_8_and_16_bit_become_rgb(tmp_path):
    gray = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    out = load_image(save(Image.fromarray(gray), tmp_path / "g8.png"))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and np.array_equal(out[..., 1], gray)
    deep = gray.astype(np.uint16) * 257  # 16-bit full range
    out16 = load_image(save(Image.fromarray(deep), tmp_path / "g16.png"))
    assert out16.shape == (16, 16, 3) and np.abs(out16[..., 0].astype(int) - gray).max() <= 1


def test_16_bit_colour_is_scaled_not_clipped(tmp_path):
    import cv2

    colour = np.zeros((8, 8, 3), np.uint16)
    colour[..., 0] = 65535  # blue in OpenCV's BGR
    colour[..., 2] = 32768  # red at half
    path = tmp_path / "c16.png"
    cv2.imwrite(str(path), colour)
    out = load_image(path)
    assert out[0, 0].tolist() == [128, 0, 255]


def test_rgba_is_composited_over_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:2, ..., 3] = 255
    rgba[2:, ..., 3] = 0
    out = load_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    assert (out[:2] == 200).all() and (out[2:] == 0).all()


def test_exif_rotation_is_applied(tmp_path):
    # A wide image stored with "rotate 90 clockwise to display" (orientation 6) is shown tall.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # left edge white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.fromarray(pixels), tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.shape[:2] == (40, 20)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the left edge is now the top


def test_folder_expansion_and_missing_inputs(tmp_path):
    save(Image.new("RGB", (8, 8)), tmp_path / "b.png")
    save(Image.new("RGB", (8, 8)), tmp_path / "a.jpg")
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.jpg", "b.png"]
    with pytest.raises(FastMetroError, match="nothing_here"):
        expand_inputs([tmp_path / "nothing_here"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FastMetroError, match="folder has no images"):
        expand_inputs([empty])


# ----------------------------------------------------------------------------- boxes and models
@pytest.fixture(scope="module")
def tiny_predictor(smpl_topology):
    import torch

    import fastmetro
    from fastmetro.inference.predictor import Predictor

    torch.manual_seed(0)
    model = fastmetro.create_model("FastMETRO-S-R18", topology=smpl_topology)
    return Predictor(model=model, image_size=64)


@pytest.mark.parametrize(
    "box,problem",
    [
        ((10, 10, 0, 20), "zero or negative size"),
        ((500, 10, 20, 20), "outside"),
        ((-100, -100, 50, 50), "outside"),
        ((float("inf"), 1, 2, 2), "non-finite"),
    ],
)
def test_bad_boxes_name_the_image(tiny_predictor, box, problem):
    image = np.zeros((100, 120, 3), np.uint8)
    with pytest.raises(FastMetroError) as caught:
        tiny_predictor.predict(image, [box], source="photo.jpg")
    assert str(caught.value).startswith("photo.jpg:") and problem in str(caught.value)


def test_box_partly_outside_is_fine(tiny_predictor):
    image = np.full((100, 120, 3), 90, np.uint8)
    result = tiny_predictor.predict(image, [(-30, -30, 80, 80)])
    assert len(result.people) == 1 and np.isfinite(result.people[0].vertices).all()


def test_wrong_image_array_is_refused(tiny_predictor):
    with pytest.raises(FastMetroError, match="x.png: expected an"):
        tiny_predictor.predict(np.zeros((10, 10), np.uint8), None, source="x.png")


def test_unknown_joint_name(tiny_predictor):
    assert tiny_predictor.joint_index("head") == 13 and tiny_predictor.joint_index("2") == 2
    with pytest.raises(FastMetroError, match="unknown joint"):
        tiny_predictor.joint_index("tail")
    with pytest.raises(FastMetroError, match="out of range"):
        tiny_predictor.joint_index(99)


def test_checkpoint_for_another_topology_is_refused(tmp_path, smpl_dir, mano_topology):
    import torch

    import fastmetro
    from fastmetro.inference.predictor import Predictor
    from fastmetro.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    hand = fastmetro.create_model("FastMETRO-S-R18", topology=mano_topology)
    checkpoint = save_checkpoint(hand, tmp_path / "hand.safetensors")
    with pytest.raises(FastMetroError) as caught:
        Predictor(checkpoint=checkpoint, topology="smpl", data_dir=smpl_dir)
    message = str(caught.value)
    assert "hand.safetensors" in message and "topology" in message and "\n" not in message


def test_missing_and_corrupt_checkpoint(tmp_path):
    from fastmetro.inference.predictor import Predictor

    with pytest.raises(FastMetroError, match="nope.safetensors: checkpoint not found"):
        Predictor(checkpoint=tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    bad.with_suffix(".json").write_text("{}")
    with pytest.raises(FastMetroError, match="bad"):
        Predictor(checkpoint=bad)


# ----------------------------------------------------------------------------- detector
def test_torchvision_detector_from_a_local_weights_file(tmp_path):
    import torch
    import torchvision

    from fastmetro.inference.detector import Detection, TorchvisionDetector

    torch.manual_seed(0)
    reference = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None
    ).eval()
    with torch.no_grad():  # an untrained detector finds nobody: make "person" the confident class
        reference.roi_heads.box_predictor.cls_score.bias[1] = 10.0
    path = tmp_path / "detector.pth"
    torch.save(reference.state_dict(), path)
    # The 320 and full-size MobileNet detectors share one state dict: auto-detection finds the
    # family, the exact builder (input resolution) is the user's choice.
    assert TorchvisionDetector(path).architecture.startswith("fasterrcnn_mobilenet_v3_large")
    detector = TorchvisionDetector(path, score_threshold=0.0, architecture="fasterrcnn_mobilenet_v3_large_320_fpn")
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    detections = detector(image)
    assert all(isinstance(d, Detection) and d.box[2] > 0 and d.box[3] > 0 for d in detections)
    # Same boxes as the reference network (person class only), as (x, y, w, h), best first.
    with torch.no_grad():
        expected = reference([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    people = expected["labels"] == 1
    assert len(detections) == min(int(people.sum()), detector.max_people) > 0
    best = expected["boxes"][people][expected["scores"][people].argmax()].numpy()
    x, y, w, h = detections[0].box
    assert np.allclose([x, y, x + w, y + h], best, atol=1e-3)
    assert detections[0].score == pytest.approx(float(expected["scores"][people].max()))


def test_detector_weights_errors(tmp_path):
    import pickle

    from fastmetro.inference.detector import TorchvisionDetector

    with pytest.raises(FastMetroError, match="not found"):
        TorchvisionDetector(tmp_path / "none.pth")
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(print))  # a global a weights-only load must refuse
    with pytest.raises(
        FastMetroError,
        match="evil.pth: not a readable weights-only torch file",
    ):
        TorchvisionDetector(evil)
    import torch

    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(3)}, other)
    with pytest.raises(FastMetroError, match="match none"):
        TorchvisionDetector(other)


# ----------------------------------------------------------------------------- output names
def test_output_names_are_distinct_and_deterministic():
    from pathlib import Path

    from fastmetro.inference.images import output_names

    paths = [Path("x/a.jpg"), Path("x/a.png"), Path("x/b.png"), Path("y/a.jpg"), Path("x/a_png.png"), Path("x/b.png")]
    names = output_names(paths)
    assert names == ["x_a_jpg", "a_png", "x_b_png", "y_a_jpg", "a_png_2", "x_b_png_2"]
    assert len(set(names)) == len(names)
    # A name depends on the set of inputs, not their order (except the numbered last resort).
    unique = paths[:4]
    reordered = output_names(unique[::-1])[::-1]
    assert reordered == output_names(unique)
    assert output_names([Path("a.jpg"), Path("b.jpg")]) == ["a", "b"]


def test_too_many_pixels_is_refused_before_decoding(tmp_path):
    path = save(Image.new("RGB", (300, 200)), tmp_path / "big.png")
    assert load_image(path, max_pixels=60_000).shape == (200, 300, 3)
    with pytest.raises(FastMetroError, match=r"big.png: the image is 300x200 \(0.1 megapixels\), over the limit"):
        load_image(path, max_pixels=59_999)
    with pytest.raises(FastMetroError, match="^photo.png: not a readable image$"):
        garbage = tmp_path / "upload_123"
        garbage.write_bytes(b"nope")
        load_image(garbage, name="photo.png")


@pytest.mark.parametrize(
    "box,problem",
    [
        ((0, 0, 1e-9, 1e-9), "under 1 pixel"),
        ((0, 0, 1e308, 1e308), "beyond"),
        ((0, 0, 5000, 5000), "over 10 times the 120x100 image"),
    ],
)
def test_absurd_boxes_are_refused(tiny_predictor, box, problem):
    with pytest.raises(FastMetroError) as caught:
        tiny_predictor.predict(np.zeros((100, 120, 3), np.uint8), [box], source="photo.jpg")
    assert str(caught.value).startswith("photo.jpg:") and problem in str(caught.value)


def test_device_checks():
    from fastmetro.inference import validate

    assert str(validate.device("--device", "cpu")) == "cpu"
    expected_auto = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(validate.device("--device", "auto")) == expected_auto
    for value, problem in (
        ("bogus", "--device 'bogus': not a device fastmetro runs on"),
        ("meta", "--device 'meta': not a device fastmetro runs on"),
        ("cuda:-1", "not a device fastmetro runs on"),
        ("cuda:99", "cuda:99"),
        ("xpu:7", "xpu:7"),
    ):
        with pytest.raises(FastMetroError, match=problem):
            validate.device("--device", value)


def test_one_device_policy_for_config_training_and_inference():
    """The training config, the training loop and the inference options agree on every name
    (they once disagreed on xpu): a name the config accepts resolves or says the machine lacks it."""
    from fastmetro.devices import check_device_name, resolve_device
    from fastmetro.engine.config import ExperimentConfig, validate

    for name in ("cpu", "cuda", "cuda:1", "mps", "xpu", "xpu:0", "auto"):
        config = ExperimentConfig()
        config.train.device = name
        validate(config)  # syntax: every name of ours passes
        try:
            resolved = resolve_device(name)
        except FastMetroError as error:
            assert "not available on this machine" in str(error) or "this machine has" in str(error)
        else:
            assert resolved.type in ("cpu", "cuda", "mps", "xpu")
    for name in ("meta", "tpu", "cuda:x"):
        with pytest.raises(FastMetroError, match="not a device fastmetro runs on"):
            check_device_name(name, "train.device")
        config = ExperimentConfig()
        config.train.device = name
        with pytest.raises(FastMetroError, match="train.device"):
            validate(config)

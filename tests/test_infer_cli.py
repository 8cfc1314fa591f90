"""`fastmetro infer` / `fastmetro export` end to end with a tiny untrained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fastmetro.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, smpl_topology):
    import torch

    import fastmetro
    from fastmetro.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = fastmetro.create_model("FastMETRO-S-R18", topology=smpl_topology)
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "tiny.safetensors")


@pytest.fixture()
def photos(tmp_path):
    import skimage.data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.astronaut()[::2, ::2]).convert("L").save(folder / "gray.jpg")
    (folder / "broken.jpg").write_bytes((folder / "gray.jpg").read_bytes()[:300])
    return folder


def test_infer_folder_with_a_broken_image(checkpoint, photos, tmp_path, smpl_dir, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            str(photos),
            "--checkpoint",
            str(checkpoint),
            "--data-dir",
            str(smpl_dir),
            "--out",
            str(out),
            "--bbox",
            "120,20,300,490",
            "--image-size",
            "96",
            "--max-side",
            "200",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # one input failed
    assert "broken.jpg" in captured.err and "1 input(s) failed" in captured.err
    assert "done: 2 image(s), 2 person(s), 1 failed" in captured.out
    for name in ("astronaut", "gray"):
        files = {p.name for p in (out / name).iterdir()}
        assert {
            "person_00.obj",
            "person_00.ply",
            "person_00.glb",
            "person_00.json",
            "overlay.png",
            "scene.glb",
        } <= files
    assert not (out / "broken").exists()
    record = json.loads((out / "astronaut" / "person_00.json").read_text())
    assert record["box_xywh"] == [120.0, 20.0, 300.0, 490.0] and len(record["joints_2d"]) == 14
    assert record["crop_box"]["center"] == [270.0, 265.0]


def test_infer_boxes_file_attention_and_whole_image_warning(checkpoint, photos, tmp_path, smpl_dir, capsys):
    (photos / "broken.jpg").unlink()
    boxes = tmp_path / "boxes.json"
    boxes.write_text(
        json.dumps(
            {
                "astronaut.png": [
                    [120, 20, 300, 490],
                    {"box": [300, 300, 100, 150]},
                    {"center": [250, 260], "scale": 2.5},
                ]
            }
        )
    )
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            str(photos),
            "--checkpoint",
            str(checkpoint),
            "--data-dir",
            str(smpl_dir),
            "--out",
            str(out),
            "--boxes",
            str(boxes),
            "--attention",
            "Head",
            "--image-size",
            "96",
            "--max-side",
            "200",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "astronaut" / "person_01.json").is_file()
    released = json.loads((out / "astronaut" / "person_02.json").read_text())["crop_box"]
    assert released == {"center": [250.0, 260.0], "side": 500.0, "scale": 2.5}  # used as is
    assert (out / "astronaut" / "attention_cross_person_00_Head.png").is_file()
    assert (out / "astronaut" / "attention_self_person_01_Head.png").is_file()
    assert "gray.jpg" in captured.err and "whole image" in captured.err


def test_infer_video(checkpoint, tmp_path, smpl_dir):
    import imageio.v3 as iio

    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 80, 3), dtype=np.uint8)
    video = tmp_path / "clip.mp4"
    iio.imwrite(video, frames, plugin="pyav", codec="libx264", fps=5)
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            str(video),
            "--checkpoint",
            str(checkpoint),
            "--data-dir",
            str(smpl_dir),
            "--out",
            str(out),
            "--image-size",
            "64",
            "--no-overlay",
            "--no-track",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip_f000000", "clip_f000001", "clip_f000002"]


def test_infer_bad_arguments(checkpoint, photos, tmp_path, smpl_dir, capsys):
    common = ["--checkpoint", str(checkpoint), "--data-dir", str(smpl_dir), "--out", str(tmp_path / "o")]
    assert main(["infer", str(photos / "astronaut.png"), *common, "--bbox", "1,2,3"]) == 2
    assert "--bbox '1,2,3': expected four numbers" in capsys.readouterr().err
    # A box outside the image fails that image only, with its name.
    assert (
        main(
            [
                "infer",
                str(photos / "astronaut.png"),
                *common,
                "--bbox",
                "900,900,10,10",
                "--image-size",
                "64",
                "--no-overlay",
            ]
        )
        == 1
    )
    assert "astronaut.png: box" in capsys.readouterr().err
    assert main(["infer", str(tmp_path / "missing.png"), *common]) == 2
    assert "missing.png: no such file or folder" in capsys.readouterr().err


def test_export_cli_onnx(checkpoint, tmp_path, smpl_dir, capsys):
    pytest.importorskip("onnxruntime")
    target = tmp_path / "tiny.onnx"
    code = main(
        [
            "export",
            "--checkpoint",
            str(checkpoint),
            "--data-dir",
            str(smpl_dir),
            "--format",
            "onnx",
            "--out",
            str(target),
            "--image-size",
            "64",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert target.stat().st_size > 1_000_000
    assert "fine_vertices" in captured.out and "max |exported - pytorch|" in captured.out


@pytest.mark.slow  # ONNX export and static quantisation
def test_export_cli_int8(checkpoint, photos, tmp_path, smpl_dir, capsys):
    pytest.importorskip("onnxruntime")
    target = tmp_path / "tiny-int8.onnx"
    common = ["export", "--checkpoint", str(checkpoint), "--data-dir", str(smpl_dir), "--image-size", "64"]
    calibration = [str(photos / "astronaut.png"), str(photos / "gray.jpg")]
    code = main([*common, "--format", "onnx", "--out", str(target), "--int8", "--calibration", *calibration])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "int8 backbone calibrated on" in captured.out and "fine_vertices  int8 - pytorch: mean" in captured.out
    assert target.stat().st_size > 100_000
    assert main([*common, "--format", "torchscript", "--out", str(tmp_path / "m.pt"), "--int8"]) == 2
    assert "--int8 (with --calibration) needs --format onnx" in capsys.readouterr().err
    broken = ["--format", "onnx", "--out", str(tmp_path / "b.onnx"), "--int8", "--calibration", str(photos)]
    assert main([*common, *broken]) == 2
    assert "broken.jpg" in capsys.readouterr().err  # the folder's truncated file, named
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.slow  # quantises and compiles the backbone
def test_infer_int8(checkpoint, photos, tmp_path, smpl_dir, capsys):
    pytest.importorskip("torchao")
    out = tmp_path / "out"
    common = ["infer", str(photos / "astronaut.png"), "--checkpoint", str(checkpoint), "--data-dir", str(smpl_dir),
              "--bbox", "120,20,300,490", "--image-size", "64"]  # fmt: skip
    code = main([*common, "--out", str(out), "--int8", "--calibration", str(photos / "gray.jpg")])
    assert code == 0, capsys.readouterr().err
    assert len(json.loads((out / "astronaut" / "person_00.json").read_text())["joints_2d"]) == 14
    assert main([*common, "--out", str(tmp_path / "b"), "--calibration", str(photos)]) == 2
    assert "broken.jpg" in capsys.readouterr().err


def test_infer_flip_test(checkpoint, photos, tmp_path, smpl_dir, capsys):
    common = ["infer", str(photos / "astronaut.png"), "--checkpoint", str(checkpoint), "--data-dir", str(smpl_dir),
              "--bbox", "120,20,300,490", "--image-size", "64"]  # fmt: skip
    people = {}
    for name, extra in (("plain", []), ("flip", ["--flip-test"])):
        assert main([*common, "--out", str(tmp_path / name), *extra]) == 0, capsys.readouterr().err
        people[name] = json.loads((tmp_path / name / "astronaut" / "person_00.json").read_text())
    # An untrained network is no mirror of itself: the mean with the mirrored crop's result differs.
    assert not np.allclose(people["plain"]["joints_2d"], people["flip"]["joints_2d"], atol=0.5)
    assert main([*common, "--out", str(tmp_path / "a"), "--flip-test", "--attention", "0"]) == 2
    assert "--flip-test and --attention cannot be combined" in capsys.readouterr().err


@pytest.mark.slow
def test_infer_with_a_detector(checkpoint, photos, tmp_path, smpl_dir, capsys):
    import torch
    import torchvision

    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    with torch.no_grad():  # untrained: make "person" the confident class so boxes come out
        detector.roi_heads.box_predictor.cls_score.bias[1] = 10.0
    weights = tmp_path / "detector.pth"
    torch.save(detector.state_dict(), weights)
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            str(photos / "astronaut.png"),
            "--checkpoint",
            str(checkpoint),
            "--data-dir",
            str(smpl_dir),
            "--out",
            str(out),
            "--detector",
            str(weights),
            "--detector-arch",
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            "--detector-threshold",
            "0.5",
            "--max-people",
            "2",
            "--image-size",
            "64",
            "--max-side",
            "128",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    people = sorted((out / "astronaut").glob("person_*.json"))
    assert len(people) == 2 and f"astronaut.png: {len(people)} person(s)" in captured.out
    record = json.loads(people[0].read_text())
    x, y, w, h = record["box_xywh"]
    assert w > 0 and h > 0 and x < 512 and y < 512


def test_infer_left_hand(tmp_path, mano_dir, mano_topology, photos):
    import torch
    import trimesh

    import fastmetro
    from fastmetro.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    hand = save_checkpoint(
        fastmetro.create_model("FastMETRO-S-R18", topology=mano_topology), tmp_path / "hand.safetensors"
    )
    faces = {}
    for side in ("left", "right"):
        out = tmp_path / side
        code = main(
            [
                "infer",
                str(photos / "astronaut.png"),
                "--checkpoint",
                str(hand),
                "--data-dir",
                str(mano_dir),
                "--out",
                str(out),
                "--bbox",
                "150,380,120,120",
                "--hand",
                side,
                "--image-size",
                "64",
                "--no-overlay",
            ]
        )
        assert code == 0
        mesh = trimesh.load(out / "astronaut" / "person_00.obj", process=False)
        assert len(mesh.vertices) == 778
        faces[side] = np.asarray(mesh.faces)
        assert json.loads((out / "astronaut" / "person_00.json").read_text())["side"] == side
    assert np.array_equal(faces["left"], faces["right"][:, ::-1])


def test_corrupt_video_does_not_stop_the_other_inputs(checkpoint, photos, tmp_path, smpl_dir, capsys):
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            str(video),
            str(photos / "astronaut.png"),
            "--checkpoint",
            str(checkpoint),
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
    assert code == 1
    assert "broken.mp4: cannot read video" in captured.err
    assert (out / "astronaut" / "person_00.obj").is_file()


# ----------------------------------------------------------------------------- bad options (issue 16)
@pytest.mark.parametrize(
    "option,expected",
    [
        (["--focal-length", "nan"], "--focal-length must be a finite number"),
        (["--focal-length", "-1000"], "--focal-length must be > 0"),
        (["--focal-length", "0"], "--focal-length must be > 0"),
        (["--focal-length", "inf"], "--focal-length must be a finite number"),
        (["--bbox", "0,0,1e308,1e308"], "has a number beyond"),
        (["--bbox", "0,0,1e-9,1e-9"], "is under 1 pixel wide or high"),
        (["--bbox", "0,0,nan,10"], "non-finite"),
        (["--bbox", "0,0,-5,10"], "zero or negative size"),
        (["--device", "bogus"], "--device 'bogus': not a device fastmetro runs on"),
        (["--device", "cuda:7"], "--device 'cuda:7'"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--image-size", "31"], "--image-size must be between 32 and 1024"),
        (["--image-size", "100000"], "--image-size must be between 32 and 1024"),
        (["--box-expand", "nan"], "--box-expand must be a finite number"),
        (["--box-expand", "0"], "--box-expand must be > 0"),
        (["--detector-threshold", "2"], "--detector-threshold must be <= 1"),
        (["--detector-threshold", "nan"], "--detector-threshold must be a finite number"),
        (["--max-people", "0"], "--max-people must be >= 1"),
        (["--max-side", "0"], "--max-side must be >= 1"),
        (["--attention", "tail"], "unknown joint 'tail'"),
    ],
)
def test_bad_infer_options_are_one_line_errors(checkpoint, photos, tmp_path, smpl_dir, capsys, option, expected):
    code = main(
        [
            "infer",
            str(photos / "astronaut.png"),
            "--checkpoint",
            str(checkpoint),
            "--data-dir",
            str(smpl_dir),
            "--out",
            str(tmp_path / "o"),
            "--image-size",
            "64",
            "--no-overlay",
            *option,
        ]
    )
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err
    assert not (tmp_path / "o" / "astronaut").exists()  # nothing ran


def test_out_folder_that_is_a_file(checkpoint, photos, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out, expected in ((blocker, "exists and is not a folder"), (blocker / "sub", "cannot create the folder")):
        assert main(["infer", str(photos / "astronaut.png"), "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
        assert expected in capsys.readouterr().err


def test_boxes_file_with_absurd_numbers(checkpoint, photos, tmp_path, smpl_dir, capsys):
    boxes = tmp_path / "boxes.json"
    for entry, expected in (
        ([0, 0, 1e300, 1e300], "beyond"),
        ([0, 0, 1e-9, 1e-9], "under 1 pixel"),
        ([0, 0, True, 5], "must be [x, y, w, h] numbers"),
        ({"center": [10, 10], "scale": -1}, "zero or negative size"),
    ):
        boxes.write_text(json.dumps({"astronaut.png": [entry]}))
        code = main(
            [
                "infer",
                str(photos / "astronaut.png"),
                "--checkpoint",
                str(checkpoint),
                "--data-dir",
                str(smpl_dir),
                "--out",
                str(tmp_path / "o"),
                "--boxes",
                str(boxes),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "boxes.json" in err and "Traceback" not in err, err


def test_box_far_larger_than_the_image_fails_that_image(checkpoint, photos, tmp_path, smpl_dir, capsys):
    # Finite and under the absolute limit, but 1000x the 512-pixel image: refused for that image.
    code = main(
        [
            "infer",
            str(photos / "astronaut.png"),
            "--checkpoint",
            str(checkpoint),
            "--data-dir",
            str(smpl_dir),
            "--out",
            str(tmp_path / "o"),
            "--bbox",
            "0,0,512000,512000",
            "--image-size",
            "64",
            "--no-overlay",
        ]
    )
    assert code == 1
    assert (
        "astronaut.png: box [0.0, 0.0, 512000.0, 512000.0] is over 10 times the 512x512 image"
        in capsys.readouterr().err
    )


def test_inputs_sharing_a_stem_get_distinct_folders(checkpoint, tmp_path, smpl_dir, capsys):
    import skimage.data

    folder = tmp_path / "photos"
    folder.mkdir()
    image = skimage.data.astronaut()
    Image.fromarray(image).save(folder / "a.png")
    Image.fromarray(image[:, ::-1].copy()).save(folder / "a.jpg", quality=95)
    outputs = {}
    for run, inputs in enumerate(([folder], [folder / "a.png", folder / "a.jpg"])):
        out = tmp_path / f"out{run}"
        assert (
            main(
                [
                    "infer",
                    *map(str, inputs),
                    "--checkpoint",
                    str(checkpoint),
                    "--data-dir",
                    str(smpl_dir),
                    "--out",
                    str(out),
                    "--bbox",
                    "120,20,300,490",
                    "--image-size",
                    "64",
                    "--no-overlay",
                ]
            )
            == 0
        )
        assert sorted(p.name for p in out.iterdir()) == ["a_jpg", "a_png"]
        outputs[run] = {name: json.loads((out / name / "person_00.json").read_text()) for name in ("a_jpg", "a_png")}
    for run in outputs.values():  # each folder holds its own image's person, whatever the input order
        assert run["a_png"]["image"].endswith("a.png") and run["a_jpg"]["image"].endswith("a.jpg")
        png, jpg = np.array(run["a_png"]["joints_3d"]), np.array(run["a_jpg"]["joints_3d"])
        assert np.abs(png - jpg).max() > 1e-2  # mirrored photo: another result
    # The same image gives the same result in either order, up to the batch's summation order
    # (BLAS kernels differ by CPU; the JSON keeps 6 decimals): far below the mirrored photo's difference.
    first, second = (np.array(outputs[run]["a_png"]["joints_3d"]) for run in (0, 1))
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-4)


def test_export_bad_options(checkpoint, tmp_path, smpl_dir, capsys):
    common = ["export", "--checkpoint", str(checkpoint), "--data-dir", str(smpl_dir), "--format", "torchscript"]
    for extra, expected in (
        (["--out", str(tmp_path)], "exists and is not a regular file"),
        (["--out", str(tmp_path / "missing" / "m.pt")], "does not exist"),
        (["--out", str(tmp_path / "m.pt"), "--image-size", "100000"], "between 32 and 1024"),
    ):
        assert main([*common, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1

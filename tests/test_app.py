"""`fastmetro app`: the default checkpoint, the request service (no browser), and the page in a real
headless Chromium (slow; `make test-app`)."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmetro.errors import FastMetroError


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, smpl_topology):
    """A small untrained FastMETRO-S-R18 on SMPL (narrow transformers), saved with its JSON."""
    import torch

    import fastmetro
    from fastmetro.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = fastmetro.create_model(
        "FastMETRO-S-R18", topology=smpl_topology, model_dims=(64, 32), feedforward_dims=(128, 64), num_heads=2
    )
    return save_checkpoint(model, tmp_path_factory.mktemp("models") / "tiny.safetensors")


@pytest.fixture()
def photo(tmp_path):
    import skimage.data

    path = tmp_path / "uploads" / "astronaut.png"
    path.parent.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


# ----------------------------------------------------------------------------- default checkpoint
def test_default_checkpoint_is_the_newest_demo_model(tmp_path, monkeypatch):
    from fastmetro.weights import find_default_checkpoint

    monkeypatch.setattr("fastmetro.weights.package_folder", lambda: tmp_path / "no_shipped_model")
    with pytest.raises(FastMetroError) as caught:
        find_default_checkpoint([tmp_path / "a", tmp_path / "b"])
    message = str(caught.value)
    assert "--checkpoint" in message and "make demo" in message and "\n" not in message
    made = {}
    for folder, name, age in (("a", "last", 30), ("a", "best", 20), ("b", "last", 10)):
        path = tmp_path / folder / "run" / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        path.with_suffix(".json").write_text("{}")
        os.utime(path, (time.time() - age, time.time() - age))
        made[folder, name] = path
    found = find_default_checkpoint([tmp_path / "a", tmp_path / "b"])
    assert found.path == made["b", "last"] and str(made["b", "last"]) in found.origin and "make demo" in found.origin
    made["b", "last"].with_suffix(".json").unlink()  # weights without their JSON are not a checkpoint
    assert find_default_checkpoint([tmp_path / "a", tmp_path / "b"]).path == made["a", "best"]


def test_default_checkpoint_from_the_current_folder(tmp_path, monkeypatch):
    from fastmetro.weights import find_default_checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FASTMETRO_DEMO_DIR", raising=False)
    monkeypatch.setattr("fastmetro.weights.package_folder", lambda: tmp_path / "no_shipped_model")
    path = tmp_path / "demo_output" / "run" / "last.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    path.with_suffix(".json").write_text("{}")
    assert find_default_checkpoint().path == path


def test_app_command_line(tmp_path, monkeypatch, capsys):
    from fastmetro.cli import build_parser, main

    args = build_parser().parse_args(["app"])
    assert args.host == "127.0.0.1" and args.port == 7860 and args.checkpoint is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FASTMETRO_DEMO_DIR", raising=False)
    monkeypatch.setattr("fastmetro.weights.package_folder", lambda: tmp_path / "no_shipped_model")
    assert main(["app"]) == 2
    assert "no checkpoint given and none found" in capsys.readouterr().err
    for option, expected in (
        (["--port", "0"], "--port must be between 1 and 65535"),
        (["--device", "bogus"], "not a device fastmetro runs on"),
        (["--max-megapixels", "nan"], "--max-megapixels must be a finite number"),
        (["--max-video-frames", "0"], "--max-video-frames must be between"),
        (["--checkpoint", "missing.safetensors"], "missing.safetensors: checkpoint not found"),
    ):
        assert main(["app", *option]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- service (no browser)
def test_labels_and_boxes_text():
    from fastmetro.app.models import checkpoint_labels
    from fastmetro.app.service import parse_boxes

    paths = [
        Path("/home/u/runs/a/last.safetensors"),
        Path("/home/u/runs/b/last.safetensors"),
        Path("/home/u/best.safetensors"),
    ]
    assert checkpoint_labels(paths) == ["a/last.safetensors", "b/last.safetensors", "best.safetensors"]
    assert parse_boxes("  ") is None
    assert parse_boxes("1, 2, 30, 40; 5,6,70,80\n") == [(1.0, 2.0, 30.0, 40.0), (5.0, 6.0, 70.0, 80.0)]
    with pytest.raises(FastMetroError, match="box 2 '5,6,70': expected four numbers"):
        parse_boxes("1,2,30,40; 5,6,70")


@pytest.fixture(scope="module")
def service(tiny_checkpoint, smpl_dir, tmp_path_factory):
    from fastmetro.app.models import ModelSettings, build_slots
    from fastmetro.app.service import AppService

    slots = build_slots([tiny_checkpoint], ModelSettings(image_size=64, data_dirs=(str(smpl_dir),)))
    app_service = AppService(slots, tmp_path_factory.mktemp("work"), max_megapixels=1.0, max_video_frames=4)
    yield app_service
    for slot in slots:
        slot.close()


def assert_private(message: str, *folders: Path) -> None:
    for folder in folders:
        assert str(folder) not in message, message
    assert "Traceback" not in message


def test_service_image_outputs_and_bad_inputs(service, photo, tmp_path):
    label = next(iter(service.slots))
    good = service.analyse_image(label, str(photo), "astronaut.png", "120, 20, 300, 490", joint="Head")
    assert good.ok, good.message
    assert good.message.startswith("**astronaut.png**: 1 person in ")
    assert good.overlay.name == "overlay.png" and good.scene.name == "scene.glb"
    assert Image.open(good.overlay).size == (3 * 512, 512)
    assert [caption for _, caption in good.attention] == [
        "person 0, Head: cross-attention to the image",
        "person 0, Head: self-attention to the mesh",
    ]
    archive = next(path for path in good.downloads if path.suffix == ".zip")
    with zipfile.ZipFile(archive) as bundle:
        names = set(bundle.namelist())
    assert {
        "astronaut/person_00.obj",
        "astronaut/person_00.glb",
        "astronaut/scene.glb",
        "astronaut/overlay.png",
        "astronaut/person_00.json",
    } <= names
    record = json.loads((good.overlay.parent / "person_00.json").read_text())
    assert record["box_xywh"] == [120.0, 20.0, 300.0, 490.0] and record["image"] == "astronaut.png"
    assert_private(good.message, tmp_path, service.work_dir)

    broken = tmp_path / "uploads" / "holiday.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    big = tmp_path / "uploads" / "big.png"
    Image.new("RGB", (1500, 1000)).save(big)  # 1.5 megapixels, over this service's limit of 1
    cases = [
        (str(broken), "holiday.png", "", "holiday.png: "),
        (str(big), "big.png", "", "big.png: the image is 1500x1000 (1.5 megapixels), over the limit of 1 megapixels"),
        (str(photo), "astronaut.png", "900, 900, 10, 10", "astronaut.png: box [900.0, 900.0, 10.0, 10.0] lies outside"),
        (str(photo), "astronaut.png", "1, 2, 3", "box 1 '1, 2, 3': expected four numbers"),
        (None, None, "", "Upload an image"),
    ]
    for upload, name, boxes, expected in cases:
        outcome = service.analyse_image(label, upload, name, boxes)
        assert not outcome.ok and expected in outcome.message, outcome.message
        assert outcome.overlay is None and outcome.scene is None
        assert_private(outcome.message, tmp_path, service.work_dir)
    whole = service.analyse_image(label, str(photo), "astronaut.png", "")  # the CLI's warning, in the page
    assert whole.ok and "no person box given; using the whole image as the box" in whole.message
    again = service.analyse_image(label, str(photo), "astronaut.png", "120, 20, 300, 490")
    assert again.ok and again.overlay.is_file()


def test_service_video(service, tmp_path):
    import imageio.v3 as iio

    frames = np.random.default_rng(0).integers(0, 255, (6, 96, 128, 3), dtype=np.uint8)
    clip = tmp_path / "clip.mp4"
    iio.imwrite(clip, frames, plugin="pyav", codec="libx264", fps=5)
    seen = []
    outcome = service.analyse_video(
        next(iter(service.slots)),
        str(clip),
        "clip.mp4",
        "10, 10, 60, 70",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert outcome.ok, outcome.message
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # the service's limit is 4 frames
    assert "only the first 4 of 6 frames" in outcome.message
    assert "1 track(s)" in outcome.message  # the same box in every frame: one person, tracked
    written = iio.imread(outcome.video, plugin="pyav")
    assert written.shape == (4, 96, 128, 3)  # the tracks over each frame, at the frame's size
    assert outcome.video.name == "overlay.mp4"
    with zipfile.ZipFile(outcome.downloads[1]) as bundle:
        names = bundle.namelist()
        record = json.loads(bundle.read("clip/track_00/frame_000003.json"))
    assert {"clip/overlay.mp4", "clip/tracks.json", "clip/track_00/frame_000000.json"} <= set(names)
    assert record["track_id"] == 0 and record["frame"] == 3 and record["smoothed"]["mode"] == "offline"

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    failed = service.analyse_video(next(iter(service.slots)), str(broken), "broken.mp4")
    assert not failed.ok and failed.message.startswith("broken.mp4: cannot read video"), failed.message
    assert_private(failed.message, tmp_path)


def test_service_live(service):
    """Webcam frames through the tracker: the whole frame is the person (no detector here), a
    track is born on the third frame and keeps its id; the rate is on the message."""
    label = next(iter(service.slots))
    frames = np.random.default_rng(1).integers(0, 255, (5, 96, 128, 3), dtype=np.uint8)
    image, message, session = service.live_frame(label, None, None)
    assert image is None and "Start the webcam" in message and session is None
    seen = []
    for frame in frames:
        image, message, session = service.live_frame(label, frame, session)
        assert image.shape == frame.shape and image.dtype == np.uint8
        seen.append(message)
    assert "tracks: none yet (1 new)" in seen[0] and "tracks: 0" in seen[2] and "tracks: 0" in seen[4], seen
    assert session.tracker.frames == 5 and session.tracker.fps > 0
    assert set(session.tracker.tracker.tracks) == {0}
    other, _, bad = service.live_frame("no such model", frames[0], session)
    assert other is None and bad is None


# ----------------------------------------------------------------------------- the page in Chromium
def browser_or_skip():
    pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")
    pytest.importorskip("selenium", reason="selenium (test extra) is not installed")
    from app_browser import find_browser

    browser, driver = find_browser()
    if browser is None or driver is None:
        pytest.skip(
            "chromium / chromedriver not found: `make browser-deps` installs Debian's chromium and chromium-driver"
        )


@pytest.mark.slow
def test_page_in_a_real_browser(tiny_checkpoint, smpl_dir, photo, tmp_path):
    browser_or_skip()
    import skimage.data

    from app_browser import AppProcess, Page, quit_browser, start_browser

    app = AppProcess(
        ["--checkpoint", str(tiny_checkpoint), "--data-dir", str(smpl_dir), "--image-size", "64"], tmp_path / "app.log"
    )
    session = None
    try:
        app.wait_ready()
        assert f"http://127.0.0.1:{app.port}" in app.log  # localhost by default
        session = start_browser()
        page = Page(session, app.url)
        page.set_image(photo)
        page.set_boxes("120, 20, 300, 490")
        page.choose_joint("Head")
        status, _ = page.run_image()
        assert status.startswith("astronaut.png: 1 person in "), status
        assert any("overlay.png" in src for src in page.overlay_sources())
        assert page.viewer_canvases() == 1  # the 3D viewer of scene.glb...
        assert page.viewer_drawn_pixels() > 100  # ...showing the mesh
        assert page.attention_images() == 2  # the Head's cross- and self-attention
        downloads = page.text("#downloads").replace("\n", "")  # the page breaks "name\n.suffix"
        assert "person_00.obj" in downloads and "fastmetro_astronaut.zip" in downloads, downloads
        if os.environ.get("FASTMETRO_APP_SCREENSHOT"):
            page.full_page_screenshot(os.environ["FASTMETRO_APP_SCREENSHOT"])

        broken = tmp_path / "uploads" / "notes.png"
        broken.write_text("this is not an image")
        page.set_image(broken)
        status, _ = page.run_image()
        assert status == "Error: notes.png: not a readable image", status

        second = tmp_path / "uploads" / "cameraman.png"
        Image.fromarray(skimage.data.camera()).save(second)
        page.set_image(second)
        [button for button in page.find("button") if button.text == "Clear boxes"][0].click()
        drawn = page.draw_box((0.1, 0.2), (0.6, 0.9))  # a box drawn by clicking two opposite corners
        x, y, w, h = (float(v) for v in drawn.split(","))
        assert 20 < x < 80 and 70 < y < 140 and 220 < w < 290 and 320 < h < 390, page.boxes_text()  # 512 px image
        status, _ = page.run_image()
        assert status.startswith("cameraman.png: 1 person in "), status
        assert any("overlay.png" in src for src in page.overlay_sources())

        page.set_boxes("")
        page.webcam_snapshot()  # Chromium's fake camera (a test pattern); no box: the detector finds nobody
        status, _ = page.run_image()
        assert "0 people in " in status and "the detector found no person" in status, status
        live = page.live_stream()  # the Live tab: the fake camera's frames streamed through the tracker
        assert "frames/s; tracks: none yet" in live, live  # the test pattern has nobody in it
        assert page.find("#live-output img")
        text = page.body_text()
        assert_private(text, tmp_path, tiny_checkpoint.parent, Path.home())
        assert "/tmp/" not in text
        assert app.process.poll() is None  # still serving
    finally:
        if session is not None:
            quit_browser(session)
        app.stop()


def test_samples(tmp_path):
    from fastmetro.app.samples import bundled_samples, demo_samples

    bundled = bundled_samples(tmp_path / "samples")
    assert [s.path.name for s in bundled] == ["astronaut.png", "cameraman.png"]
    assert Image.open(bundled[1].path).mode == "RGB" and bundled[0].boxes == "120, 20, 300, 490"
    demo = tmp_path / "demo_output"
    (demo / "test_images").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(demo / "test_images" / "test_00.png")
    Image.new("RGB", (32, 32)).save(demo / "test_images" / "test_01.png")  # no box: left out
    (demo / "test_images" / "boxes.json").write_text(json.dumps({"test_00.png": [[1.4, 2, 20, 25.6]]}))
    found = demo_samples(demo, tmp_path / "samples")
    assert [(s.path, s.boxes) for s in found] == [(tmp_path / "samples" / "demo_test_00.png", "1, 2, 20, 26")]
    assert demo_samples(tmp_path / "nothing", tmp_path / "samples") == []


def test_detector_boxes_and_one_request_at_a_time(service, photo, tiny_checkpoint, smpl_dir, tmp_path):
    import threading

    from fastmetro.app.models import ModelSettings, build_slots
    from fastmetro.app.service import AppService
    from fastmetro.inference.detector import Detection

    calls = []
    slots = build_slots([tiny_checkpoint], ModelSettings(image_size=64, data_dirs=(str(smpl_dir),)))
    with_detector = AppService(
        slots,
        tmp_path / "work",
        detector=lambda image: (
            calls.append(image.shape) or [Detection((100, 30, 280, 470), 0.9), Detection((10, 10, 50, 60), 0.8)]
        ),
    )
    try:
        outcome = with_detector.analyse_image(slots[0].label, str(photo), "astronaut.png", "")
        assert outcome.ok and outcome.message.startswith("**astronaut.png**: 2 people"), outcome.message
        assert calls == [(512, 512, 3)]
        typed = with_detector.analyse_image(slots[0].label, str(photo), "astronaut.png", "120, 20, 300, 490")
        assert typed.ok and "1 person" in typed.message and len(calls) == 1  # a typed box wins
    finally:
        slots[0].close()

    # Jobs on one model run one after the other on its thread, whoever submits them.
    slot = next(iter(service.slots.values()))
    spans, lock = [], threading.Lock()

    def job(predictor, pool, index):
        start = time.perf_counter()
        time.sleep(0.05)
        with lock:
            spans.append((start, time.perf_counter(), threading.current_thread().name))

    threads = [threading.Thread(target=slot.run, args=(job, i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans.sort()
    assert len(spans) == 4 and len({name for *_, name in spans}) == 1
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:]))  # no overlap


def test_model_slot_says_what_it_holds(service):
    slot = next(iter(service.slots.values()))
    assert slot.is_hand is False  # the SMPL body checkpoint (the page offers the hand option only for hands)
    assert "Head" in slot.joint_names


def test_app_accepts_default_as_a_checkpoint_name():
    from argparse import Namespace

    from fastmetro.app.commands import checkpoints_from_args
    from fastmetro.weights import shipped_checkpoint

    assert checkpoints_from_args(Namespace(checkpoint=["default"])) == [shipped_checkpoint().path]


def test_service_flip_test_box(service, photo):
    """The Image tab's "Flip test" box reaches the predictor for that request only."""
    label = next(iter(service.slots))

    def joints_2d(**options):
        outcome = service.analyse_image(label, str(photo), "astronaut.png", "120, 20, 300, 490", **options)
        assert outcome.ok, outcome.message
        person = next(path for path in outcome.downloads if path.name == "person_00.json")
        return np.asarray(json.loads(person.read_text())["joints_2d"])

    plain, flipped = joints_2d(), joints_2d(flip_test=True)
    assert not np.allclose(plain, flipped, atol=0.5)  # an untrained network is no mirror of itself
    assert np.allclose(joints_2d(), plain)  # the next request is plain again
    refused = service.analyse_image(label, str(photo), "astronaut.png", "", joint="Head", flip_test=True)
    assert not refused.ok and "flip test and attention maps cannot be combined" in refused.message


def test_service_rig_downloads_with_the_default_model(photo, tmp_path, service):
    """The Image tab's "Animatable" box: the shipped (Anny) model's people as rigged glb + BVH."""
    from fastmetro.app.models import ModelSettings, build_slots
    from fastmetro.app.service import AppService
    from fastmetro.weights import find_default_checkpoint

    slots = build_slots([find_default_checkpoint().path], ModelSettings())
    try:
        app = AppService(slots, tmp_path / "work", max_megapixels=1.0)
        label = next(iter(app.slots))
        outcome = app.analyse_image(label, str(photo), "astronaut.png", "120, 20, 300, 490", rig=True)
        assert outcome.ok, outcome.message
        names = {path.name for path in outcome.downloads}
        assert {"person_00_rig.glb", "person_00.bvh", "person_00_rig.json"} <= names
    finally:
        for slot in slots:
            slot.close()
    # A SMPL-topology model without an SMPL file: the page says what is missing, in one line.
    refused = service.analyse_image(next(iter(service.slots)), str(photo), "astronaut.png", "", rig=True)
    assert not refused.ok and "SMPL/MANO model file" in refused.message and "\n" not in refused.message

"""Fuzz: the image and video readers of ``fastmetro infer`` and the annotation records of
``fastmetro data convert``.

A damaged image or video is one line naming it; an accepted one is (H, W, 3) uint8. ``data convert``
either refuses a record with one line naming the annotation file and the record, or writes a shard
that ``data check`` finds wholly good (convert accepts nothing that check would refuse).
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from fastmetro.data.check import check_dataset
from fastmetro.data.convert import convert, read_annotations
from fastmetro.inference.images import iter_video, load_image
from fuzz_helpers import expect_clean, expect_error, expect_ok, flip_bytes, jpeg_bytes, png_bomb, png_bytes


def assert_rgb8(pixels) -> None:
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.shape[0] > 0 and pixels.shape[1] > 0


def pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    stream = io.BytesIO()
    image.save(stream, fmt, **kwargs)
    return stream.getvalue()


def gradient(mode: str = "RGB", size=(40, 30)) -> Image.Image:
    array = (np.linspace(0, 255, size[0] * size[1] * 3) % 256).astype(np.uint8).reshape(size[1], size[0], 3)
    return Image.fromarray(array).convert(mode)


# ---------------------------------------------------------------------------- still images
@pytest.mark.parametrize(
    "name, data",
    [
        ("empty.jpg", b""),
        ("text.png", b"hello, not an image\n"),
        ("random.jpg", np.random.default_rng(0).bytes(2000)),
        ("truncated.jpg", jpeg_bytes()[:-200]),
        ("half.jpg", jpeg_bytes()[: len(jpeg_bytes()) // 2]),
        ("truncated.png", png_bytes()[:-30]),
        ("bomb.png", png_bomb(20000, 20000)),
        (
            "huge-header.png",
            png_bomb(1, 1).replace(b"\x00\x00\x00\x01\x00\x00\x00\x01", b"\x7f\xff\xff\xff\x7f\xff\xff\xff", 1),
        ),
        ("bad-crc.png", png_bytes()[:40] + bytes([png_bytes()[40] ^ 0xFF]) + png_bytes()[41:]),
    ],
)
def test_damaged_image_is_one_line(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    expect_error(load_image, path, names=(name,))


def test_missing_file_and_folder_are_one_line(tmp_path):
    expect_error(load_image, tmp_path / "nope.jpg", names=("nope.jpg",))
    (tmp_path / "dir.jpg").mkdir()
    expect_error(load_image, tmp_path / "dir.jpg", names=("dir.jpg",))


def test_broken_exif_is_one_line_or_ignored(tmp_path):
    good = jpeg_bytes()
    exif = (
        b"Exif\x00\x00"
        + b"MM\x00\x2a\x00\x00\x00\x08"
        + b"\x00\x01"
        + b"\x01\x12\x00\x03\xff\xff\xff\xff"
        + b"\xff" * 8
    )
    segment = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    path = tmp_path / "exif.jpg"
    path.write_bytes(good[:2] + segment + good[2:])
    status, pixels = expect_clean(load_image, path, names=("exif.jpg",))
    if status == "ok":
        assert_rgb8(pixels)


@pytest.mark.parametrize(
    "mode, fmt",
    [
        ("L", "PNG"),
        ("1", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
        ("I", "TIFF"),
        ("F", "TIFF"),
        ("CMYK", "JPEG"),
        ("LAB", "TIFF"),
        ("RGB", "GIF"),
        ("RGB", "BMP"),
        ("RGB", "WEBP"),
        ("YCbCr", "JPEG"),
    ],
)
def test_every_pixel_format_is_rgb8_or_one_line(tmp_path, mode, fmt):
    image = (
        gradient("RGB").convert(mode)
        if mode not in ("I;16", "I", "F")
        else Image.fromarray(
            np.asarray(gradient("L"), dtype={"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]) * 3
        )
    )
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(pil_bytes(image, fmt))
    status, pixels = expect_clean(load_image, path, names=(path.name,))
    if status == "ok":
        assert_rgb8(pixels)
        assert pixels.shape[:2] == (30, 40)


def test_float_image_with_nan_and_inf(tmp_path):
    values = np.full((8, 8), np.nan, np.float32)
    values[0, 0] = np.inf
    path = tmp_path / "nan.tiff"
    Image.fromarray(values).save(path)
    status, pixels = expect_clean(load_image, path, names=("nan.tiff",))
    if status == "ok":
        assert_rgb8(pixels)


@given(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=6),
    st.sampled_from(["png", "jpeg", "gif", "bmp", "tiff", "webp"]),
)
def test_flipped_bytes_in_an_image(tmp_path_factory, positions, fmt):
    data = png_bytes() if fmt == "png" else jpeg_bytes() if fmt == "jpeg" else pil_bytes(gradient(), fmt.upper())
    path = tmp_path_factory.mktemp("img") / f"x.{fmt}"
    path.write_bytes(flip_bytes(data, positions))
    status, pixels = expect_clean(load_image, path, names=(path.name,))
    if status == "ok":
        assert_rgb8(pixels)


@given(st.integers(1, 10**6))
def test_truncated_images_are_refused(tmp_path_factory, cut):
    data = jpeg_bytes() if cut % 2 else png_bytes()
    path = tmp_path_factory.mktemp("img") / "x.img"
    path.write_bytes(data[: cut % (len(data) - 10)])
    expect_error(load_image, path, names=("x.img",))


# ---------------------------------------------------------------------------- videos
def make_video(path, frames: int = 4) -> bytes:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def read_video(path) -> list:
    frames = list(iter_video(path))
    for frame in frames:
        assert_rgb8(frame.pixels)
    return frames


def test_good_video_reads(tmp_path):
    make_video(tmp_path / "v.mp4")
    assert len(expect_ok(read_video, tmp_path / "v.mp4")) == 4


def make_audio_only(path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for index in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("kind", ["empty", "text", "random", "truncated", "audio-only", "missing", "header-only"])
def test_damaged_video_is_one_line(tmp_path, kind):
    path = tmp_path / "v.mp4"
    good = make_video(tmp_path / "good.mp4")
    data = {
        "empty": b"",
        "text": b"not a video\n" * 10,
        "random": np.random.default_rng(1).bytes(5000),
        "truncated": good[: len(good) // 3],
        "header-only": good[:64],
    }.get(kind)
    if kind == "audio-only":
        make_audio_only(path)
    elif data is not None:
        path.write_bytes(data)
    expect_error(read_video, path, names=("v.mp4",))


@given(st.lists(st.integers(0, 10**5), min_size=1, max_size=6))
def test_flipped_bytes_in_a_video(tmp_path_factory, positions):
    directory = tmp_path_factory.mktemp("video")
    good = make_video(directory / "good.mp4")
    path = directory / "v.mp4"
    path.write_bytes(flip_bytes(good, positions))
    expect_clean(read_video, path, names=("v.mp4",), seconds=30)


# ---------------------------------------------------------------------------- data convert records
@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(60, 80))
    (folder / "b.jpg").write_bytes(jpeg_bytes(60, 80))
    (folder / "bad.png").write_bytes(b"not an image")
    return folder


def convert_records(tmp_path, images, records) -> object:
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps(records))
    yaml_path = convert(images, annotations, tmp_path / "out")
    report = check_dataset(yaml_path)
    if not report.ok:
        pytest.fail(f"[silent] convert wrote rows that data check refuses: {report.bad_rows}")
    return report


GOOD_RECORD = {
    "file": "a.png",
    "bbox": [10, 10, 40, 40],
    "joints_2d": [[20, 20]] * 14,
    "joints_3d": [[0.1, 0.2, 3.0]] * 14,
}


def test_good_records_convert_and_check(tmp_path, images):
    report = expect_ok(convert_records, tmp_path, images, [GOOD_RECORD, {**GOOD_RECORD, "file": "b.jpg"}])
    assert report.num_rows == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"center": [1, 2, 3], "scale": 1.0},
        {"center": ["a", "b"], "scale": 1.0},
        {"center": [1, 2], "scale": [1, 2]},
        {"center": [1, 2], "scale": "big"},
        {"bbox": [1, 2, 3]},
        {"bbox": ["x", 1, 2, 3]},
        {"bbox": [0, 0, math.nan, 5]},
        {"bbox": [0, 0, 1e-9, 1e-9]},
        {"bbox": [0, 0, 1e308, 1e308]},
        {"joints_2d": [[1, 2], [3]]},
        {"joints_2d": "none"},
        {"joints_2d": [[1, 2, 3, 4]]},
        {"joints_2d": [[1e300, 2]] * 14},
        {"joints_3d": [[0.1, 0.2]] * 14},
        {"joints_3d": [[math.inf, 0, 0]] * 14},
        {"pose": ["a"] * 72, "betas": [0] * 10},
        {"pose": [0] * 72},
        {"pose": [0] * 30, "betas": [0] * 10},
        {"pose": [math.nan] * 72, "betas": [0] * 10},
        {"vertices": "none"},
        {"vertices": [[0, 0]]},
        {"vertices": [[math.nan, 0, 0]]},
        {"camera": "pinhole"},
        {"camera": {"fx": -1, "fy": 1, "cx": 0, "cy": 0}},
        {"joints_format": "j99"},
        {"gender": {"x": 1}},
        {"key": "a\tb"},
        {"file": "missing.png"},
        {"file": "bad.png"},
        {"file": 5},
        {"file": None},
        {"file": ["a.png"]},
    ],
)
def test_bad_record_is_one_line_naming_the_record(tmp_path, images, changes):
    record = {**GOOD_RECORD, **changes}
    if changes.get("pose") is not None and "betas" not in changes:
        record.pop("betas", None)
    expect_error(
        convert_records,
        tmp_path,
        images,
        [GOOD_RECORD, {**record, "key": record.get("key", "k1")}],
        names=("ann.json", "record 1"),
    )
    assert not (tmp_path / "out" / "train.yaml").exists()


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"images": 5}',
        "[1, 2]",
        "null",
        '{"images": [{"file": "a.png"}], "x": NaN}',
    ],
)
def test_bad_annotation_json(tmp_path, images, text):
    path = tmp_path / "ann.json"
    path.write_text(text)
    status, result = expect_clean(read_annotations, path, names=("ann.json",))
    if status == "ok":
        expect_clean(convert, images, path, tmp_path / "out", names=("ann.json",))


def test_annotation_json_of_binary_bytes(tmp_path):
    path = tmp_path / "ann.json"
    path.write_bytes(b"\xff\xfe\x00[")
    expect_error(read_annotations, path, names=("ann.json",))


def record_values():
    scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=4)
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=15) | st.dictionaries(st.sampled_from(["fx", "fy", "cx", "cy"]), inner, max_size=4)
        ),
        max_leaves=40,
    )


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "center",
                "scale",
                "bbox",
                "joints_2d",
                "joints_3d",
                "pose",
                "betas",
                "vertices",
                "camera",
                "joints_format",
                "gender",
                "key",
            ]
        ),
        record_values(),
        min_size=1,
        max_size=3,
    )
)
def test_any_record_is_refused_or_checks_clean(tmp_path_factory, images_for_hypothesis, changes):
    directory = tmp_path_factory.mktemp("convert")
    record = {**GOOD_RECORD, **changes}
    expect_clean(convert_records, directory, images_for_hypothesis, [record], names=("ann.json",))


@pytest.fixture(scope="module")
def images_for_hypothesis(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "a.png").write_bytes(png_bytes(60, 80))
    return folder

"""Fuzz cases for checkpoints (the ModelSpec JSON schema and the weights) and for `fastmetro
infer` options, boxes files and output naming: each a one-line error (or a documented
acceptance), never a traceback."""

from __future__ import annotations

import json

import pytest
import torch

from fuzz_helpers import expect_cli_error, expect_error, png_bytes, run_cli, tiny_model_assets

MODEL = "FastMETRO-S-R18"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pending")
    topology_path, checkpoint = tiny_model_assets(directory, MODEL)
    images = directory / "images"
    images.mkdir()
    (images / "a.png").write_bytes(png_bytes(96, 96, seed=1))
    return directory, topology_path, checkpoint, images


def damaged_checkpoint(assets, tmp_path, change):
    """A copy of the tiny checkpoint whose JSON is changed by ``change(config)`` (in place)."""
    import shutil

    _, _, checkpoint, _ = assets
    copy = tmp_path / "model.safetensors"
    shutil.copy(checkpoint, copy)
    config = json.loads(checkpoint.with_suffix(".json").read_text())
    change(config)
    copy.with_suffix(".json").write_text(json.dumps(config))
    return copy


def _set(path, value):
    def change(config):
        node = config
        for part in path[:-1]:
            node = node[part]
        if value is DELETE:
            node.pop(path[-1])
        else:
            node[path[-1]] = value

    return change


DELETE = object()

CHECKPOINT_JSON = [
    pytest.param(("topology",), "anny", id="topology-as-string"),
    pytest.param(("flavor",), DELETE, id="no-flavor"),
    pytest.param(("overrides", "num_heads"), 0, id="num-heads-0"),
    pytest.param(("overrides", "model_dims"), ["wide", "narrow"], id="model-dims-words"),
    pytest.param(("overrides",), "none", id="overrides-string"),
    pytest.param(("name",), 5, id="name-number"),
    pytest.param(("topology", "level_vertex_counts"), "many", id="counts-string"),
    pytest.param(("version",), 99, id="future-version"),
    pytest.param(("name",), DELETE, id="no-name"),
]


@pytest.mark.parametrize("path, value", CHECKPOINT_JSON)
def test_damaged_checkpoint_json_in_eval_is_one_line(assets, tmp_path, capsys, path, value):
    from data_helpers import write_shard

    checkpoint = damaged_checkpoint(assets, tmp_path, _set(path, value))
    data = write_shard(tmp_path / "data", "s", 2)
    _, topology_path, _, _ = assets
    expect_cli_error(
        [
            "eval",
            "--checkpoint",
            checkpoint,
            "--data",
            data,
            f"model.topology={topology_path}",
            "data.image_size=64",
            "data.num_workers=0",
            "--json",
        ],
        capsys,
        names=("model.json",),
    )


@pytest.mark.parametrize("path, value", CHECKPOINT_JSON)
def test_damaged_checkpoint_json_in_create_model(assets, tmp_path, path, value):
    import fastmetro

    checkpoint = damaged_checkpoint(assets, tmp_path, _set(path, value))
    _, topology_path, _, _ = assets
    expect_error(fastmetro.create_model, checkpoint=checkpoint, topology=topology_path, names=("model",))


def test_all_nan_weights_are_one_line_naming_the_tensor(assets, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    _, topology_path, checkpoint, images = assets
    state = {
        key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
        for key, value in load_file(str(checkpoint)).items()
    }
    copy = tmp_path / "model.safetensors"
    save_file(state, str(copy))
    copy.with_suffix(".json").write_text(checkpoint.with_suffix(".json").read_text())
    expect_cli_error(
        [
            "infer",
            images / "a.png",
            "--checkpoint",
            copy,
            "--out",
            tmp_path / "out",
            "--topology",
            topology_path,
            "--image-size",
            "64",
            "--no-overlay",
        ],
        capsys,
        names=("model.safetensors",),
        match="NaN|non-finite",
    )


# ---------------------------------------------------------------------------- fastmetro infer options
def infer_args(assets, tmp_path, *extra, inputs=None):
    _, topology_path, checkpoint, images = assets
    return [
        "infer",
        *(inputs or [images / "a.png"]),
        "--checkpoint",
        checkpoint,
        "--out",
        tmp_path / "out",
        "--topology",
        topology_path,
        "--image-size",
        "64",
        "--no-overlay",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["--focal-length", "nan"], id="focal-nan"),
        pytest.param(["--focal-length", "-1000"], id="focal-negative"),
        pytest.param(["--focal-length", "0"], id="focal-zero"),
        pytest.param(["--bbox", "0,0,1e308,1e308"], id="bbox-huge"),
        pytest.param(["--bbox", "0,0,1e-9,1e-9"], id="bbox-tiny"),
        pytest.param(["--bbox", "0,0,nan,10"], id="bbox-nan"),  # today: exit 1, "1 input(s) failed"
        pytest.param(["--bbox", "1,2,3"], id="bbox-three"),
        pytest.param(["--device", "bogus"], id="device-bogus"),
        pytest.param(["--batch-size", "0"], id="batch-0"),
        pytest.param(["--image-size", "0"], id="image-size-0"),
        pytest.param(["--box-expand", "-1"], id="box-expand-negative"),
        pytest.param(["--box-expand", "nan"], id="box-expand-nan"),
        pytest.param(["--max-side", "0"], id="max-side-0"),
    ],
)
def test_bad_infer_option_is_one_line(assets, tmp_path, capsys, extra):
    expect_cli_error(infer_args(assets, tmp_path, *extra), capsys)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 100000, id="deep"),
        pytest.param('{"a.png": [[0, 0, "w", 10]]}', id="words"),
        pytest.param('{"a.png": [[0, 0, NaN, 10]]}', id="nan"),
        pytest.param(b"\xff\xfe".decode("latin-1"), id="binary"),
    ],
)
def test_damaged_boxes_json_is_one_line(assets, tmp_path, capsys, text):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(text)
    expect_cli_error(infer_args(assets, tmp_path, "--boxes", boxes), capsys, names=("boxes.json",))


def test_two_inputs_with_one_stem_get_distinct_output_folders(assets, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(96, 96, seed=1))
    from fuzz_helpers import jpeg_bytes

    (folder / "a.jpg").write_bytes(jpeg_bytes(96, 96, seed=2))
    code, out, err = run_cli(infer_args(assets, tmp_path, "--bbox", "10,10,60,60", inputs=[folder]), capsys)
    assert code == 0, err
    folders = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert len(folders) == 2, f"[silent] one result replaced the other: {folders}"

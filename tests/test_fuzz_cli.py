"""Fuzz at the command line: damaged inputs to `data check`, `data convert`, `topology info`,
`eval` and `train` end with exit status 2 and exactly one ``error: ...`` line, never a traceback
(bad dataset rows in `data check`: exit 1 and the row listed). Errors raised inside DataLoader worker
processes must arrive as that same one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_helpers import replace_row, write_shard
from fuzz_helpers import expect_cli_error, npy_bytes, object_npy_payload, run_cli, tiny_model_assets
from train_helpers import TINY_MODEL_OVERRIDES

MODEL = "FastMETRO-S-R18"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny topology file, a 4-row shard with vertices and a checkpoint of a tiny model on it."""
    directory = tmp_path_factory.mktemp("cli")
    topology_path, checkpoint = tiny_model_assets(directory, MODEL)
    return directory, topology_path, checkpoint


@pytest.fixture
def shard(tmp_path):
    return write_shard(tmp_path / "data", "s", 4, with_vertices=True)


def eval_args(assets, data, workers: int = 1):
    _, topology_path, checkpoint = assets
    return [
        "eval",
        "--checkpoint",
        checkpoint,
        "--data",
        data,
        f"model.topology={topology_path}",
        "data.image_size=64",
        "data.val_batch_size=2",
        f"data.num_workers={workers}",
        "--json",
    ]


def train_args(assets, data, tmp_path, *overrides, workers: int = 0):
    _, topology_path, _ = assets
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"name": MODEL, "topology": str(topology_path), "overrides": TINY_MODEL_OVERRIDES},
                "data": {
                    "train": str(data),
                    "batch_size": 2,
                    "image_size": 64,
                    "num_workers": workers,
                    "augment": False,
                },
                "train": {
                    "steps": 1,
                    "output_dir": str(tmp_path / "run"),
                    "progress": False,
                    "tensorboard": False,
                    "device": "cpu",
                },
            }
        )
    )
    return ["train", config, *overrides]


def test_eval_and_train_work_on_the_good_shard(assets, shard, tmp_path, capsys):
    code, out, err = run_cli(eval_args(assets, shard, workers=0), capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["num_samples"] == 4
    code, out, err = run_cli(train_args(assets, shard, tmp_path), capsys)
    assert code == 0, err


# ---------------------------------------------------------------------------- damaged data, three commands
def damage_vertices_shape(shard):
    (shard.parent / "s.vertices.npy").write_bytes(npy_bytes(np.zeros((4, 8), np.float32)))
    return "s.vertices.npy"


def damage_vertices_pickle(shard):
    (shard.parent / "s.vertices.npy").write_bytes(object_npy_payload(shard.parent / "PWNED"))
    return "s.vertices.npy"


def damage_vertices_random(shard):
    (shard.parent / "s.vertices.npy").write_bytes(np.random.default_rng(0).bytes(300))
    return "s.vertices.npy"


def damage_lineidx(shard):
    (shard.parent / "s.img.lineidx").write_text("0\n99999999999999999999\n1\n2\n")
    return "s.img.lineidx"


def damage_yaml(shard):
    shard.write_bytes(b"\xff\xfe\x00binary\x80\n")
    return "s.yaml"


def damage_linelist(shard):
    (shard.parent / "s.linelist.tsv").write_bytes(b"0\n\xff\xfe\n")
    with open(shard, "a") as handle:
        handle.write("linelist: s.linelist.tsv\n")
    return "s.linelist.tsv"


DATASET_DAMAGE = [
    damage_vertices_shape,
    damage_vertices_pickle,
    damage_vertices_random,
    damage_lineidx,
    damage_yaml,
    damage_linelist,
]


@pytest.mark.parametrize("damage", DATASET_DAMAGE)
def test_data_check_on_a_damaged_dataset(shard, capsys, damage):
    name = damage(shard)
    expect_cli_error(["data", "check", shard, "--quiet"], capsys, names=(name,))
    assert not (shard.parent / "PWNED").exists()


# The vertices file is opened by the first sample, inside a DataLoader worker: those cases run eval
# with a worker process; the others fail while the dataset is opened, in the main process.
IN_WORKER = (damage_vertices_shape, damage_vertices_pickle, damage_vertices_random)


@pytest.mark.parametrize("damage", DATASET_DAMAGE)
def test_eval_on_a_damaged_dataset(assets, shard, capsys, damage):
    name = damage(shard)
    expect_cli_error(eval_args(assets, shard, workers=1 if damage in IN_WORKER else 0), capsys, names=(name,))
    assert not (shard.parent / "PWNED").exists()


@pytest.mark.parametrize(
    "damage", [damage_vertices_shape, pytest.param(damage_vertices_pickle, marks=pytest.mark.slow), damage_lineidx]
)
def test_train_on_a_damaged_dataset(assets, shard, tmp_path, capsys, damage):
    name = damage(shard)
    expect_cli_error(
        train_args(assets, shard, tmp_path, workers=1 if damage in IN_WORKER else 0), capsys, names=(name,)
    )


LABEL_DAMAGE = [
    ({"has_vertices": "yes"}, "has_vertices"),
    ({"has_vertices": [1]}, None),  # the released spelling: accepted
    ({"has_smpl": float("inf")}, "has_smpl"),
    ({"vertices_row": 1.5}, "vertices_row"),
    ({"scale": "0.3"}, "scale"),
]


def set_label(shard, row: int, fields: dict):
    tsv = shard.parent / "s.label.tsv"
    line = tsv.read_bytes().splitlines()[row]
    key, text = line.split(b"\t", 1)
    label = {**json.loads(text)[0], **fields}
    replace_row(tsv, row, key + b"\t" + json.dumps([label]).encode() + b"\n")


@pytest.mark.parametrize("fields, word", LABEL_DAMAGE)
def test_data_check_lists_a_bad_label_row(shard, capsys, fields, word):
    set_label(shard, 1, fields)
    code, out, err = run_cli(["data", "check", shard, "--quiet"], capsys)
    if word is None:
        assert code == 0, f"[refused] {out} {err}"
        return
    if code != 1 or "bad row 's_1'" not in out or word not in out or "Traceback" in err:
        pytest.fail(
            f"[{'traceback' if 'Traceback' in err or code not in (0, 1) else 'silent'}] exit {code}: {out} {err}"[:600]
        )


@pytest.mark.parametrize("fields, word", [item for item in LABEL_DAMAGE if item[1]])
def test_eval_stops_on_a_bad_label_row_with_one_line(assets, shard, capsys, fields, word):
    set_label(shard, 1, fields)
    workers = 1 if word == "has_vertices" else 0  # one case through a worker process
    expect_cli_error(eval_args(assets, shard, workers=workers), capsys, names=("s.label.tsv", "s_1", word))


# ---------------------------------------------------------------------------- train config and overrides
@pytest.mark.parametrize(
    "override, word",
    [
        ("model.overrides.num_heads=0", "num_heads"),
        ("train.log_every=0", "log_every"),
        ("data.augment_overrides.bogus=1", "bogus"),
        ("loss.level_weights=[1.0]", "level_weights"),
        ("loss.edge_level=5", "edge_level"),
        ("optim.lr=.nan", "lr"),
        ("data.num_workers=-1", "num_workers"),
        ("train.device=bogus", "device"),
    ],
)
def test_train_refuses_a_bad_override_with_one_line(assets, shard, tmp_path, capsys, override, word):
    expect_cli_error(train_args(assets, shard, tmp_path, override), capsys, names=(word,))
    assert not (tmp_path / "run" / "last.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_cuda_without_a_gpu_is_one_line(assets, shard, tmp_path, capsys):
    expect_cli_error(train_args(assets, shard, tmp_path, "train.device=cuda"), capsys, names=("cuda",))


def test_train_with_a_binary_config(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    expect_cli_error(["train", config], capsys, names=("c.yaml",))


def test_train_on_an_empty_dataset_is_one_line(assets, shard, tmp_path, capsys):
    (shard.parent / "s.linelist.tsv").write_text("")
    with open(shard, "a") as handle:
        handle.write("linelist: s.linelist.tsv\n")
    expect_cli_error(train_args(assets, shard, tmp_path), capsys, names=("s.yaml",))


@pytest.mark.parametrize("device", ["bogus", "cuda:99" if not torch.cuda.is_available() else "cuda:4096"])
def test_eval_with_a_bad_device_is_one_line(assets, shard, capsys, device):
    expect_cli_error(eval_args(assets, shard) + [f"train.device={device}"], capsys, names=(device,))


# ---------------------------------------------------------------------------- other readers
def test_topology_info_on_damaged_files(tmp_path, capsys):
    path = tmp_path / "t.npz"
    for data in (b"", np.random.default_rng(0).bytes(300), npy_bytes(np.zeros(3))):
        path.write_bytes(data)
        expect_cli_error(["topology", "info", path], capsys, names=("t.npz",))


def test_data_convert_with_damaged_annotations(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    from fuzz_helpers import png_bytes

    (images / "a.png").write_bytes(png_bytes(60, 80))
    annotations = tmp_path / "ann.json"
    for text in (
        '[{"file": "a.png", "center": [1, 2, 3], "scale": 1}]',
        "[" * 100000,
        '[{"file": "a.png", "joints_2d": [[1, 2], [3]]}]',
    ):
        annotations.write_text(text)
        expect_cli_error(
            ["data", "convert", "--images", images, "--annotations", annotations, "--out", tmp_path / "out"],
            capsys,
            names=("ann.json",),
        )


@pytest.mark.parametrize(
    "option", [["--bbox-scale", "nan"], ["--bbox-scale", "-1"], ["--name", "a/b"], ["--name", ""], ["--out", "FILE"]]
)
def test_data_convert_with_bad_options(tmp_path, capsys, option):
    from fuzz_helpers import png_bytes

    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(png_bytes(60, 80))
    annotations = tmp_path / "ann.json"
    annotations.write_text('[{"file": "a.png"}]')
    (tmp_path / "FILE").write_text("x")
    option = [str(tmp_path / "FILE") if item == "FILE" else item for item in option]
    out = [] if "--out" in option else ["--out", tmp_path / "out"]
    expect_cli_error(["data", "convert", "--images", images, "--annotations", annotations, *out, *option], capsys)


# ---------------------------------------------------------------------------- as a real process
@pytest.mark.parametrize(
    "case", ["binary-yaml", pytest.param("bad-override", marks=pytest.mark.slow), "pickled-vertices"]
)
def test_real_process_prints_one_error_line_and_exits_2(assets, shard, tmp_path, case):
    if case == "binary-yaml":
        damage_yaml(shard)
        args = ["data", "check", str(shard), "--quiet"]
    elif case == "bad-override":
        args = [str(a) for a in train_args(assets, shard, tmp_path, "optim.lr=.nan")]
    else:
        damage_vertices_pickle(shard)
        args = [str(a) for a in eval_args(assets, shard, workers=1)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "fastmetro", *args], capture_output=True, text=True, env=env, timeout=300
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if "Traceback" in done.stderr:
        pytest.fail(f"[traceback] {done.stderr[-800:]}")
    if done.returncode != 2 or len([line for line in lines if line.startswith("error: ")]) != 1:
        pytest.fail(f"[message] exit {done.returncode}: {done.stderr[-800:]}")
    assert not (shard.parent / "PWNED").exists()

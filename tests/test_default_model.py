"""The default model: shipped float16 files, found first, loaded into float32 models, refused
clearly when damaged; used by the Predictor, `fastmetro infer` and training when none is given."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fastmetro.errors import FastMetroError
from train_helpers import TINY_MODEL_OVERRIDES


@pytest.fixture(scope="module")
def tiny_model():
    import fastmetro

    torch.manual_seed(0)
    return fastmetro.create_model("FastMETRO-S-R18", topology="anny", image_size=64, **TINY_MODEL_OVERRIDES).eval()


@pytest.fixture(scope="module")
def shipped_folder(tiny_model, tmp_path_factory):
    """A tiny model shipped as the package ships its default (float16 + spec + recipe)."""
    from fastmetro.engine.ship import ship_checkpoint
    from fastmetro.model.checkpoint import save_checkpoint

    source = save_checkpoint(tiny_model, tmp_path_factory.mktemp("run") / "best.safetensors")
    folder = tmp_path_factory.mktemp("weights")
    ship_checkpoint(source, folder, {"model": "FastMETRO-S-R18", "image_size": 64, "seed": 3})
    return folder


@pytest.fixture
def installed(shipped_folder, tmp_path, monkeypatch):
    """A copy of ``shipped_folder`` standing in for the package's own weights folder."""
    import fastmetro.weights

    folder = tmp_path / "package_weights"
    shutil.copytree(shipped_folder, folder)
    monkeypatch.setattr(fastmetro.weights, "package_folder", lambda: folder)
    return folder


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- the files
def test_shipped_files_are_float16_and_load_into_float32(tiny_model, shipped_folder):
    from safetensors.torch import load_file

    from fastmetro.model.factory import load_model
    from fastmetro.weights import shipped_checkpoint

    shipped = shipped_checkpoint(shipped_folder)
    assert shipped.recipe["seed"] == 3 and shipped.recipe["stored_dtype"] == "float16"
    assert shipped.recipe["size_bytes"] == shipped.path.stat().st_size
    stored = load_file(str(shipped.path))
    original = tiny_model.state_dict()
    assert set(stored) == set(original)
    for key, value in stored.items():
        # Floating tensors are halved; integer buffers (BatchNorm counters) keep their type.
        assert value.dtype == (torch.float16 if original[key].is_floating_point() else original[key].dtype), key
    loaded = load_model(shipped.path).eval()
    assert loaded.spec == tiny_model.spec  # same model, same 64 px input
    for key, value in loaded.state_dict().items():
        assert value.dtype == original[key].dtype, key
        if value.is_floating_point():
            assert torch.equal(value, original[key].half().float()), key
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, reference = loaded(images)["fine_vertices"], tiny_model(images)["fine_vertices"]
    # float16 keeps ~3 significant digits: the output moves by a small fraction of its spread.
    assert (ours - reference).abs().max() < 0.05 * reference.std()
    assert not torch.equal(ours, reference)  # it really went through float16


def test_ship_refuses_weights_float16_cannot_hold(tiny_model, tmp_path):
    from fastmetro.engine.ship import ship_checkpoint
    from fastmetro.model.checkpoint import write_checkpoint

    state = {key: value.clone() for key, value in tiny_model.state_dict().items()}
    state["cam_token_embed.weight"] = state["cam_token_embed.weight"] + 1e6  # beyond float16's 65504
    source = write_checkpoint(tmp_path / "big.safetensors", state, tiny_model.spec)
    with pytest.raises(FastMetroError) as error:
        ship_checkpoint(source, tmp_path / "out", {})
    assert "'cam_token_embed.weight' does not fit in float16" in one_line(error)


def _flip_a_byte(folder):
    path = folder / "default.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a weight's bits: still a readable file with finite values
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_flip_a_byte, "weights are damaged (SHA-256 differs"),
        (
            lambda folder: (folder / "default.safetensors").unlink(),
            "default.safetensors: the shipped default model's file is missing",
        ),
        (
            lambda folder: (folder / "default.json").unlink(),
            "default.json: the shipped default model's file is missing",
        ),
        (
            lambda folder: (folder / "default_recipe.json").write_text("{not json"),
            "default_recipe.json: the shipped default model's recipe is damaged",
        ),
        (lambda folder: (folder / "default_recipe.json").write_text("{}"), "has no 'sha256'"),
        (
            lambda folder: (folder / "default.json").write_text('{"format": "fastmetro-checkpoint"}'),
            "default.json: missing field 'version'",
        ),
    ],
)
def test_a_damaged_shipped_model_is_a_one_line_error(installed, damage, expected):
    from fastmetro.model.factory import load_model
    from fastmetro.weights import find_default_checkpoint

    find_default_checkpoint(demo_dirs=[])  # sound before the damage
    damage(installed)
    attempts = [lambda: load_model("default")]
    if "version" not in expected:  # the spec's fields are checked where it is read: by the loader
        attempts.append(lambda: find_default_checkpoint(demo_dirs=[]))
    for attempt in attempts:
        with pytest.raises(FastMetroError) as error:
            attempt()
        assert expected in one_line(error)


# ----------------------------------------------------------------------------- which model is the default
def _demo_checkpoint(folder, tiny_model):
    from fastmetro.model.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, folder / "run" / "last.safetensors")


def test_the_shipped_model_comes_before_demo_output(installed, tiny_model, tmp_path):
    from fastmetro.weights import find_default_checkpoint

    demo = _demo_checkpoint(tmp_path / "demo_output", tiny_model)
    found = find_default_checkpoint([tmp_path / "demo_output"])
    assert found.path == installed / "default.safetensors"
    assert "shipped default model (FastMETRO-S-R18, 64 px" in found.origin and "\n" not in found.origin
    # A package without any shipped file (a build without package data) falls back to `make demo`.
    for path in installed.iterdir():
        path.unlink()
    assert find_default_checkpoint([tmp_path / "demo_output"]).path == demo
    assert find_default_checkpoint([tmp_path / "demo_output"], shipped=None).path == demo
    with pytest.raises(FastMetroError) as error:
        find_default_checkpoint([tmp_path / "nothing"])
    message = one_line(error)
    assert "shipped model" in message and "reinstall fastmetro" in message and "--checkpoint" in message


def test_predictor_without_a_checkpoint_uses_the_default_and_says_so_once(installed, tiny_model, caplog):
    from fastmetro.inference.predictor import Predictor

    with caplog.at_level(logging.INFO, logger="fastmetro.inference"):
        predictor = Predictor()
    said = [record.getMessage() for record in caplog.records if "no checkpoint given" in record.getMessage()]
    assert len(said) == 1 and str(installed / "default.safetensors") in said[0]
    assert predictor.image_size == 64  # the shipped spec's input size
    assert torch.equal(
        predictor.model.state_dict()["cam_token_embed.weight"],
        tiny_model.state_dict()["cam_token_embed.weight"].half().float(),
    )
    with pytest.raises(FastMetroError, match="not both"):
        Predictor(checkpoint=installed / "default.safetensors", model=tiny_model)


def test_infer_without_checkpoint_end_to_end(installed, tmp_path, capsys):
    from fastmetro.cli import main

    image = tmp_path / "person.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["infer", str(image), "--out", str(out), "--bbox", "10,8,60,80"]) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if "no --checkpoint given" in line]
    assert len(said) == 1 and "shipped default model" in said[0]
    person = json.loads((out / "person" / "person_00.json").read_text())
    assert person["box_xywh"] == [10, 8, 60, 80] and len(person["joints_2d"]) == 14
    assert (out / "person" / "overlay.png").is_file() and (out / "person" / "person_00.obj").is_file()


def test_train_starts_from_the_default(installed, tmp_path):
    """``model.checkpoint=default``: the run's initial weights are the shipped ones (in float32)."""
    from fastmetro import topology as topology_module
    from fastmetro.engine.train import model_for_training
    from fastmetro.model.factory import load_model
    from train_helpers import tiny_config

    config = tiny_config(tmp_path / "run", extra=["model.checkpoint=default"])
    model = model_for_training(config, topology_module.load("anny"))
    reference = load_model(installed / "default.safetensors")
    for key, value in model.state_dict().items():
        assert value.dtype == reference.state_dict()[key].dtype and torch.equal(value, reference.state_dict()[key]), key
    config = tiny_config(tmp_path / "run", extra=["model.checkpoint=default", "model.overrides={model_dims: [96, 32]}"])
    with pytest.raises(FastMetroError) as error:  # another architecture cannot start from these weights
        model_for_training(config, topology_module.load("anny"))
    assert "default.safetensors" in one_line(error)


# ----------------------------------------------------------------------------- the real shipped files
def test_the_package_ships_a_checked_default_model_with_its_recipe():
    import fastmetro
    from fastmetro.weights import shipped_checkpoint

    shipped = shipped_checkpoint()  # SHA-256 of the weights against the recipe, spec readable
    recipe = shipped.recipe
    assert shipped.path.stat().st_size < 50e6 and recipe["stored_dtype"] == "float16"
    stages = [f"stage{index}" for index in range(1, 10) if f"stage{index}" in recipe]
    assert len(stages) >= 1 and "stage 1 data" in recipe["commands"]
    assert {f"stage {index}" for index in range(1, len(stages) + 1)} <= set(recipe["commands"])
    assert recipe["stage1"]["config"]["model"]["checkpoint"] is None  # the encoder comes from the asset
    for previous, stage in zip(stages, stages[1:]):  # each stage starts where the one before ended
        start = recipe[previous]["config"]["train"]["output_dir"] + "/last.safetensors"
        assert recipe[stage]["config"]["model"]["checkpoint"] == start, stage
    # Judged on the independent test set (benchmarks/default_v2.py): better than the mean body.
    rows = recipe["benchmark"]["testset"]["rows"]
    assert rows["default"]["pa_mpjpe"] < 0.7 * rows["mean mesh"]["pa_mpjpe"]
    assert rows["default"]["limb_pa_mpjpe"] < rows["BlazePose full (world landmarks)"]["limb_pa_mpjpe"]
    model = fastmetro.load_model("default").eval()
    assert model.spec.name == recipe["model"] == "FastMETRO-S-BPF"
    assert model.spec.input.image_size == recipe["image_size"] == 256 and model.spec.flavor == "paper"
    assert all(p.dtype == torch.float32 and bool(torch.isfinite(p).all()) for p in model.parameters())
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 256, 256))
    assert out["fine_vertices"].shape[-2:] == (model.topology.level_vertex_counts[0], 3)
    assert bool(torch.isfinite(out["fine_vertices"]).all())

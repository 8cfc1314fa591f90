"""ModelSpec and the one loader: the checkpoint JSON schema, format versions, damaged weights,
presets read from official weights, the input size a checkpoint remembers, and the released
SMPL parameter regressor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fastmetro
from fastmetro import FastMetroError
from fastmetro.model.checkpoint import fastmetro_to_official, save_checkpoint
from fastmetro.model.presets import count_parameters
from fastmetro.model.smpl_regressor import project_to_rotation
from fastmetro.model.spec import ModelSpec


@pytest.fixture(scope="module")
def saved(tmp_path_factory, smpl_topology):
    torch.manual_seed(0)
    model = fastmetro.create_model(
        "FastMETRO-S-R18",
        topology=smpl_topology,
        image_size=64,
        model_dims=(64, 32),
        feedforward_dims=(128, 64),
        num_heads=4,
    )
    path = save_checkpoint(model, tmp_path_factory.mktemp("spec") / "model.safetensors")
    return path, json.loads(path.with_suffix(".json").read_text())


def write_json(tmp_path, saved, data, name="case"):
    path, _ = saved
    target = tmp_path / f"{name}.safetensors"
    target.write_bytes(path.read_bytes())
    target.with_suffix(".json").write_text(json.dumps(data) if not isinstance(data, str) else data)
    return target


def test_spec_travels_with_the_model_and_its_checkpoint(saved, smpl_topology):
    path, data = saved
    model = fastmetro.load_model(path, data_dir=smpl_topology and None, topology=smpl_topology)
    assert model.spec == ModelSpec.from_json(data)
    assert model.spec.input.image_size == 64 and model.spec.name == "FastMETRO-S-R18"
    assert dict(model.spec.overrides) == {"model_dims": (64, 32), "feedforward_dims": (128, 64), "num_heads": 4}
    with pytest.raises(TypeError):
        model.spec.overrides["num_heads"] = 8  # frozen


def test_predictor_uses_the_input_size_the_checkpoint_remembers(saved, smpl_topology):
    path, _ = saved
    predictor = fastmetro.Predictor(checkpoint=path, topology=smpl_topology)
    assert predictor.image_size == 64
    assert fastmetro.Predictor(checkpoint=path, topology=smpl_topology, image_size=96).image_size == 96


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(topology="anny"), "field 'topology' must be dict"),
        (lambda d: d.pop("flavor"), "missing field 'flavor'"),
        (lambda d: d.update(flavor="fast"), "field 'flavor' must be one of"),
        (lambda d: d["overrides"].update(num_heads=0), "num_heads must be an integer in 1..1024"),
        (
            lambda d: d["overrides"].update(model_dims=["wide", "narrow"]),
            "model_dims must be a list of positive integers",
        ),
        (lambda d: d["overrides"].update(bogus=1), "unknown FastMETRO config option"),
        (lambda d: d["topology"].update(level_vertex_counts=[6890, 1e15]), "level_vertex_counts"),
        (lambda d: d["topology"].update(num_joints="14"), "'topology.num_joints' must be an integer"),
        (lambda d: d["input"].update(image_size=-3), "input.image_size"),
        (lambda d: d["input"].update(std=[0.2, 0.0, 0.2]), "input.std"),
        (lambda d: d.update(version=1), "format 1 is too old: the weak-perspective camera then applied to the raw"),
        (lambda d: d.update(version=99), "newer than this fastmetro reads"),
        (lambda d: d.update(name="FastMETRO-X-R50"), "unknown model"),
    ],
)
def test_damaged_checkpoint_json_is_one_line_naming_the_file(tmp_path, saved, smpl_topology, change, message):
    data = json.loads(json.dumps(saved[1]))
    change(data)
    path = write_json(tmp_path, saved, data)
    with pytest.raises(FastMetroError, match=message) as error:
        fastmetro.load_model(path, topology=smpl_topology)
    assert str(path.with_suffix("")) in str(error.value) and "\n" not in str(error.value)


def test_not_json_and_not_an_object(tmp_path, saved, smpl_topology):
    for name, text in (("binary", "\udcff\x00garbage"), ("list", "[1, 2]")):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(saved[0].read_bytes())
        path.with_suffix(".json").write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(FastMetroError, match="checkpoint config") as error:
            fastmetro.load_model(path, topology=smpl_topology)
        assert "\n" not in str(error.value)


def test_non_finite_weights_name_the_file_and_tensor(tmp_path, saved, smpl_topology):
    from safetensors.torch import load_file, save_file

    path, data = saved
    tensors = load_file(path)
    tensors["cam_predictor.weight"] = torch.full_like(tensors["cam_predictor.weight"], float("nan"))
    target = tmp_path / "nan.safetensors"
    save_file(tensors, target)
    target.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(FastMetroError, match="'cam_predictor.weight' has non-finite values") as error:
        fastmetro.load_model(target, topology=smpl_topology)
    assert str(target) in str(error.value)


def test_official_weights_say_their_preset(tmp_path, smpl_topology):
    torch.manual_seed(1)
    for name in ("FastMETRO-M-R18", "FastMETRO-S-R34"):
        model = fastmetro.create_model(
            name, topology=smpl_topology, flavor="release", model_dims=(64, 32), feedforward_dims=(64, 64), num_heads=2
        )
        path = tmp_path / f"{name}_state_dict.bin"
        torch.save(fastmetro_to_official(model.state_dict()), path)
        loaded = fastmetro.load_model(
            path, topology=smpl_topology, model_dims=(64, 32), feedforward_dims=(64, 64), num_heads=2
        )
        assert loaded.spec.name == name and loaded.spec.flavor == "release"
        with pytest.raises(FastMetroError, match="does not say its topology"):
            fastmetro.load_model(path)


# --------------------------------------------------------------------------- SMPL parameter regressor
def released_projection(matrices: np.ndarray) -> np.ndarray:
    """The released per-matrix loop: U V^T of each matrix's SVD (NumPy, CPU), times its determinant."""
    out = np.empty_like(matrices)
    for index, matrix in enumerate(matrices.reshape(-1, 3, 3)):
        u, _, vt = np.linalg.svd(matrix)
        rotation = u @ vt
        out.reshape(-1, 3, 3)[index] = rotation * np.linalg.det(rotation)
    return out


def test_batched_rotation_projection_equals_the_released_loop():
    generator = torch.Generator().manual_seed(2)
    matrices = torch.randn(5, 24, 3, 3, generator=generator, dtype=torch.float64)
    ours = project_to_rotation(matrices)
    np.testing.assert_allclose(ours.numpy(), released_projection(matrices.numpy()), atol=1e-10)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(ours @ ours.transpose(-1, -2), eye.expand_as(ours), atol=1e-10)
    assert torch.allclose(torch.linalg.det(ours), torch.ones(5, 24, dtype=torch.float64), atol=1e-10)


def test_smpl_regressor_counts_as_released():
    regressor = count_parameters("FastMETRO-L-H64", "release", "body", smpl_parameter_regressor=True)
    plain = count_parameters("FastMETRO-L-H64", "release", "body")
    assert regressor["total_params"] - plain["total_params"] == 9_734_370
    assert regressor["total_params"] == 163_474_208 and regressor["transformer_params"] == 35_414_264


def smpl_like_body_model(template: np.ndarray, seed: int = 0):
    """A random SMPL-layout layer (24 joints, SMPL's kinematic tree) on the given template."""
    from fastmetro.data.body_models import BodyModel

    rng = np.random.default_rng(seed)
    parents = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
    weights = rng.random((len(template), 24)) ** 8
    regressor = rng.random((24, len(template))) ** 8
    return BodyModel(
        {
            "v_template": template,
            "shapedirs": rng.normal(scale=1e-3, size=(len(template), 3, 10)),
            "posedirs": rng.normal(scale=1e-4, size=(len(template), 3, 207)),
            "J_regressor": regressor / regressor.sum(1, keepdims=True),
            "weights": weights / weights.sum(1, keepdims=True),
            "kintree_table": np.array([parents, list(range(24))]),
        },
        name="smpl",
    )


def test_smpl_regressor_checkpoint_round_trip_and_outputs(tmp_path, smpl_topology):
    torch.manual_seed(3)
    small = dict(model_dims=(64, 32), feedforward_dims=(64, 64), num_heads=2)
    model = fastmetro.create_model(
        "FastMETRO-S-R18", topology=smpl_topology, flavor="release", smpl_parameter_regressor=True, **small
    ).eval()
    official = fastmetro_to_official(model.state_dict())
    assert "smpl_parameter_regressor.regressor.1.fc_block.4.running_var" in official
    path = tmp_path / "FastMETRO-S-R18_smpl_h36m_state_dict.bin"
    torch.save(official, path)
    loaded = fastmetro.load_model(path, topology=smpl_topology, **small).eval()
    assert loaded.spec.overrides["smpl_parameter_regressor"] is True
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = loaded(images)
        reference = model(images)
    assert out["smpl_rotmat"].shape == (2, 24, 3, 3) and out["smpl_betas"].shape == (2, 10)
    torch.testing.assert_close(out["smpl_rotmat"], reference["smpl_rotmat"])
    assert "smpl_vertices" not in out
    loaded.attach_body_model(smpl_like_body_model(np.asarray(smpl_topology.template)))
    with torch.no_grad():
        out = loaded(images)
    assert out["smpl_vertices"].shape == (2, 6890, 3) and torch.isfinite(out["smpl_vertices"]).all()
    assert not any(key.startswith("_body_model") for key in loaded.state_dict())
    # The regressor works on the detached intermediate mesh: no gradient flows back through it.
    loaded.train()
    out = loaded(images)
    out["smpl_betas"].sum().backward()
    assert loaded.xyz_regressor.weight.grad is None or loaded.xyz_regressor.weight.grad.abs().sum() == 0
    assert loaded.smpl_parameter_regressor.regressor[3].weight.grad.abs().sum() > 0

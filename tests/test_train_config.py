"""Typed YAML configs with key=value overrides."""

import pytest

from fastmetro.engine.config import ExperimentConfig, load_config
from fastmetro.errors import FastMetroError


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: FastMETRO-L-H64\noptim:\n  lr: 1e-4\ndata:\n  train: a.yaml\n")
    config = load_config(
        path,
        [
            "optim.lr=2e-4",
            "data.skip_bad_rows=true",
            "model.overrides.dropout=0.0",
            "loss.level_weights=[0.2, 0.6, 0.2]",
            "data.max_val_samples=null",
        ],
    )
    assert isinstance(config, ExperimentConfig)
    assert config.model.name == "FastMETRO-L-H64"
    assert config.optim.lr == 2e-4 and isinstance(config.optim.lr, float)
    assert config.data.skip_bad_rows is True and config.data.train == "a.yaml"
    assert config.model.overrides == {"dropout": 0.0}
    assert config.loss.level_weights == [0.2, 0.6, 0.2]
    assert config.optim.weight_decay == 1e-4 and config.optim.clip_grad_norm == 0.3  # released defaults


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown key"),
        ("optim.lr=fast", "expected a number"),
        ("data.batch_size=2.5", "expected an integer"),
        ("data.augment=maybe", "expected true/false"),
        ("optim.schedule=linear", "optim.schedule"),
        ("nonsense", "expected key=value"),
        ("train.steps=0", "train.steps"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(FastMetroError, match=message):
        load_config(None, [override])


def test_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(FastMetroError, match="not valid YAML"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(FastMetroError, match="mapping"):
        load_config(path)


def test_demo_config_is_packaged_and_valid(tmp_path, monkeypatch):
    from pathlib import Path

    from fastmetro.engine.config import config_path, packaged_configs
    from fastmetro.engine.demo import demo_config_path

    assert "demo" in packaged_configs() and demo_config_path().is_file()
    config = load_config(demo_config_path())
    assert config.model.topology == "anny" and config.train.steps > 0
    # A file of that name in the working directory wins over the packaged config.
    monkeypatch.chdir(tmp_path)
    assert config_path("demo") == demo_config_path()
    (tmp_path / "demo").write_text("train: {steps: 3}\n")
    assert config_path("demo") == Path("demo")
    assert load_config(config_path("demo")).train.steps == 3


def test_metro_baseline_configs_take_metro_overrides():
    config = load_config(
        None,
        [
            "model.name=metro-r18",
            "model.overrides.hidden_dims=[64, 16, 8]",
            "model.overrides.output_dims=[32, 8]",
            "model.overrides.intermediate_size=192",
        ],
    )
    assert config.model.overrides == {"hidden_dims": [64, 16, 8], "output_dims": [32, 8], "intermediate_size": 192}
    with pytest.raises(FastMetroError, match="unknown option.*model_dims"):  # a FastMETRO field
        load_config(None, ["model.name=METRO-R18", "model.overrides.model_dims=[64, 16]"])
    with pytest.raises(FastMetroError, match="hidden_dims must be >= 1"):
        load_config(None, ["model.name=METRO-R18", "model.overrides.hidden_dims=[64, 0, 8]"])
    with pytest.raises(FastMetroError, match="model.name"):
        load_config(None, ["model.name=METRO-X9"])

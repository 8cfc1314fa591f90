"""Fuzz: the training config YAML and its ``key=value`` overrides.

A bad file or value is one line naming the file (or "config") and the field; an accepted config
satisfies every range the trainer relies on (positive counts, finite rates, known names), so a
value that would crash or silently misbehave minutes into a run is refused before it starts.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmetro.engine.config import ExperimentConfig, load_config, to_dict
from fuzz_helpers import expect_clean, expect_error, expect_ok


def invariants(config: ExperimentConfig) -> None:
    """What the trainer needs of an accepted config (fails ``[silent]`` otherwise)."""
    problems = []
    train, data, optim, loss = config.train, config.data, config.optim, config.loss
    for section in (train, data, optim, loss):
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                if isinstance(item, float) and not math.isfinite(item):
                    problems.append(f"{field.name}={value}")
    if train.steps < 1 or train.log_every < 1 or train.eval_every < 0 or train.checkpoint_every < 0:
        problems.append("step counts")
    if not 0 <= train.seed < 2**63:
        problems.append("seed")
    if data.num_workers < 0 or data.image_size < 32 or data.batch_size < 1 or data.val_batch_size < 1:
        problems.append("data counts")
    if data.max_val_samples is not None and data.max_val_samples < 1:
        problems.append("max_val_samples")
    if optim.lr <= 0 or optim.weight_decay < 0 or optim.eps <= 0 or optim.clip_grad_norm < 0 or optim.gamma <= 0:
        problems.append("optim ranges")
    if optim.warmup_steps < 0 or not 0 <= optim.min_lr_ratio <= 1:
        problems.append("schedule")
    for name in (
        "joints_3d_weight",
        "vertices_weight",
        "joints_2d_weight",
        "edge_normal_weight",
        "normal_weight",
        "edge_length_weight",
        "edge_self_weight",
    ):
        value = getattr(loss, name)
        if value is not None and value < 0:
            problems.append(name)
    if loss.level_weights is not None and (not loss.level_weights or any(w < 0 for w in loss.level_weights)):
        problems.append("level_weights")
    if loss.edge_level is not None and loss.edge_level < 0:
        problems.append("edge_level")
    import torch

    try:
        device = torch.device(train.device) if train.device != "auto" else None
    except (RuntimeError, ValueError):
        problems.append(f"device {train.device!r}")
    else:
        if device is not None and device.type not in ("cpu", "cuda", "mps", "xpu"):
            problems.append(f"device {train.device!r}")
    if train.distributed_backend not in ("auto", "nccl", "gloo"):
        problems.append("distributed_backend")
    if not train.output_dir:
        problems.append("output_dir")
    from fastmetro.data.augment import AugmentConfig
    from fastmetro.model.presets import model_config

    try:
        model_config(config.model.name, config.model.flavor, **config.model.overrides)
        augment = AugmentConfig(**data.augment_overrides)
    except Exception as error:  # noqa: BLE001
        problems.append(f"model/augment overrides ({type(error).__name__}: {error})")
    else:
        if not (
            0 <= augment.flip_prob <= 1
            and 0 <= augment.rotation_zero_prob <= 1
            and 0 <= augment.occlusion_prob <= 1
            and augment.rotation_std >= 0
            and augment.rotation_limit >= 0
            and augment.scale_std >= 0
            and 0 <= augment.scale_limit < 1
            and 0 <= augment.noise <= 1
            and augment.occlusion_max_patches >= 1
            and 0 < augment.occlusion_size[0] <= augment.occlusion_size[1] <= 1
        ):
            problems.append("augment ranges")
    if problems:
        pytest.fail(f"[silent] accepted a config the trainer cannot use: {problems}")


def load(path=None, overrides=()):
    config = load_config(path, list(overrides))
    to_dict(config)  # what training does first (it saves the resolved config)
    invariants(config)
    return config


def test_defaults_and_a_good_override_are_accepted():
    config = expect_ok(
        load, None, ["optim.lr=2e-4", "model.overrides.num_heads=4", "data.augment_overrides.flip_prob=0"]
    )
    assert config.optim.lr == 2e-4 and config.model.overrides == {"num_heads": 4}


# ---------------------------------------------------------------------------- config files
@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01\x02\xff\xfe binary",
        b"optim:\n  lr: 1e-4\xff\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"optim: 5\n",
        b"optim: [1, 2]\n",
        b"bogus_section: {a: 1}\n",
        b"model: !!python/object/apply:os.system ['touch PWNED']\n",
        b"optim:\n  lr: .nan\n",
        b"train:\n  steps: 1e400\n",
        b"model:\n  overrides: {num_heads: 0}\n",
        b"data:\n  augment_overrides: {bogus: 1}\n",
    ],
)
def test_bad_config_file(tmp_path, content, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    expect_error(load, path, names=("c.yaml",))
    assert not (tmp_path / "PWNED").exists()


def test_yaml_alias_bomb_in_overrides_is_refused_quickly(tmp_path):
    """Nine levels of eight aliases: 8**9 leaves if anything walks or copies it (saving config.yaml)."""
    lines = ["model:", "  overrides:", "    dropout:", "      - &x0 [1, 2, 3, 4, 5, 6, 7, 8]"]
    for level in range(1, 9):
        lines.append(f"      - &x{level} [" + ", ".join([f"*x{level - 1}"] * 8) + "]")
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    expect_error(load, path, names=("c.yaml",), seconds=10)


def test_missing_and_empty_config(tmp_path):
    expect_error(load, tmp_path / "nope.yaml", names=("nope.yaml",))
    (tmp_path / "empty.yaml").write_text("")
    expect_ok(load, tmp_path / "empty.yaml")  # documented: an empty file is all defaults


# ---------------------------------------------------------------------------- overrides
BAD_OVERRIDES = [
    "model.overrides.num_heads=0",
    "model.overrides.num_heads=-4",
    "model.overrides.num_heads=four",
    "model.overrides.model_dims=[wide, narrow]",
    "model.overrides.model_dims=[64]",
    "model.overrides.bogus=1",
    "model.overrides.dropout=2",
    "model.overrides.dropout=.nan",
    "model.overrides={num_heads: {a: 1}}",
    "model.overrides.num_encoder_layers=0",
    "model.overrides.feedforward_dims=[0, 64]",
    "model.name=FastMETRO-XXL",
    "model.flavor=bogus",
    "train.log_every=0",
    "train.log_every=-1",
    "train.eval_every=-1",
    "train.checkpoint_every=-5",
    "train.steps=-1",
    "train.seed=-1",
    "train.device=bogus",
    "train.device=cuda:x",
    "train.device=gpu",
    "train.precision=fp8",
    "train.distributed_backend=mpi",
    "train.output_dir=",
    "data.augment_overrides.bogus=1",
    "data.augment_overrides.flip_prob=2",
    "data.augment_overrides.flip_prob=x",
    "data.augment_overrides.occlusion_size=[0.5, 0.1]",
    "data.augment_overrides.rotation_std=-1",
    "data.augment_overrides.scale_limit=1.5",
    "data.augment_overrides.noise=.inf",
    "data.augment_overrides.occlusion_max_patches=0",
    "optim.lr=.nan",
    "optim.lr=.inf",
    "optim.lr=-1",
    "optim.lr=0",
    "optim.weight_decay=.nan",
    "optim.weight_decay=-1",
    "optim.eps=0",
    "optim.clip_grad_norm=-1",
    "optim.clip_grad_norm=.nan",
    "optim.gamma=.nan",
    "optim.gamma=0",
    "optim.warmup_steps=-1",
    "optim.min_lr_ratio=2",
    "data.num_workers=-1",
    "data.image_size=0",
    "data.image_size=-224",
    "data.max_val_samples=0",
    "data.batch_size=1e400",
    "loss.joints_3d_weight=.nan",
    "loss.vertices_weight=-1",
    "loss.level_weights=[.nan, 1, 1]",
    "loss.level_weights=[-1, 1, 1]",
    "loss.level_weights=[]",
    "loss.edge_level=-1",
    "loss.normal_weight=.inf",
    "loss.edge_length_weight=-2",
    "=1",
    "optim.=1",
    "optim..lr=1",
    ".lr=1",
    "optim=5",
    "optim.lr",
    "optim.lr.x=1",
    "model.name.x=1",
]


@pytest.mark.parametrize("override", BAD_OVERRIDES)
def test_bad_override_is_one_line_naming_the_field(override):
    field = override.split("=", 1)[0].rsplit(".", 1)[-1] or None
    error = expect_error(load, None, [override])
    if field and field not in ("", "overrides") and override.count("=") == 1 and "." in override.split("=")[0]:
        assert field in str(error) or override.split("=")[0] in str(error), f"[message] field not named: {error}"


def test_level_weights_of_the_right_length_are_accepted():
    config = expect_ok(load, None, ["loss.level_weights=[0.2, 0.6, 0.2]", "loss.edge_level=1"])
    assert config.loss.level_weights == [0.2, 0.6, 0.2]


# ---------------------------------------------------------------------------- property-based
def section_fields() -> list[str]:
    keys = []
    for section in dataclasses.fields(ExperimentConfig):
        for field in dataclasses.fields(section.default_factory()):
            keys.append(f"{section.name}.{field.name}")
    keys += [
        f"model.overrides.{name}"
        for name in (
            "num_heads",
            "model_dims",
            "dropout",
            "num_encoder_layers",
            "feedforward_dims",
            "activation",
            "bogus",
        )
    ]
    keys += [
        f"data.augment_overrides.{name}"
        for name in ("flip_prob", "rotation_std", "occlusion_size", "scale_limit", "noise", "bogus")
    ]
    return keys


YAML_VALUES = st.one_of(
    st.integers(-(2**65), 2**65).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda v: {math.inf: ".inf", -math.inf: "-.inf"}.get(v, repr(v)) if not math.isnan(v) else ".nan"
    ),
    st.sampled_from(
        [
            "true",
            "false",
            "null",
            "",
            "[]",
            "{}",
            "[1, 2]",
            "[64, 32]",
            "[0.1, 0.4]",
            "auto",
            "cpu",
            "cuda:0",
            "x",
            "'",
            "[",
            "{a: 1}",
            "!!binary aGk=",
            "&a [*a]",
            "1e-4",
            "0x10",
            "~",
        ]
    ),
    st.text(max_size=8),
)


@given(st.lists(st.tuples(st.sampled_from(section_fields()), YAML_VALUES), min_size=1, max_size=4))
def test_any_overrides_are_refused_or_usable(overrides):
    texts = [f"{key}={value}" for key, value in overrides]
    expect_clean(load, None, texts)


@given(st.binary(max_size=300))
def test_any_config_bytes_are_clean(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("config") / "c.yaml"
    path.write_bytes(data)
    expect_clean(load, path, names=("c.yaml",))


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_any_config_text_is_clean(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("config") / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    expect_clean(load, path, names=("c.yaml",))

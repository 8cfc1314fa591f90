"""Exact parameter counts: paper Tables 1, 2, 4 and the released checkpoints."""

from __future__ import annotations

import json

import pytest

from fastmetro.model import count_parameters, create_model, parameter_counts
from fastmetro.model.presets import build_on_meta, model_config, sized_topology

R50 = 23_508_032
H64 = 128_059_944

# (name, flavor, task) -> (backbone, transformer part, total); paper Table 1/2 and
# released_fastmetro_facts.md section 2 (measured on the released code).
EXACT = {
    ("FastMETRO-S-R50", "paper", "body"): (R50, 9_231_366, 32_739_398),
    ("FastMETRO-M-R50", "paper", "body"): (R50, 17_050_630, 40_558_662),
    ("FastMETRO-L-R50", "paper", "body"): (R50, 24_869_894, 48_377_926),
    ("FastMETRO-L-H64", "paper", "body"): (H64, 24_869_894, 152_929_838),
    ("FastMETRO-S-R50", "release", "body"): (R50, 10_041_366, 33_549_398),
    ("FastMETRO-M-R50", "release", "body"): (R50, 17_860_630, 41_368_662),
    ("FastMETRO-L-R50", "release", "body"): (R50, 25_679_894, 49_187_926),
    ("FastMETRO-S-H64", "release", "body"): (H64, 10_041_366, 138_101_310),
    ("FastMETRO-M-H64", "release", "body"): (H64, 17_860_630, 145_920_574),
    ("FastMETRO-L-H64", "release", "body"): (H64, 25_679_894, 153_739_838),
    ("FastMETRO-S-R50", "release", "hand"): (R50, 9_179_782, 32_687_814),
    ("FastMETRO-M-R50", "release", "hand"): (R50, 16_999_046, 40_507_078),
    ("FastMETRO-L-R50", "release", "hand"): (R50, 24_818_310, 48_326_342),
    ("FastMETRO-S-H64", "release", "hand"): (H64, 9_179_782, 137_239_726),
    ("FastMETRO-M-H64", "release", "hand"): (H64, 16_999_046, 145_058_990),
    ("FastMETRO-L-H64", "release", "hand"): (H64, 24_818_310, 152_878_254),
}

# Table 4 (FastMETRO-S-R50, paper flavor), millions, to 0.05M.
TABLE_4 = {
    "no-mask": 32.7,
    "graph-conv": 33.1,
    "half-head-mask": 32.7,
    "learnable-upsampling": 45.4,
    "no-dim-reduction": 39.5,
}


@pytest.mark.parametrize("key", list(EXACT), ids=lambda k: "-".join(k))
def test_exact_counts_from_sizes(key):
    name, flavor, task = key
    counts = count_parameters(name, flavor, task)
    assert (counts["backbone_params"], counts["transformer_params"], counts["total_params"]) == EXACT[key]


def test_each_variant_step_adds_one_encoder_and_decoder_layer_per_transformer():
    totals = [count_parameters(f"FastMETRO-{v}-R50")["total_params"] for v in "SML"]
    assert totals[1] - totals[0] == totals[2] - totals[1] == 7_819_264


@pytest.mark.parametrize("ablation", list(TABLE_4))
def test_table_4_ablation_counts(ablation):
    total = count_parameters(f"FastMETRO-S-R50+{ablation}")["total_params"]
    assert abs(total / 1e6 - TABLE_4[ablation]) < 0.05, total


def test_graph_conv_ablation_design_size():
    base = count_parameters("FastMETRO-S-R50")["total_params"]
    # GraphResidualBlock: 330,752 at D=512 and 21,248 at D=128 (one per decoder layer).
    assert count_parameters("FastMETRO-S-R50+graph-conv")["total_params"] - base == 352_000
    assert (
        count_parameters("FastMETRO-L-R50+graph-conv")["total_params"]
        - count_parameters("FastMETRO-L-R50")["total_params"]
        == 3 * 352_000
    )


def test_overrides_are_ablation_switches_on_one_class():
    config = model_config("FastMETRO-S-R50", attention_mask="none", graph_convolutions=True)
    assert config == model_config("FastMETRO-S-R50+graph-conv")
    assert count_parameters("fastmetro-s-r50", attention_mask="none") == count_parameters("FastMETRO-S-R50+no-mask")


@pytest.mark.parametrize(
    "name, flavor", [("FastMETRO-S-R50", "paper"), ("FastMETRO-S-R50", "release"), ("FastMETRO-S-R18", "release")]
)
def test_counts_of_models_built_on_real_smpl_topology(smpl_topology, name, flavor):
    model = build_on_meta(model_config(name, flavor), smpl_topology)
    assert parameter_counts(model) == count_parameters(name, flavor, "body")
    if (name, flavor, "body") in EXACT:
        assert parameter_counts(model)["total_params"] == EXACT[(name, flavor, "body")][2]


def test_real_hand_model_counts(mano_topology):
    model = create_model("FastMETRO-S-R50", topology=mano_topology, flavor="release")
    assert parameter_counts(model)["total_params"] == 32_687_814
    assert not hasattr(model, "coarse2intermediate_upsample")  # two levels: fixed 195 -> 778 only
    assert count_parameters("FastMETRO-S-R50", "paper", "hand")["total_params"] == 32_687_814 - 65_664


def test_light_backbones_feed_their_channel_count_to_conv_1x1():
    for name, channels in (("FastMETRO-S-R18", 512), ("FastMETRO-S-R34", 512), ("FastMETRO-S-R50", 2048)):
        model = build_on_meta(model_config(name), sized_topology("body"))
        assert model.conv_1x1.in_channels == channels
    model = build_on_meta(
        model_config("FastMETRO-S-R50", backbone="mobilenetv3_small_100"),
        sized_topology("body"),
    )
    assert model.conv_1x1.in_channels == model.backbone.num_features


def test_models_command_json(capsys):
    from fastmetro.cli import main

    assert main(["models", "--json", "--flavor", "release", "--task", "hand", "--no-ablations"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(set(row) == {"name", "flavor", "task", "backbone_params", "transformer_params", "total_params"}
               for row in rows)  # fmt: skip
    by_name = {row["name"]: row for row in rows}
    assert by_name["FastMETRO-L-H64"]["total_params"] == 152_878_254
    assert {row["task"] for row in rows} == {"hand"} and {row["flavor"] for row in rows} == {"release"}


def test_models_command_table(capsys):
    from fastmetro.cli import main

    assert main(["models", "--flavor", "paper", "--task", "body"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("FastMETRO-L-H64 "))
    assert line.split()[-3:] == ["128,059,944", "24,869,894", "152,929,838"]
    assert "FastMETRO-S-R50+graph-conv" in out


def test_models_command_counts_the_smpl_parameter_regressor(capsys):
    from fastmetro.cli import main

    assert main(["models", "--json", "--flavor", "release", "--task", "body", "--no-ablations"]) == 0
    by_name = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    with_regressor, without = by_name["FastMETRO-L-H64+smpl-regressor"], by_name["FastMETRO-L-H64"]
    # the released *_smpl_h36m / *_smpl_3dpw checkpoints: the regressor's 9,734,370 parameters on top
    assert with_regressor["total_params"] - without["total_params"] == 9_734_370
    assert with_regressor["total_params"] == 163_474_208

"""benchmarks/generalisation.py on a tiny dataset with a tiny untrained checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("generalisation_benchmark", REPO / "benchmarks" / "generalisation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generalisation_set(synthetic_dataset, tmp_path_factory):
    from fastmetro.data.synthetic.generator import SynthConfig, generate

    config = SynthConfig(
        **{
            **synthetic_dataset.config.__dict__,
            "out_dir": tmp_path_factory.mktemp("general"),
            "num": 4,
            "split": "generalisation",
        }
    )
    report = generate(config, progress=False, maker=synthetic_dataset.maker)
    synthetic_dataset.maker.reconfigure(synthetic_dataset.config)
    return report.yamls["test"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    import fastmetro
    from fastmetro.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = fastmetro.create_model(
        "FastMETRO-S-R18", topology="anny", model_dims=[64, 32], feedforward_dims=[128, 64], num_heads=2
    )
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "tiny.safetensors")


def test_generalisation_benchmark_table(
    benchmark, synthetic_dataset, generalisation_set, tiny_checkpoint, tmp_path, capsys
):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    code = benchmark.main(
        [
            str(tiny_checkpoint),
            "--test",
            str(synthetic_dataset.test_yaml),
            "--generalisation",
            str(generalisation_set),
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--max-samples",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads(out_json.read_text())
    assert Path(results["train"]) == Path(synthetic_dataset.train_yaml)  # the train.yaml beside --test
    assert set(results["sets"]) == {"held-out (training distribution)", "generalisation"}
    for values in results["sets"].values():
        for side in ("model", "baseline"):
            assert set(values[side]) == {"mpjpe", "pa_mpjpe", "mpvpe", "pa_mpvpe"}
            assert all(0 < v < 5000 for v in values[side].values())
        # An untrained model is not the mean mesh: the two columns differ.
        assert values["model"]["mpjpe"] != pytest.approx(values["baseline"]["mpjpe"], rel=1e-3)
    assert out_md.read_text().strip() == printed.strip()
    assert printed.count("| generalisation |") == 4 and "model / baseline" in printed


def test_generalisation_benchmark_names_missing_files(benchmark, tmp_path, capsys):
    code = benchmark.main(
        [
            str(tmp_path / "none.safetensors"),
            "--test",
            str(tmp_path / "t.yaml"),
            "--generalisation",
            str(tmp_path / "g.yaml"),
        ]
    )
    assert code == 2
    assert "none.safetensors: no such file" in capsys.readouterr().out

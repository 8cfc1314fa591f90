"""End to end on the synthetic Anny fixture: `fastmetro train` then `fastmetro eval --json`."""

from __future__ import annotations

import json

import yaml

from fastmetro.cli import main
from train_helpers import TINY_MODEL_OVERRIDES


def test_train_then_eval_cli(tmp_path, synthetic_dataset, capsys):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "FastMETRO-S-R18", "topology": "anny", "overrides": TINY_MODEL_OVERRIDES},
                # Fit 4 images (every batch = the whole set) and evaluate on them: what 48 steps guarantee
                # on any CPU is a clear fit of the training data, not generalisation from 12 images.
                "data": {
                    "train": str(synthetic_dataset.test_yaml),
                    "val": str(synthetic_dataset.test_yaml),
                    "image_size": 64,
                    "batch_size": 4,
                    "val_batch_size": 4,
                    "num_workers": 0,
                    "augment": False,
                },
                "optim": {"lr": 1e-3},
                "train": {"steps": 48, "eval_every": 24, "log_every": 8, "progress": False, "tensorboard": False},
            }
        )
    )
    run = tmp_path / "run"
    assert main(["train", str(config_path), f"train.output_dir={run}", "--skip-bad-rows"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["skip_bad_rows"] is True
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [24, 48]
    out = capsys.readouterr().out
    losses = [
        float(line.split("loss ")[1].split(",")[0])
        for line in out.splitlines()
        if line.startswith("step ") and "loss" in line
    ]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]  # measured 0.43

    # The run's own starting point: the trainer seeds (train.seed, default 88) before building.
    import fastmetro
    from fastmetro.engine.train import seed_everything
    from fastmetro.model.checkpoint import save_checkpoint

    seed_everything(88)
    untrained = fastmetro.create_model("FastMETRO-S-R18", topology="anny", image_size=64, **TINY_MODEL_OVERRIDES)
    save_checkpoint(untrained, tmp_path / "untrained" / "model.safetensors")
    (tmp_path / "untrained" / "config.yaml").write_text((run / "config.yaml").read_text())

    results = {}
    for name, checkpoint in (
        ("trained", run / "last.safetensors"),
        ("untrained", tmp_path / "untrained" / "model.safetensors"),
    ):
        capsys.readouterr()
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(checkpoint),
                    "--data",
                    str(synthetic_dataset.test_yaml),
                    "--json",
                    "data.num_workers=0",
                ]
            )
            == 0
        )
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1
        results[name] = json.loads(lines[0])
    trained, untrained = results["trained"], results["untrained"]
    assert trained["num_samples"] == 4 and set(trained) >= {"mpjpe", "pa_mpjpe", "mpvpe", "pa_mpvpe"}
    # Surface roughness of the prediction and of the ground truth (a smooth rendered body, far from
    # the 90-degree average of a random mesh); both models' meshes share the ground truth's value.
    assert 3.0 < trained["gt_dihedral"] < 30.0 and trained["gt_dihedral"] == untrained["gt_dihedral"]
    assert 0.0 < trained["dihedral"] < 90.0 and 0.0 <= trained["folded"] <= 1.0
    # The CLI's numbers are the trainer's numbers for the same weights and data.
    assert abs(trained["pa_mpjpe"] - logged[-1]["pa_mpjpe"]) < 1e-3
    print({name: {key: round(value[key], 1) for key in ("pa_mpjpe", "mpvpe")} for name, value in results.items()})
    assert trained["pa_mpjpe"] < 0.7 * untrained["pa_mpjpe"]  # measured 0.44
    assert trained["mpvpe"] < 0.85 * untrained["mpvpe"]  # measured 0.65


def test_eval_missing_checkpoint_is_one_line_error(tmp_path, capsys, synthetic_dataset):
    assert (
        main(["eval", "--checkpoint", str(tmp_path / "nope.safetensors"), "--data", str(synthetic_dataset.test_yaml)])
        == 2
    )
    assert "error:" in capsys.readouterr().err


def test_demo_quick_runs_every_stage(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    manifest = json.loads((tmp_path / "demo" / "data" / "synth.json").read_text())
    assert manifest["backgrounds"] == "studio" and manifest["occluders"] is False
    assert manifest["vertices_dtype"] == "float16"
    assert {"mpjpe", "pa_mpjpe", "mpvpe"} <= set(report["model"]) and "pa_mpjpe" in report["baseline"]
    assert list((tmp_path / "demo" / "inference").rglob("*.obj"))

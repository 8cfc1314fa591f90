"""Trainer: the loss falls and the metric improves, exact resume, the NaN guard, configs."""

from __future__ import annotations

import json

import pytest
import torch

from fastmetro.engine.config import load_config
from fastmetro.engine.train import NonFiniteLossError, Trainer, lr_factor
from fastmetro.errors import FastMetroError
from train_helpers import TemplateDataset, state_vector, tiny_config


class CallHook(torch.nn.Module):
    """Wraps the criterion; on call ``at`` either raises ``error`` or makes the loss NaN."""

    def __init__(self, criterion, at: int, error: type[BaseException] | None = None):
        super().__init__()
        self.criterion, self.at, self.error, self.calls = criterion, at, error, 0

    def forward(self, outputs, batch):
        self.calls += 1
        terms = self.criterion(outputs, batch)
        if self.calls == self.at:
            if self.error is not None:
                raise self.error()
            terms["total"] = terms["total"] * float("nan")
        return terms


def test_loss_falls_and_metric_improves(tmp_path, smpl_topology):
    config = tiny_config(
        tmp_path / "run",
        steps=30,
        batch_size=4,
        extra=["optim.lr=1e-3", "train.eval_every=30", "train.log_every=5", "train.tensorboard=true"],
    )
    data = TemplateDataset(smpl_topology, size=8)
    trainer = Trainer(config, topology=smpl_topology, train_dataset=data, val_dataset=data)
    before = trainer.run_evaluation()
    losses = []
    original = trainer.train_step
    trainer.train_step = lambda batch: losses.append(float((terms := original(batch))["total"])) or terms
    result = trainer.fit()
    after = result.last_metrics
    assert result.step == 30
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5
    assert after["pa_mpjpe"] < 0.8 * before["pa_mpjpe"]  # measured 0.50 (seeded: train.seed=3)
    assert after["mpjpe"] < before["mpjpe"]
    for name in ("last.safetensors", "last.json", "last.state.pt", "best.safetensors", "config.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 30 and logged[-1]["pa_mpjpe"] == pytest.approx(after["pa_mpjpe"])
    # The saved config reloads to the same settings.
    assert load_config(tmp_path / "run" / "config.yaml") == config


def _resume_config(path, steps=6):
    return tiny_config(
        path,
        steps=steps,
        batch_size=2,
        extra=[
            "optim.schedule=cosine",
            "optim.warmup_steps=2",
            "optim.lr=5e-4",
            "train.checkpoint_every=3",
            "model.overrides.dropout=0.1",  # exercises the RNG state
        ],
    )


def test_resume_is_exact(tmp_path, smpl_topology):
    data = TemplateDataset(smpl_topology, size=5)  # 5 samples, batch 2: epochs straddle batches
    full = Trainer(_resume_config(tmp_path / "full"), topology=smpl_topology, train_dataset=data)
    full.fit()

    interrupted = Trainer(_resume_config(tmp_path / "cut"), topology=smpl_topology, train_dataset=data)
    interrupted.criterion = CallHook(interrupted.criterion, at=5, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert interrupted.step == 4
    resumed = Trainer(_resume_config(tmp_path / "cut"), topology=smpl_topology, train_dataset=data, resume=True)
    assert resumed.step == 3  # the last checkpoint
    resumed.fit()
    assert resumed.step == 6
    difference = (state_vector(full.model) - state_vector(resumed.model)).abs().max().item()
    assert difference <= 1e-6
    # And an optimizer that did not resume its state would differ (the test can fail).
    assert (state_vector(full.model) - state_vector(interrupted.model)).abs().max().item() > 1e-4


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path, smpl_topology):
    from fastmetro.model.checkpoint import read_checkpoint

    config = tiny_config(tmp_path / "run", steps=5, extra=["train.checkpoint_every=2"])
    trainer = Trainer(config, topology=smpl_topology, train_dataset=TemplateDataset(smpl_topology, size=4))
    trainer.criterion = CallHook(trainer.criterion, at=3)
    saved_weights = {}
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        try:
            trainer.fit()
        finally:
            saved_weights = read_checkpoint(tmp_path / "run" / "last.safetensors").state_dict
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["step"] == 2
    # The weights on disk are the finite step-2 weights, the ones still in memory (no update ran;
    # BatchNorm running statistics did see the failed forward pass, but they are not saved).
    for name, value in trainer.model.named_parameters():
        assert torch.isfinite(saved_weights[name]).all()
        assert torch.equal(saved_weights[name], value), name
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_nan_on_first_step_writes_no_checkpoint(tmp_path, smpl_topology):
    config = tiny_config(tmp_path / "run", steps=3)
    data = TemplateDataset(smpl_topology, size=4)
    data.template = data.template * float("nan")
    trainer = Trainer(config, topology=smpl_topology, train_dataset=data)
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at step 1"):
        trainer.fit()
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_gated_batch_trains_without_nan(tmp_path, smpl_topology):
    # Only 2D keypoints available: 3D/vertex terms are 0 (not NaN) and training proceeds.
    config = tiny_config(tmp_path / "run", steps=2)
    data = TemplateDataset(smpl_topology, size=4, has=(1.0, 0.0, 0.0))
    trainer = Trainer(config, topology=smpl_topology, train_dataset=data)
    terms = trainer.train_step(next(iter(trainer.train_loader())))
    assert terms["joints_3d"].item() == 0.0 and terms["vertices"].item() == 0.0
    assert terms["joints_2d"].item() > 0.0


def test_lr_schedules():
    config = load_config(None, ["train.steps=100", "optim.schedule=step", "optim.step_size=40"])
    assert [lr_factor(s, config) for s in (0, 39, 40, 80)] == pytest.approx([1, 1, 0.1, 0.01])
    config = load_config(None, ["train.steps=100", "optim.schedule=cosine", "optim.warmup_steps=10"])
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.5)
    assert lr_factor(100, config) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(7, load_config(None)) == 1.0


def test_resume_without_state_is_a_clear_error(tmp_path, smpl_topology):
    with pytest.raises(FastMetroError, match="no training state"):
        Trainer(
            tiny_config(tmp_path / "nothing"),
            topology=smpl_topology,
            train_dataset=TemplateDataset(smpl_topology, size=2),
            resume=True,
        )

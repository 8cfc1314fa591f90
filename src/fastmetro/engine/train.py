"""The training loop: iteration-based, DDP-ready, exactly resumable.

``Trainer(config).fit()`` trains for ``train.steps`` optimiser steps (AdamW, gradient clipping,
optional warm-up/step/cosine schedule, mixed precision on GPUs), evaluates every
``train.eval_every`` steps keeping the best checkpoint by PA-MPJPE, logs TensorBoard scalars
and shows a progress bar.

Output folder::

    config.yaml                the resolved config
    last.safetensors (+.json)  latest weights (our model checkpoint format)
    last.state.pt              optimizer / scheduler / grad-scaler / RNG / step state
    best.safetensors (+.json)  weights with the best validation PA-MPJPE
    metrics.jsonl              one line per evaluation
    tensorboard/               event files

Every file is written atomically, and ``last.state.pt`` is written after ``last.safetensors``
and names the step, so a crash between the two is detected on resume instead of mixing states.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from fastmetro import topology as topology_module
from fastmetro.data.augment import AugmentConfig, body_augment_config, hand_augment_config
from fastmetro.data.body_models import load_body_model as load
from fastmetro.data.dataset import MeshDataset
from fastmetro.data.loader import SafeLoader, create_loader
from fastmetro.engine import distributed
from fastmetro.engine.cached_head import cached_features
from fastmetro.engine.config import ExperimentConfig, check_topology, to_dict
from fastmetro.engine.evaluate import EvalSetup, eval_loader, evaluate, format_metrics
from fastmetro.engine.losses import MeshCriterion
from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_save, atomic_write
from fastmetro.model.checkpoint import load_strict, read_checkpoint, save_checkpoint
from fastmetro.model.factory import create_model, load_model
from fastmetro.model.presets import make_spec

logger = logging.getLogger("fastmetro.train")

STATE_FORMAT = "fastmetro-train-state"


# ---------------------------------------------------------------------- building blocks
def model_for_training(config: ExperimentConfig, topology, resume_from: Path | None = None):
    """The network of ``config`` (its spec records ``data.image_size``); with ``resume_from``, the
    one saved in that checkpoint, which must be the same model."""
    model_config = config.model
    if resume_from is not None:
        model = load_model(resume_from, topology=topology)
        wanted = create_model_spec(config, topology)
        if (model.spec.name, model.spec.flavor, dict(model.spec.overrides)) != (
            wanted.name,
            wanted.flavor,
            dict(wanted.overrides),
        ):
            raise FastMetroError(
                f"{resume_from}: holds {model.spec.name} ({model.spec.flavor}, "
                f"{dict(model.spec.overrides)}), not the config's {wanted.name} "
                f"({wanted.flavor}, {dict(wanted.overrides)}): resume with the same model"
            )
        return model
    return create_model(
        model_config.name,
        topology=topology,
        flavor=model_config.flavor,
        checkpoint=model_config.checkpoint,
        backbone_weights=model_config.backbone_weights,
        pretrained=model_config.pretrained,
        image_size=config.data.image_size,
        **model_config.overrides,
    )


def create_model_spec(config: ExperimentConfig, topology):

    return make_spec(config.model.name, topology, config.model.flavor, config.model.overrides, config.data.image_size)


def load_topology(config: ExperimentConfig):

    return topology_module.load(config.model.topology, config.model.data_dir)


def load_body_model(config: ExperimentConfig):
    """The SMPL/MANO layer of ``data.body_model`` (None when not configured)."""
    if not config.data.body_model:
        return None

    return load(config.data.body_model)


def build_dataset(config: ExperimentConfig, yaml_path: str, topology, train: bool, body_model=None):

    data = config.data
    augment: AugmentConfig | None = None
    if train and data.augment:
        make = hand_augment_config if topology.is_hand else body_augment_config
        augment = make(**data.augment_overrides)
    return MeshDataset(
        yaml_path,
        topology,
        train=train,
        augment=augment,
        image_size=data.image_size,
        body_model=body_model,
        skip_bad_rows=data.skip_bad_rows,
        seed=config.train.seed,
    )


def _weights_of(state_path: Path) -> Path:
    """The weights saved with a training state (``last.state.pt`` -> ``last.safetensors``)."""
    weights_path = state_path.with_name(state_path.name.replace(".state.pt", ".safetensors"))
    if not state_path.is_file():
        raise FastMetroError(f"{state_path}: no training state to resume from")
    if not weights_path.is_file():
        raise FastMetroError(f"{weights_path}: weights of the state to resume are missing")
    return weights_path


def lr_factor(step: int, config: ExperimentConfig) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based)."""
    optim, total = config.optim, config.train.steps
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "step":
        return optim.gamma ** (step // optim.step_size)
    if optim.schedule == "cosine":
        span = max(total - optim.warmup_steps, 1)
        progress = min(max(step - optim.warmup_steps, 0) / span, 1.0)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = full fp32)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None  # CPU: fp32 by default (bf16 autocast on CPU is opt-in)
    if precision == "fp16" and device.type != "cuda":
        raise FastMetroError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Keep BatchNorm layers in eval mode with fixed affine parameters (detectron2's FrozenBN)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)


def freeze_backbone(model: torch.nn.Module) -> None:
    """No gradients for the backbone, BatchNorm in eval mode (``optim.backbone_lr_scale: 0``)."""
    backbone = model.backbone
    assert isinstance(backbone, torch.nn.Module)
    backbone.eval()
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)


def parameter_groups(model: torch.nn.Module, optim) -> list[dict]:
    """AdamW groups: the backbone at ``lr * backbone_lr_scale``, the rest at ``lr`` (trainable
    parameters only). LambdaLR scales each group's own initial rate, so the ratio holds."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optim.backbone_lr_scale == 1:
        return [{"params": trainable}]  # one group, as before the option (saved optimiser states load)
    backbone = model.backbone
    assert isinstance(backbone, torch.nn.Module)
    backbone_ids = {id(p) for p in backbone.parameters()}
    rest = [p for p in trainable if id(p) not in backbone_ids]
    encoder = [p for p in trainable if id(p) in backbone_ids]
    groups = [{"params": rest}]
    if encoder:
        groups.append({"params": encoder, "lr": optim.lr * optim.backbone_lr_scale})
    return groups


def rng_state() -> dict:
    """Every RNG the loop touches, as plain tensors/ints (loads with weights_only=True)."""
    keys, position, has_gauss, cached = np.random.get_state()[1:]  # type: ignore[index]  # numpy stub: legacy tuple
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.array(keys, dtype=np.int64)),
        "numpy_position": int(position),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_position"],
            state["numpy_has_gauss"],
            state["numpy_cached_gaussian"],
        )
    )
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class NonFiniteLossError(FastMetroError):
    """The loss became NaN/inf; nothing was saved for that step."""


@dataclass
class TrainResult:
    step: int
    best_metric: float | None
    last_metrics: dict
    images_per_second: float


# ---------------------------------------------------------------------- trainer
class Trainer:
    """Train a FastMETRO model as configured.

    Args:
        config: the experiment config.
        model, topology, train_dataset, val_dataset: optional ready-made parts (tests, notebooks);
            by default they are built from ``config``.
        resume: continue from ``output_dir/last.*`` (True) or from a given state file.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        model=None,
        topology=None,
        train_dataset=None,
        val_dataset=None,
        resume: bool | str = False,
    ):
        self.config = config
        self.dist = distributed.init_distributed(config.train.device, config.train.distributed_backend)
        self.device = self.dist.device
        self.output_dir = Path(config.train.output_dir)
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            # Filling every new tensor with NaN (a debugging aid that comes with deterministic mode)
            # costs ~15% of a CPU step and is not needed for reproducibility.
            torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]  # not in the stub
            if self.device.type == "cuda":
                torch.backends.cudnn.benchmark = False
        seed_everything(config.train.seed)  # same initial weights on every rank
        self.topology = topology if topology is not None else load_topology(config)
        check_topology(config, self.topology)  # loss.level_weights / edge_level against the mesh levels
        self._given_model = model is not None
        state_path = None
        if resume:
            state_path = self.output_dir / "last.state.pt" if resume is True else Path(resume)
        if model is None:
            model = model_for_training(
                config, self.topology, resume_from=_weights_of(state_path) if state_path else None
            )
        self.model = model.to(self.device)
        body_model = load_body_model(config)  # ground truth for has_smpl rows; the regressor's losses
        has_regressor = getattr(self.model.config, "smpl_parameter_regressor", False)
        self.criterion = MeshCriterion(self.topology, config.loss, body_model=body_model if has_regressor else None).to(
            self.device
        )
        self.train_dataset = (
            train_dataset
            if train_dataset is not None
            else build_dataset(config, config.data.train, self.topology, train=True, body_model=body_model)
        )
        if len(self.train_dataset) == 0:
            raise FastMetroError(f"{config.data.train}: the training dataset has no rows")
        if val_dataset is None and config.data.val:
            val_dataset = build_dataset(config, config.data.val, self.topology, train=False, body_model=body_model)
        if val_dataset is not None and config.data.max_val_samples:
            count = min(config.data.max_val_samples, len(val_dataset))
            val_dataset = torch.utils.data.Subset(val_dataset, range(count))
        self.val_dataset = val_dataset
        if config.train.freeze_batchnorm:
            freeze_batchnorm(self.model)  # before collecting the trainable parameters
        if config.optim.backbone_lr_scale == 0:
            freeze_backbone(self.model)
        if config.data.cached_feature_passes:
            if self.dist.enabled:
                raise FastMetroError("data.cached_feature_passes runs in one process (not under torchrun)")
            self.train_dataset = cached_features(
                self.model,
                self.train_dataset,
                config.data.cached_feature_passes,
                self.output_dir / "feature_cache",
                batch_size=config.data.val_batch_size,
                num_workers=config.data.num_workers,
                seed=config.train.seed,
            )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config.optim),
            lr=config.optim.lr,
            weight_decay=config.optim.weight_decay,
            eps=config.optim.eps,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, config))
        self.amp_dtype = autocast_dtype(config.train.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self._grad_norms: list[torch.Tensor] = []  # kept on the device: no sync per step
        self.best_metric: float | None = None
        if state_path is not None:
            self.load_state(state_path)
        if (
            config.train.sync_batchnorm
            and not config.train.freeze_batchnorm
            and self.dist.enabled
            and self.device.type == "cuda"
        ):
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ddp_model = self.model
        if self.dist.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.train.find_unused_parameters,
            )

    # ------------------------------------------------------------------ data
    def train_loader(self) -> SafeLoader:
        data = self.config.data
        weights = None
        if hasattr(self.train_dataset, "weights") and getattr(self.train_dataset, "weights", None) is not None:
            weights = self.train_dataset.sample_weights()
        sampler = distributed.TrainSampler(
            len(self.train_dataset),
            data.batch_size,
            seed=self.config.train.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            start_step=self.step,
            weights=weights,
        )
        # Worker seeds come from this generator, not the global RNG: resuming stays exact.
        return create_loader(
            self.train_dataset,
            batch_size=data.batch_size,
            sampler=sampler,
            num_workers=0 if data.cached_feature_passes else data.num_workers,  # in memory already
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            seed=self.config.train.seed * 7919 + self.step * 31 + self.dist.rank,
        )

    # ------------------------------------------------------------------ state files
    def save(self, name: str = "last") -> None:
        """Write ``{name}.safetensors`` (+ JSON) and, for ``last``, the training state."""
        if not self.dist.is_main:
            return

        save_checkpoint(self.model, self.output_dir / f"{name}.safetensors")
        if name != "last":
            return
        state = {
            "format": STATE_FORMAT,
            "step": self.step,
            "best_metric": self.best_metric,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "world_size": self.dist.world_size,
        }
        atomic_save(self.output_dir / "last.state.pt", lambda tmp: torch.save(state, tmp))

    def load_state(self, state_path: Path) -> None:
        """Optimizer, scheduler, scaler, RNG and step of ``state_path``; the weights were loaded
        with the model (the model given to the trainer gets them here)."""
        weights_path = _weights_of(state_path)
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is a user error here
            raise FastMetroError(f"{state_path}: not a readable training state ({error})") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise FastMetroError(f"{state_path}: not a fastmetro training state")
        if self._given_model:
            load_strict(self.model, read_checkpoint(weights_path).state_dict, source=str(weights_path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_metric = state["best_metric"]
        self._resume_rng = state["rng"]
        if self.dist.is_main:
            logger.info("resumed from %s at step %d", state_path, self.step)

    def write_config(self) -> None:
        if self.dist.is_main:
            with atomic_write(self.output_dir / "config.yaml", "w") as handle:
                yaml.safe_dump(to_dict(self.config), handle, sort_keys=False)

    # ------------------------------------------------------------------ loop
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # Gradients on even if a library switched them off process-wide (Anny's body model does).
    @torch.enable_grad()
    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimiser step; raises :class:`NonFiniteLossError` before touching the weights."""
        batch = to_device(batch, self.device)
        with self._autocast():
            if "features" in batch:  # cached backbone features (one process, see cached_head)
                outputs = self.model.forward_from_features(batch["features"])
            else:
                outputs = self.ddp_model(batch["image"])
        terms = self.criterion(outputs, batch)  # fp32, outside autocast
        loss = terms["total"]
        finite = distributed.all_reduce_min(torch.isfinite(loss.detach()).float().reshape(1))
        if finite.item() < 1:
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.step + 1}: stopping; no checkpoint written for "
                f"this step (last good one: {self.output_dir / 'last.safetensors'} if saved)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.optim.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.optim.clip_grad_norm)
            self._grad_norms.append(norm.detach())  # before clipping
            if not self.scaler.is_enabled() and not torch.isfinite(norm):
                raise NonFiniteLossError(f"non-finite gradient norm at step {self.step + 1}: stopping")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {name: value.detach() for name, value in terms.items()}

    @property
    def grad_norms(self) -> list[float]:
        """Gradient norms (before clipping) of every step so far."""
        return [float(norm) for norm in self._grad_norms]

    def run_evaluation(self) -> dict:
        setup = EvalSetup(
            topology=self.topology,
            device=self.device,
            autocast_dtype=self.amp_dtype,
            hand_metrics=self.config.train.hand_metrics,
            progress=self.config.train.progress,
            dist=self.dist,
        )
        loader = eval_loader(self.val_dataset, self.config.data.val_batch_size, self.config.data.num_workers, self.dist)
        return evaluate(self.model, loader, setup)

    def _after_evaluation(self, values: dict, writer) -> None:
        key = "pa_mpjpe" if "pa_mpjpe" in values else "mpvpe"
        if self.dist.is_main:
            logger.info("step %d: %s", self.step, format_metrics(values))
            with open(self.output_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps({"step": self.step, **values}) + "\n")
            if writer is not None:
                for name, value in values.items():
                    if not name.startswith("num_"):
                        writer.add_scalar(f"val/{name}", value, self.step)
        if key in values and (self.best_metric is None or values[key] < self.best_metric):
            self.best_metric = values[key]
            self.save("best")

    def fit(self) -> TrainResult:
        config = self.config.train
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.step == 0 and self.dist.is_main:
            (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
        self.write_config()
        # Each rank draws its own dropout masks (same initial weights were drawn above).
        seed_everything(config.seed + 1_000 * self.dist.rank + 1)
        if getattr(self, "_resume_rng", None) is not None:
            set_rng_state(self._resume_rng)
        self.model.train()
        if config.freeze_batchnorm:
            freeze_batchnorm(self.model)  # model.train() switched them back
        if self.config.optim.backbone_lr_scale == 0:
            self.model.backbone.eval()  # a frozen encoder keeps its BatchNorm statistics
        writer = None
        if config.tensorboard and self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=self.step or None)
        progress = None
        if config.progress and self.dist.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            progress = tqdm(total=config.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        last_metrics: dict = {}
        global_batch = self.config.data.batch_size * self.dist.world_size
        images_per_second = 0.0
        try:
            data = iter(self.train_loader())
            window_start, window_steps = time.perf_counter(), 0
            running: dict[str, torch.Tensor | float] = {}
            while self.step < config.steps:
                batch = next(data)
                terms = self.train_step(batch)
                window_steps += 1
                for name, value in terms.items():  # tensors: read back only when logging
                    running[name] = running.get(name, 0.0) + value
                if progress is not None:
                    progress.update(1)
                    if self.step % config.log_every == 0:
                        progress.set_postfix(loss=f"{float(terms['total']):.3f}")
                if self.step % config.log_every == 0 or self.step == config.steps:
                    elapsed = time.perf_counter() - window_start
                    images_per_second = window_steps * global_batch / max(elapsed, 1e-9)
                    if writer is not None:
                        for name, total in running.items():
                            writer.add_scalar(f"train/loss_{name}", float(total) / window_steps, self.step)
                        writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
                        if self._grad_norms:
                            writer.add_scalar("train/grad_norm", float(self._grad_norms[-1]), self.step)
                        writer.add_scalar("train/images_per_second", images_per_second, self.step)
                    if progress is None and self.dist.is_main:
                        print(
                            f"step {self.step}/{config.steps}: loss {float(running['total']) / window_steps:.4f}, "
                            f"lr {self.optimizer.param_groups[0]['lr']:.2e}, {images_per_second:.1f} images/s",
                            flush=True,
                        )
                    running, window_start, window_steps = {}, time.perf_counter(), 0
                evaluate_now = self.val_dataset is not None and (
                    (config.eval_every and self.step % config.eval_every == 0) or self.step == config.steps
                )
                if evaluate_now:
                    last_metrics = self.run_evaluation()
                    self._after_evaluation(last_metrics, writer)
                if (
                    evaluate_now
                    or self.step == config.steps
                    or (config.checkpoint_every and self.step % config.checkpoint_every == 0)
                ):
                    self.save("last")
        finally:
            if progress is not None:
                progress.close()
            if writer is not None:
                writer.close()
        return TrainResult(self.step, self.best_metric, last_metrics, images_per_second)


def train(config: ExperimentConfig, resume: bool | str = False) -> TrainResult:
    """Train as configured (one process, or one of the processes torchrun started)."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.fit()
    finally:
        distributed.cleanup()

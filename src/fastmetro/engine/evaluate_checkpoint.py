"""``fastmetro eval``: a saved checkpoint on a dataset yaml -> metrics (mm)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

from fastmetro.data.body_models import load_body_model
from fastmetro.data.dataset import MeshDataset
from fastmetro.devices import resolve_device
from fastmetro.engine.config import load_config
from fastmetro.engine.distributed import DistInfo
from fastmetro.engine.evaluate import EvalSetup, eval_loader, evaluate, find_run_config
from fastmetro.errors import FastMetroError
from fastmetro.model.factory import load_model
from fastmetro.model.fast import inference_view
from fastmetro.model.spec import ModelSpec
from fastmetro.topology import Topology
from fastmetro.weights import resolve_checkpoint


def _given(overrides: Sequence[str], key: str) -> bool:
    return any(text.split("=", 1)[0].strip() == key for text in overrides)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict:
    """Evaluate ``checkpoint`` on the dataset ``data``; returns :func:`~fastmetro.engine.evaluate.evaluate`'s dict.

    The model, its topology and its input size come from the checkpoint (``fastmetro.load_model``);
    the data options from the training config saved beside it (if any), then ``overrides``:
    ``key=value`` strings of the training config (``data.image_size``, ``data.val_batch_size``,
    ``data.num_workers``, ``data.body_model``, ``data.max_val_samples``, ``data.skip_bad_rows``,
    ``model.topology``, ``model.data_dir``, ``model.name`` (official checkpoints), ``train.device``,
    ``train.hand_metrics``).
    """
    import torch

    overrides = list(overrides)
    checkpoint = resolve_checkpoint(checkpoint)  # "default": the shipped model
    run_config = find_run_config(checkpoint)
    config = load_config(run_config, overrides)
    topology = config.model.topology if run_config is not None or _given(overrides, "model.topology") else None
    name = config.model.name if _given(overrides, "model.name") else None
    target = resolve_device(config.train.device, "train.device")
    model = load_model(checkpoint, topology=topology, device=target, data_dir=config.model.data_dir, name=name).eval()
    model = inference_view(model)  # the fast path: the same function
    spec, mesh_topology = cast(ModelSpec, model.spec), cast(Topology, model.topology)  # every view keeps both
    image_size = config.data.image_size if _given(overrides, "data.image_size") else spec.input.image_size
    body_model = None
    if config.data.body_model:
        body_model = load_body_model(config.data.body_model)
    dataset: MeshDataset | torch.utils.data.Subset = MeshDataset(
        data,
        mesh_topology,
        train=False,
        image_size=image_size,
        body_model=body_model,
        skip_bad_rows=config.data.skip_bad_rows,
    )
    if config.data.max_val_samples:
        dataset = torch.utils.data.Subset(dataset, range(min(config.data.max_val_samples, len(dataset))))
    if len(dataset) == 0:
        raise FastMetroError(f"{data}: no samples to evaluate")
    dist = DistInfo(device=target)
    setup = EvalSetup(
        topology=mesh_topology, device=target, hand_metrics=config.train.hand_metrics, progress=progress, dist=dist
    )
    return evaluate(model, eval_loader(dataset, config.data.val_batch_size, config.data.num_workers, dist), setup)

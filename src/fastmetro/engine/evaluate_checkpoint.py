"""``fastmetro eval``: a saved checkpoint on a dataset yaml -> metrics (mm)."""

from __future__ import annotations

import os

from fastmetro.errors import FastMetroError


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    model_name: str | None = None,
    topology: str | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
    batch_size: int = 16,
    num_workers: int = 2,
    body_model: str | None = None,
    max_samples: int | None = None,
    skip_bad_rows: bool = False,
    device: str = "auto",
    hand_metrics: bool | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate ``checkpoint`` on the dataset ``data``; returns :func:`~fastmetro.engine.evaluate.evaluate`'s dict.

    Settings not given are taken from the training config saved beside the checkpoint (topology,
    image size), then from the checkpoint's JSON (topology name), then defaults (224 px).
    """
    import torch

    import fastmetro
    from fastmetro import topology as topology_module
    from fastmetro.data.dataset import MeshDataset
    from fastmetro.engine.distributed import DistInfo, pick_device
    from fastmetro.engine.evaluate import EvalSetup, eval_loader, evaluate, find_run_config
    from fastmetro.model.checkpoint import read_checkpoint
    from fastmetro.model.fast import inference_view

    run_config = find_run_config(checkpoint)
    loaded = read_checkpoint(checkpoint)
    saved_topology = ((loaded.config or {}).get("topology") or {}).get("name")
    if topology is None:
        topology = run_config.model.topology if run_config is not None else saved_topology
    if topology is None:
        raise FastMetroError(f"{checkpoint}: no topology recorded; pass --topology (anny, smpl, mano or .npz)")
    if data_dir is None and run_config is not None:
        data_dir = run_config.model.data_dir
    if image_size is None:
        image_size = run_config.data.image_size if run_config is not None else 224
    mesh = topology_module.load(topology, data_dir)
    target = pick_device(device)
    model = inference_view(fastmetro.create_model(model_name, topology=mesh, checkpoint=checkpoint).to(target).eval())
    loaded_body_model = None
    if body_model:
        from fastmetro.data.body_models import load_body_model

        loaded_body_model = load_body_model(body_model)
    dataset = MeshDataset(data, mesh, train=False, image_size=image_size, body_model=loaded_body_model,
                          skip_bad_rows=skip_bad_rows)
    if max_samples:
        dataset = torch.utils.data.Subset(dataset, range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise FastMetroError(f"{data}: no samples to evaluate")
    dist = DistInfo(device=target)
    setup = EvalSetup(topology=mesh, device=target, hand_metrics=hand_metrics, progress=progress, dist=dist)
    return evaluate(model, eval_loader(dataset, batch_size, num_workers, dist), setup)

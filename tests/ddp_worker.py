"""Worker for tests/test_ddp.py: train a tiny model for a few steps under torchrun, save results.

Usage: python -m torch.distributed.run --standalone --nproc_per_node N tests/ddp_worker.py OUT SMPL_DIR
(also runs without torchrun as a single process).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_helpers import TemplateDataset, state_vector, tiny_config  # noqa: E402

GLOBAL_BATCH = 4
STEPS = 3


def main(out: str, smpl_dir: str) -> None:
    import os

    from fastmetro import topology as topology_module
    from fastmetro.engine import distributed
    from fastmetro.engine.train import Trainer

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    topology = topology_module.load("smpl", smpl_dir)
    config = tiny_config(
        Path(out) / "run",
        steps=STEPS,
        batch_size=GLOBAL_BATCH // world_size,
        extra=[
            "optim.eps=1e-6",
            "train.freeze_batchnorm=true",  # BatchNorm batch statistics would depend on the per-process batch
            "data.val_batch_size=2",
        ],
    )
    trainer = Trainer(
        config,
        topology=topology,
        train_dataset=TemplateDataset(topology, size=7),
        val_dataset=TemplateDataset(topology, size=5, seed=1),
    )
    result = trainer.fit()
    if trainer.dist.is_main:
        torch.save(state_vector(trainer.model), Path(out) / "weights.pt")
        (Path(out) / "metrics.json").write_text(json.dumps({**result.last_metrics, "grad_norms": trainer.grad_norms}))
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

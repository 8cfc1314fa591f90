"""Training throughput (images/s) of a FastMETRO preset: forward, criterion, backward, clipping, AdamW.

Data loading is excluded (random in-memory samples), so this measures the model's training cost.

    python benchmarks/train_throughput.py                                   # S-R50, 224 px, CPU, batch 2 and 4
    python benchmarks/train_throughput.py --batch-sizes 32 64 --precision bf16 --device cuda
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class RandomSamples(torch.utils.data.Dataset):
    """Samples in the dataset format with random content (all ground truth available)."""

    def __init__(self, topology, size: int, image_size: int):
        self.topology, self.size, self.image_size = topology, size, image_size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        joints, vertices = self.topology.num_joints, self.topology.num_vertices
        return {
            "image": torch.randn(3, self.image_size, self.image_size, generator=generator),
            "joints_2d": torch.cat([torch.rand(joints, 2, generator=generator) * 2 - 1, torch.ones(joints, 1)], 1),
            "joints_3d": torch.cat([torch.randn(joints, 3, generator=generator) * 0.3, torch.ones(joints, 1)], 1),
            "vertices": torch.randn(vertices, 3, generator=generator) * 0.3,
            "has_joints_2d": torch.tensor(1.0),
            "has_joints_3d": torch.tensor(1.0),
            "has_vertices": torch.tensor(1.0),
            "key": str(index),
        }


def measure(args, batch_size: int) -> tuple[float, float]:
    from fastmetro.engine.config import load_config
    from fastmetro.engine.train import Trainer, load_topology, to_device

    config = load_config(
        None,
        [
            f"model.name={args.model}",
            f"model.topology={args.topology}",
            f"train.device={args.device}",
            f"train.precision={args.precision}",
            f"data.batch_size={batch_size}",
            "data.num_workers=0",
            f"data.image_size={args.image_size}",
            "train.tensorboard=false",
            "train.progress=false",
            "train.output_dir=/tmp/fastmetro-throughput",
            "train.deterministic=false",
        ]
        + ([f"model.data_dir={args.data_dir}"] if args.data_dir else []),
    )
    topology = load_topology(config)
    data = RandomSamples(topology, batch_size, args.image_size)
    trainer = Trainer(config, topology=topology, train_dataset=data)
    batch = to_device(next(iter(torch.utils.data.DataLoader(data, batch_size=batch_size))), trainer.device)
    for _ in range(args.warmup):
        trainer.train_step(batch)
    synchronize = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(batch)
    synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    return batch_size / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="FastMETRO-S-R50")
    parser.add_argument("--topology", default="anny", help="anny (default) / smpl / mano (with --data-dir)")
    parser.add_argument("--data-dir")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    print(
        f"{args.model} training throughput, {args.image_size} px, {args.topology} topology, {args.precision}, "
        f"{where}, load average {load}"
    )
    print(f"{'batch':>6s} {'s/step':>8s} {'images/s':>9s}")
    for batch_size in args.batch_sizes:
        images_per_second, seconds = measure(args, batch_size)
        print(f"{batch_size:6d} {seconds:8.2f} {images_per_second:9.2f}", flush=True)


if __name__ == "__main__":
    main()

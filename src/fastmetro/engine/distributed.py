"""Distributed data parallel helpers (PyTorch DDP, launched by ``torchrun``).

The same command runs on one CPU/GPU (no launcher) or under
``torchrun --nproc_per_node N fastmetro train ...`` (one process per GPU; several nodes with
``--nnodes``/``--rdzv-endpoint``; CPU processes with the gloo backend). ``torchrun`` sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; we only read them.

Samplers make the data order a pure function of (seed, step), which is what makes ``--resume``
exact and what makes N processes with batch b see the same samples as 1 process with batch N*b.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastmetro.devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun (``WORLD_SIZE`` > 1); else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, "train.device", local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_min(value: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum over processes (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate (N_rank, ...) tensors of every process along dim 0 (N_rank may differ).

    Used to gather per-sample results, so averages are over samples, not over processes.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    world_size = dist.get_world_size()
    count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.int64)
    gathered_counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(gathered_counts, count)
    counts = [int(c.item()) for c in gathered_counts]
    longest = max(counts)
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([chunk[:n] for chunk, n in zip(gathered, counts)])


class TrainSampler(torch.utils.data.Sampler[int]):
    """Infinite, resumable, sharded training order.

    The global order is a concatenation of epochs, each a permutation of the dataset (or, with
    ``weights``, a weighted draw with replacement) from a generator seeded by ``(seed, epoch)``.
    Step ``t`` consumes global positions ``[t*G, (t+1)*G)`` with ``G = batch_size * world_size``;
    rank ``r`` takes the contiguous slice ``[t*G + r*b, t*G + (r+1)*b)``. So the union over ranks
    of step ``t``'s batches does not depend on the world size, and starting at ``start_step``
    reproduces exactly the samples an uninterrupted run would see.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        weights: torch.Tensor | None = None,
    ):
        if dataset_size < 1:
            raise ValueError("empty dataset")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is None:
            return torch.randperm(self.dataset_size, generator=generator)
        return torch.multinomial(self.weights, self.dataset_size, replacement=True, generator=generator)

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        step = self.start_step
        epoch, order = -1, None
        while True:
            begin = step * global_batch + self.rank * self.batch_size
            for position in range(begin, begin + self.batch_size):
                position_epoch, offset = divmod(position, self.dataset_size)
                if position_epoch != epoch:
                    epoch, order = position_epoch, self._epoch_order(position_epoch)
                yield int(order[offset])
            step += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs a length for len(loader)
        return 2**62


class EvalSampler(torch.utils.data.Sampler[int]):
    """Rank ``r`` of ``W`` evaluates samples ``r, r+W, r+2W, ...``: every sample exactly once.

    Unlike ``DistributedSampler`` nothing is padded, so no duplicate enters the averages.
    """

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, dataset_size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

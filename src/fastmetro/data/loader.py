"""A DataLoader whose worker errors reach the user as one line.

PyTorch re-raises an exception from a worker with the worker's whole traceback in its message.
:class:`~fastmetro.errors.FastMetroError` (and so :class:`~fastmetro.data.tsv.BadRowError`)
reduces that to its original line by itself, whatever loader ran it (the trainer's and the
evaluator's plain DataLoaders too); :class:`SafeLoader` also drops the chained worker traceback.
"""

from __future__ import annotations

import torch

from fastmetro.errors import FastMetroError, one_line_message


class SafeLoader:
    """Iterates a :class:`torch.utils.data.DataLoader`, turning worker errors into one line."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except FastMetroError as error:
                raise FastMetroError(one_line_message(str(error))) from None
            yield batch


def create_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    shuffle: bool = False,
    sampler=None,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int | None = None,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
) -> SafeLoader:
    """A DataLoader over sample dicts (keys collate to a list of str), wrapped in :class:`SafeLoader`:
    the one loader factory of training, evaluation and the demo.

    ``seed`` seeds the loader's own generator (shuffling, worker seeds), never the global RNG, so a
    resumed run draws what the uninterrupted one would. ``persistent_workers`` None: kept when
    there are workers.
    """
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers and num_workers > 0,
    )
    return SafeLoader(loader)


__all__ = ["SafeLoader", "create_loader", "one_line_message"]

"""The app's models: one per checkpoint, loaded once, each with its own worker thread.

A :class:`ModelSlot` owns a :class:`~fastmetro.inference.predictor.Predictor` and the renderers
its outputs need, both created and used on one thread (an offscreen OpenGL context belongs to the
thread that made it). Requests for a model wait in that thread's queue, so two requests never run
on one model at the same time, and every request shares the one loaded copy.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastmetro.errors import FastMetroError
from fastmetro.inference.outputs import RendererPool
from fastmetro.inference.predictor import Predictor


@dataclass(frozen=True)
class ModelSettings:
    """How every model of the app is run.

    Attributes:
        device: torch device.
        image_size: network input size; None: the training run's ``data.image_size`` when the
            checkpoint sits in a training folder, else the Predictor's default.
        topology: topology name/path for official ``.bin`` checkpoints (None: the checkpoint's).
        data_dirs: folders of the SMPL/MANO files (each model takes the first its topology loads from).
        batch_size: crops per network call (video frames are batched).
    """

    device: str = "cpu"
    image_size: int | None = None
    topology: str | None = None
    data_dirs: tuple[str, ...] = ()
    batch_size: int = 8


def checkpoint_labels(paths: list[Path]) -> list[str]:
    """Names shown in the page: file names, with parent folders only where needed to tell them
    apart (never the machine's full paths)."""
    labels = []
    for path in paths:
        parts = path.parts
        depth = 1
        while depth < len(parts) and sum(p.parts[-depth:] == parts[-depth:] for p in paths) > 1:
            depth += 1
        labels.append("/".join(parts[-depth:]))
    seen: dict[str, int] = {}
    unique = []
    for label in labels:  # the same file given twice
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


class ModelSlot:
    """One checkpoint: loaded on first use on its own thread, then shared by every request."""

    def __init__(self, label: str, checkpoint: Path, settings: ModelSettings, detector=None):
        self.label = label
        self.checkpoint = Path(checkpoint)
        self.settings = settings
        self.detector = detector
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastmetro-model")
        self._predictor = None
        self._pool = None
        self._loaded = threading.Event()

    def load(self) -> Future:
        """Start loading (idempotent); the future holds the predictor or the load's error."""
        return self._executor.submit(self._ensure_loaded)

    def _ensure_loaded(self):
        if self._predictor is None:
            # None: the input size the checkpoint was trained for (its spec).
            sized = {} if self.settings.image_size is None else {"image_size": self.settings.image_size}
            errors = []
            for data_dir in self.settings.data_dirs or (None,):
                try:
                    self._predictor = Predictor(
                        checkpoint=self.checkpoint,
                        topology=self.settings.topology,
                        device=self.settings.device,
                        batch_size=self.settings.batch_size,
                        data_dir=data_dir,
                        **sized,
                    )
                    break
                except FastMetroError as error:  # e.g. the SMPL folder for a MANO model: try the next
                    errors.append(error)
            else:
                raise errors[-1]
            self._pool = RendererPool()
            self._loaded.set()
        return self._predictor

    def run(self, job, *args, **kwargs):
        """``job(predictor, renderer_pool, *args, **kwargs)`` on this model's thread; waits for it
        and returns its result (or raises its exception)."""

        def call():
            predictor = self._ensure_loaded()
            return job(predictor, self._pool, *args, **kwargs)

        return self._executor.submit(call).result()

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.run(lambda predictor, pool: predictor.joint_names)

    @property
    def is_hand(self) -> bool:
        return self.run(lambda predictor, pool: predictor.topology.is_hand)

    def close(self) -> None:
        def release():
            if self._pool is not None:
                self._pool.release()

        try:
            self._executor.submit(release).result(timeout=30)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)


def build_slots(checkpoints: list[Path], settings: ModelSettings, detector=None) -> list[ModelSlot]:
    """A slot per checkpoint (checked to exist), labelled by :func:`checkpoint_labels`."""
    for path in checkpoints:
        if not Path(path).is_file():
            raise FastMetroError(f"{path}: checkpoint not found")
    labels = checkpoint_labels([Path(p) for p in checkpoints])
    return [ModelSlot(label, Path(path), settings, detector) for label, path in zip(labels, checkpoints)]


__all__ = ["ModelSettings", "ModelSlot", "build_slots", "checkpoint_labels"]

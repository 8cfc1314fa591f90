"""Inference over many inputs: batching across images, one failure per bad input, output files.

The command line (``fastmetro infer``), the web app (``fastmetro app``) and Python users run
inference the same way::

    from fastmetro.inference import InferenceRunner, Predictor

    predictor = Predictor(checkpoint="model.safetensors")
    with InferenceRunner(predictor, out_dir="results", boxes=[(120, 20, 300, 490)]) as runner:
        summary = runner.run(["photo.jpg", "more_photos/", "clip.mp4"])
    summary.results[0].prediction.people[0].vertices_camera   # (V, 3) metres
    summary.failures                                           # [Failure(source, message)]

Inputs are image files, folders of images (sorted, not recursive), video files, ``(H, W, 3)`` uint8
RGB arrays or :class:`~fastmetro.inference.images.Frame` objects, in any mix. Images are collected
into batches of ``predictor.batch_size`` images whose crops go through the network together; a
batch that fails is rerun image by image, so a bad image (undecodable, a box outside it) fails on
its own and the others go on. Output folders are named by
:func:`fastmetro.inference.images.output_names` (never two inputs in one folder).

Per image, in ``out_dir/<name>/`` (nothing is written when ``out_dir`` is None):
``person_XX.{obj,ply,glb,json}`` (or only ``.json`` with ``mesh_files=False``), ``scene.glb``,
``overlay.png`` = [input | meshes over it | side view], and with ``attention_joint``
``attention_cross_person_XX_<joint>.png`` / ``attention_self_person_XX_<joint>.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.inference import attention, outputs, validate
from fastmetro.inference import boxes as box_sources
from fastmetro.inference import images as image_io
from fastmetro.inference.detector import detector_for
from fastmetro.inference.images import Frame
from fastmetro.inference.outputs import RendererPool
from fastmetro.inference.predictor import ImagePrediction, Predictor
from fastmetro.inference.rigging import write_person_rigs


@dataclass
class ImageResult:
    """One image done: its prediction, the files written, its warnings and the overlay panel.

    Attributes:
        name: output folder name (unique within the run).
        source: the input's path (``path#frameN`` for video frames, ``<array N>`` for arrays).
        prediction: people, camera and warnings (see :class:`ImagePrediction`).
        directory: ``out_dir/name``, or None when nothing is written.
        files: the files written, in order.
        overlay: (h, 3w, 3) uint8 [input | meshes over it | side view], or None without overlays.
        attention: ``{file name: (h, w, 3) uint8}`` attention images (with ``attention_joint``).
        index: frame number in a video, else None.
        image: the (H, W, 3) uint8 RGB image the people were found in (the tracker's appearance cue).
    """

    name: str
    source: str
    prediction: ImagePrediction
    directory: Path | None = None
    files: list[Path] = field(default_factory=list)
    overlay: np.ndarray | None = None
    attention: dict[str, np.ndarray] = field(default_factory=dict)
    index: int | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def warnings(self) -> list[str]:
        return self.prediction.warnings


@dataclass
class Failure:
    """An input that failed: its source and the one-line message (which names it)."""

    source: str
    message: str


@dataclass
class RunSummary:
    results: list[ImageResult]
    failures: list[Failure]

    @property
    def people(self) -> int:
        return sum(len(result.prediction.people) for result in self.results)


@dataclass
class _Job:
    frame: Frame
    image: np.ndarray
    boxes: list | None
    warnings: list[str]


BoxesSpec = box_sources.BoxSource | Sequence | Mapping | Callable | None


def box_source(boxes: BoxesSpec, side: str = "right") -> box_sources.BoxSource:
    """A :class:`~fastmetro.inference.boxes.BoxSource` from what a user passes as ``boxes``:
    None (whole image), a list of boxes (every image), a mapping ``{image key: boxes}``, a
    detector callable, or a ``BoxSource``."""
    if boxes is None:
        return box_sources.BoxSource()
    if isinstance(boxes, box_sources.BoxSource):
        return boxes
    if isinstance(boxes, Mapping):
        return box_sources.BoxesByImage(boxes, side=side)
    if callable(boxes):
        return box_sources.DetectorBoxes(boxes, side=side)
    return box_sources.GivenBoxes(list(boxes), side=side)


class InferenceRunner:
    """Run a :class:`Predictor` over many inputs (see the module docstring).

    Args:
        predictor: the model, crop size, batch size and camera settings.
        boxes: where the people are (see :func:`box_source`); a predictor's own detector is used
            when this is None.
        side: hand side for boxes that do not say (hand models).
        out_dir: folder for the outputs; None writes nothing.
        attention_joint: joint name or index whose attention maps are drawn (paper Fig. 6).
        overlay: render the overlay panel.
        max_side: longest side of the overlay panels' images (pixels).
        mesh_files: write ``.obj/.ply/.glb`` (else only each person's ``.json``).
        max_pixels: refuse larger images (checked before decoding).
        renderer_pool: a shared :class:`~fastmetro.inference.outputs.RendererPool` (else one
            is made on demand and released by :meth:`close`). Renderers belong to the thread
            that created them.
        rigger: a :class:`~fastmetro.inference.rigging.Rigger`: also write each person's fitted
            body-model parameters, rigged glb and BVH (needs ``out_dir``).
    """

    def __init__(
        self,
        predictor: Predictor,
        boxes: BoxesSpec = None,
        side: str = "right",
        out_dir: str | os.PathLike | None = None,
        attention_joint: int | str | None = None,
        overlay: bool = True,
        max_side: int = 1024,
        mesh_files: bool = True,
        max_pixels: int | None = None,
        renderer_pool=None,
        rigger=None,
    ):
        if side not in box_sources.SIDES:
            raise FastMetroError(f"side must be one of {box_sources.SIDES}, got {side!r}")
        if predictor.focal_length is not None:
            validate.positive_number("focal_length", predictor.focal_length)
        validate.positive_number("box_expand", predictor.box_expand, high=100.0)
        self.predictor = predictor
        self.boxes = box_source(boxes, side)
        if boxes is None and predictor.detector is not None:
            self.boxes = box_sources.DetectorBoxes(predictor.detector, side=side)
        if isinstance(self.boxes, box_sources.DetectorBoxes):  # MediaPipe: the palm detector for hand models
            self.boxes.detector = detector_for(self.boxes.detector, predictor.topology.is_hand)
        self.out_dir = None if out_dir is None else Path(out_dir)
        if self.out_dir is not None and self.out_dir.exists() and not self.out_dir.is_dir():
            raise FastMetroError(f"{self.out_dir}: exists and is not a folder")
        self.joint = None if attention_joint is None else predictor.joint_index(attention_joint)
        self.overlay = bool(overlay)
        self.max_side = validate.integer("max_side", max_side, 1)
        self.mesh_files = bool(mesh_files)
        self.max_pixels = None if max_pixels is None else validate.integer("max_pixels", max_pixels, 1)
        self._pool = renderer_pool
        self._own_pool = renderer_pool is None
        self.rigger = rigger

    # ------------------------------------------------------------------ public
    def run(self, inputs: Iterable, on_result: Callable | None = None) -> RunSummary:
        """Every input; ``on_result(item)`` is called with each :class:`ImageResult` or
        :class:`Failure` as it comes (for progress)."""
        results: list[ImageResult]
        failures: list[Failure]
        results, failures = [], []
        for item in self.iter_results(inputs):
            if isinstance(item, Failure):
                failures.append(item)
            else:
                results.append(item)
            if on_result is not None:
                on_result(item)
            if isinstance(item, ImageResult):
                item.image = None  # a long run keeps its results, not every input image
        return RunSummary(results, failures)

    def iter_results(self, inputs: Iterable) -> Iterator[ImageResult | Failure]:
        """:class:`ImageResult` or :class:`Failure` per image, in input order.

        Raises:
            FastMetroError: an input path that does not exist or an empty folder (before any work).
        """
        pending: list[_Job] = []
        for frame in self._frames(inputs):
            if isinstance(frame, Failure):
                yield frame
                continue
            try:
                image = frame.load(self.max_pixels)
                warnings: list[str] = []
                boxes = self.boxes(frame, image, warnings)
            except FastMetroError as error:
                yield Failure(frame.source, str(error))
                continue
            pending.append(_Job(frame, image, boxes, warnings))
            if len(pending) >= self.predictor.batch_size:
                yield from self._process(pending)
                pending = []
        yield from self._process(pending)

    def predict_one(self, image: np.ndarray, name: str = "image", source: str | None = None) -> ImageResult:
        """One (H, W, 3) uint8 RGB image; a failure raises its :class:`FastMetroError`."""
        frame = Frame(name=name, source=source or name, pixels=image)
        for item in self.iter_results([frame]):
            if isinstance(item, Failure):
                raise FastMetroError(item.message)
            return item
        raise FastMetroError(f"{frame.source}: no result")  # not reached: one frame in, one item out

    def close(self) -> None:
        """Release the renderers this runner made."""
        if self._own_pool and self._pool is not None:
            self._pool.release()
            self._pool = None

    def __enter__(self) -> InferenceRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _frames(self, inputs: Iterable) -> Iterator[Frame | Failure]:
        if isinstance(inputs, (str, os.PathLike, np.ndarray, Frame)):
            inputs = [inputs]
        # An iterator (e.g. a generator of Frames) is consumed lazily; paths need a list.
        inputs = inputs if isinstance(inputs, Iterator) else list(inputs)
        if isinstance(inputs, list):
            paths = [item for item in inputs if isinstance(item, (str, os.PathLike))]
            # Check every path first: a typo fails the run before any work.
            expanded = dict(zip(paths, (image_io.expand_inputs([p]) for p in paths)))
            all_paths = [p for group in expanded.values() for p in group]
            names = iter(image_io.output_names(all_paths))
        array_count = 0
        for item in inputs:
            if isinstance(item, Frame):
                yield item
            elif isinstance(item, np.ndarray):
                yield Frame(name=f"image_{array_count:04d}", source=f"<array {array_count}>", pixels=item)
                array_count += 1
            elif isinstance(item, (str, os.PathLike)) and isinstance(inputs, list):
                for path in expanded[item]:
                    yield from self._path_frames(path, next(names))
            else:
                raise FastMetroError(
                    f"cannot run on {type(item).__name__} inputs: give paths (in a list), "
                    "(H, W, 3) uint8 arrays or Frames"
                )

    @staticmethod
    def _path_frames(path: Path, name: str) -> Iterator[Frame | Failure]:
        if not image_io.is_video(path):
            yield Frame(name=name, source=str(path))
            return
        try:
            yield from image_io.iter_video(path, name)
        except FastMetroError as error:  # e.g. a corrupt stream: the frames before it stand
            yield Failure(str(path), str(error))

    def _process(self, jobs: list[_Job]) -> Iterator[ImageResult | Failure]:
        if not jobs:
            return
        items = [(job.image, job.boxes, job.frame.source) for job in jobs]
        try:
            predictions = self.predictor.predict_many(items, return_attention=self.joint is not None)
        except FastMetroError as error:
            if len(jobs) == 1:
                yield Failure(jobs[0].frame.source, str(error))
                return
            for job in jobs:  # find the image that failed; the others go on
                yield from self._process([job])
            return
        for job, prediction in zip(jobs, predictions):
            prediction.warnings[:0] = job.warnings  # box warnings first, as they happened
            result = ImageResult(job.frame.name, job.frame.source, prediction, index=job.frame.index, image=job.image)
            try:
                self._outputs(job, result)
            except OSError as error:
                yield Failure(job.frame.source, f"{job.frame.source}: cannot write outputs ({error})")
                continue
            yield result

    def _renderers(self):
        if self._pool is None:
            self._pool = RendererPool()
        return self._pool

    def _outputs(self, job: _Job, result: ImageResult) -> None:

        prediction, source = result.prediction, job.frame.source
        names = self.predictor.joint_names
        directory = None if self.out_dir is None else self.out_dir / job.frame.name
        result.directory = directory
        if directory is not None:
            if self.mesh_files:
                result.files += outputs.write_image_outputs(directory, prediction, names, source)
            else:
                directory.mkdir(parents=True, exist_ok=True)
                for index, person in enumerate(prediction.people):
                    record = outputs.person_record(person, names, source, prediction.image_size)
                    result.files.append(
                        outputs.write_bytes(directory / f"person_{index:02d}.json", json.dumps(record, indent=1) + "\n")
                    )
            if self.rigger is not None:
                result.files += write_person_rigs(directory, self.rigger, prediction)
        if self.overlay:
            result.overlay = outputs.overlay_panel(job.image, prediction, self._renderers(), self.max_side)
            if directory is not None:
                result.files.append(outputs.write_png(directory / "overlay.png", result.overlay))
        if self.joint is not None:
            self._attention(job, result, directory)

    def _attention(self, job: _Job, result: ImageResult, directory: Path | None) -> None:

        assert self.joint is not None  # only called with an attention joint
        name = self.predictor.joint_names[self.joint]
        for index, person in enumerate(result.prediction.people):
            stem = f"person_{index:02d}_{name}"
            cross = attention.cross_attention_image(job.image, person, self.joint, self.predictor.image_size)
            cross, _ = outputs.scaled_view(cross, person.intrinsics, self.max_side)
            self_view = attention.self_attention_image(
                job.image, person, self.joint, self.predictor.topology, self._renderers()
            )
            for kind, picture in (("cross", cross), ("self", self_view)):
                file_name = f"attention_{kind}_{stem}.png"
                result.attention[file_name] = picture
                if directory is not None:
                    result.files.append(outputs.write_png(directory / file_name, picture))


__all__ = ["InferenceRunner", "ImageResult", "Failure", "RunSummary", "box_source"]

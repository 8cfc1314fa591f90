"""The rows of a dataset yaml, decoded but not augmented (:class:`TSVDataset`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# A module reference, not `from ... import`: fastmetro.data.labels imports this package's errors.
import fastmetro.data.labels as labels
from fastmetro.data.tsv.decode import decode_image, parse_hw, parse_label_json
from fastmetro.data.tsv.errors import BadRowError
from fastmetro.data.tsv.index import TSVFile
from fastmetro.data.tsv.spec import read_yaml
from fastmetro.errors import FastMetroError
from fastmetro.io import load_npy


@dataclass
class RawRow:
    """One decoded row: image (H, W, 3) uint8 RGB, label dict, vertices (V0, 3) float32 or None."""

    key: str
    image: np.ndarray
    label: dict
    vertices: np.ndarray | None = None
    hw: tuple[int, int] | None = None
    source_index: int = 0
    row_index: int = 0


class TSVDataset:
    """Rows of a METRO dataset yaml (composite or not), decoded but not augmented.

    ``dataset[i]`` returns a :class:`RawRow`, or raises :class:`BadRowError` naming the file and
    the row key. Usable from several DataLoader workers (lazy per-process handles).
    """

    def __init__(self, yaml_path: str | os.PathLike):
        self.spec = read_yaml(yaml_path)
        self.yaml_path = self.spec.yaml_path
        self._img = [TSVFile(s.img) for s in self.spec.sources]
        self._label = [TSVFile(s.label) for s in self.spec.sources]
        self._hw = [TSVFile(s.hw) if s.hw is not None and s.hw.is_file() else None for s in self.spec.sources]
        for source, img, label, hw in zip(self.spec.sources, self._img, self._label, self._hw):
            if len(img) != len(label):
                raise FastMetroError(
                    f"{source.label}: {len(label)} label rows but {len(img)} image rows in {source.img.name}"
                )
            if hw is not None and len(hw) != len(label):
                raise FastMetroError(f"{source.hw}: {len(hw)} rows but {len(label)} label rows in {source.label.name}")
            if source.vertices is not None and not source.vertices.is_file():
                raise FastMetroError(f"{self.yaml_path}: vertices file not found: {source.vertices}")
        self._vertices: list[np.ndarray | None] = [None] * len(self.spec.sources)
        if self.spec.rows is None:
            self.rows = np.stack([np.zeros(len(self._label[0]), np.int64), np.arange(len(self._label[0]))], 1)
        else:
            self.rows = self.spec.rows
        for source_index, label in enumerate(self._label):
            used = self.rows[self.rows[:, 0] == source_index, 1]
            if len(used) and (used.min() < 0 or used.max() >= len(label)):
                raise FastMetroError(
                    f"{self.yaml_path}: linelist names rows outside 0..{len(label) - 1} of {label.path.name}"
                )

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_vertices"] = [None] * len(self._vertices)  # memmaps are re-opened per process
        return state

    def vertices_array(self, source_index: int) -> np.ndarray | None:
        """The (N, V0, 3) memory-mapped vertex side file of a source, or None."""
        path = self.spec.sources[source_index].vertices
        if path is None:
            return None
        if self._vertices[source_index] is None:
            array = load_npy(path, mmap=True, what="vertices")
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype.kind != "f":
                raise FastMetroError(
                    f"{path}: vertices must be a float (N, V, 3) array, got {array.dtype} {array.shape}"
                )
            self._vertices[source_index] = array
        return self._vertices[source_index]

    def key(self, index: int) -> str:
        source_index, row_index = (int(v) for v in self.rows[index])
        return self.spec.sources[source_index].key_prefix + self._label[source_index].key(row_index)

    def source_name(self, index: int) -> str:
        """The label tsv path of the row (for grouping and messages)."""
        return str(self.spec.sources[int(self.rows[index, 0])].label)

    def source_name_of(self, row: RawRow) -> str:
        """The label tsv path a decoded row came from."""
        return str(self.spec.sources[row.source_index].label)

    def label(self, index: int) -> tuple[str, dict]:
        """(key, label dict) without decoding the image (cheap)."""
        source_index, row_index = (int(v) for v in self.rows[index])
        label_file = self._label[source_index]
        columns = label_file[row_index]
        prefix = self.spec.sources[source_index].key_prefix
        key = prefix + columns[0]
        if len(columns) < 2:
            raise BadRowError(label_file.path, key, "label row has no label column (truncated row?)")
        return key, parse_label_json(columns[-1], label_file.path, key)

    def __getitem__(self, index: int) -> RawRow:
        source_index, row_index = (int(v) for v in self.rows[index])
        key, label = self.label(index)
        img_file = self._img[source_index]
        columns = img_file[row_index]
        prefix = self.spec.sources[source_index].key_prefix
        if len(columns) < 2:
            raise BadRowError(img_file.path, key, "image row has no image column (truncated row?)")
        if prefix + columns[0] != key:
            raise BadRowError(img_file.path, key, f"image row key {columns[0]!r} differs from the label row key")
        image = decode_image(columns[-1], img_file.path, key)
        hw = self._row_hw(source_index, row_index, key, image.shape[:2])
        vertices = None
        has_vertices, vertex_row = labels.vertex_fields(label, self._label[source_index].path, key)
        if has_vertices:
            vertices = self._row_vertices(source_index, vertex_row, key)
        return RawRow(key, image, label, vertices, hw, source_index, row_index)

    def _row_hw(self, source_index: int, row_index: int, key: str, image_hw: tuple[int, int]) -> tuple[int, int] | None:
        """The hw column of the row (None without an hw file); it must match the decoded image."""
        hw_file = self._hw[source_index]
        if hw_file is None:
            return None
        columns = hw_file[row_index]
        if self.spec.sources[source_index].key_prefix + columns[0] != key or len(columns) < 2:
            raise BadRowError(hw_file.path, key, f"hw row {columns[0][:40]!r} is not this row's size (truncated row?)")
        hw = parse_hw(columns[-1], hw_file.path, key)
        if hw != tuple(image_hw):
            raise BadRowError(
                hw_file.path, key, f"hw says {hw[0]}x{hw[1]} but the image is {image_hw[0]}x{image_hw[1]}"
            )
        return hw

    def _row_vertices(self, source_index: int, vertex_row: int, key: str) -> np.ndarray:
        array = self.vertices_array(source_index)
        source = self.spec.sources[source_index]
        if array is None:
            raise BadRowError(source.label, key, "label says has_vertices=1 but the yaml names no vertices file")
        assert source.vertices is not None  # the array was read from it
        if not 0 <= vertex_row < len(array):
            raise BadRowError(
                source.label, key, f"vertices_row {vertex_row} outside 0..{len(array) - 1} of {source.vertices.name}"
            )
        vertices = np.asarray(array[vertex_row], dtype=np.float32)
        if not np.isfinite(vertices).all():
            raise BadRowError(source.vertices, key, "vertices contain NaN or inf")
        return vertices

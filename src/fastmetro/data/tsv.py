"""METRO/FastMETRO TSV datasets: random-access reader and atomic writer.

File layout (the format the released METRO/FastMETRO code reads, plus one documented extension)
---------------------------------------------------------------------------------------------

A *shard* ``NAME`` in a folder is::

    NAME.img.tsv      key \\t base64(JPEG or PNG bytes)            one row per sample
    NAME.label.tsv    key \\t JSON list holding one dict (labels)   same rows, same order
    NAME.hw.tsv       key \\t [{"height": H, "width": W}]           (or key \\t "H W")
    *.lineidx         byte offset of every row of the .tsv with the same stem, one per line
    NAME.vertices.npy optional (N, V0, 3) float32/float16 ground-truth vertices (extension)
    NAME.yaml         {img, label, hw[, linelist][, vertices]} paths relative to the yaml

A ``linelist`` tsv lists the row indices to use, one per line. A *composite* yaml has
``composite: true``; ``img``, ``label``, ``hw`` (and optionally ``vertices``) are lists of paths
(or the path of a text file listing them, one per line) and ``linelist`` is a two-column tsv
``source_index \\t row_index``; a composite row key is ``<img tsv path as written>_<key>``.

Vertex extension: ``vertices`` in a shard yaml names an ``.npy`` memory-mapped at read time;
label fields ``has_vertices`` (0/1) and ``vertices_row`` (row of the ``.npy``, -1 for none) say
which row belongs to a label. See :mod:`fastmetro.data.labels` for every label field.

The reader opens file handles lazily *per process* (it notices a fork by the pid), so one
dataset object can be shared by several DataLoader workers. A ``.lineidx`` that is missing is
generated (atomically) on first use.

The writer (:class:`TSVDatasetWriter`) writes every file of a shard to temporary names and
renames them into place on a clean close, the yaml last: a shard whose yaml exists is complete;
a crash leaves no half shard (only ``.*.tmp`` files, removed on an exception).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from glob import escape as glob_escape
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write


def one_line_message(text: str) -> str:
    """The original one-line message inside an error text re-raised by a DataLoader worker."""
    if "Original Traceback" not in text:
        return text
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line:
            head, sep, tail = line.partition(": ")
            # "fastmetro.data.tsv.BadRowError: <message>"
            return tail if sep and "Error" in head and " " not in head else line
    return text


class BadRowError(FastMetroError):
    """One row of a dataset is unusable. ``str(error)`` = ``"<file>: row <key>: <problem>"``.

    PyTorch re-creates an exception raised in a DataLoader worker as ``type(error)(text)`` with
    the worker's traceback in ``text``; given one argument, this class keeps only the original
    line, so the user still sees one line naming the file and the row key.
    """

    def __init__(self, source: str, key: str | None = None, problem: str | None = None):
        if key is None and problem is None:
            message = one_line_message(str(source))
            self.source, self.key, self.problem = "", "", message
            super().__init__(message)
            return
        self.source, self.key, self.problem = str(source), str(key), str(problem)
        super().__init__(f"{self.source}: row {self.key!r}: {problem}")


# ----------------------------------------------------------------------------------- .lineidx
def lineidx_path(tsv_path: str | os.PathLike) -> Path:
    """``a/b.img.tsv`` -> ``a/b.img.lineidx`` (METRO naming)."""
    path = Path(tsv_path)
    return path.with_suffix(".lineidx")


def row_offsets(tsv_path: str | os.PathLike) -> np.ndarray:
    """(N,) byte offset of every non-empty row of a tsv (one pass over the file)."""
    offsets = []
    with open(tsv_path, "rb") as handle:
        position = 0
        for line in handle:
            if line.strip():
                offsets.append(position)
            position += len(line)
    return np.array(offsets, dtype=np.int64)


def generate_lineidx(tsv_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Write the byte offset of every row of ``tsv_path`` (atomically). Returns the path."""
    tsv_path = Path(tsv_path)
    out_path = Path(out_path) if out_path is not None else lineidx_path(tsv_path)
    offsets = row_offsets(tsv_path)
    with atomic_write(out_path, "w") as out:
        out.write("".join(f"{offset}\n" for offset in offsets.tolist()))
    return out_path


def _read_offsets(path: Path, source: Path) -> np.ndarray:
    try:
        text = path.read_text()
        return np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise FastMetroError(f"{path}: not a .lineidx file (one integer byte offset per line)") from None


class TSVFile:
    """Random access to the rows of one ``.tsv`` through its ``.lineidx``.

    ``file[i]`` returns the i-th row as a list of str columns. Safe to use after ``fork``:
    the handle is (re)opened in the process that reads.
    """

    def __init__(self, path: str | os.PathLike, generate_lineidx_if_missing: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise FastMetroError(f"{self.path}: tsv file not found")
        index = lineidx_path(self.path)
        if index.is_file():
            self.offsets = _read_offsets(index, self.path)
        elif not generate_lineidx_if_missing:
            raise FastMetroError(f"{index}: .lineidx file not found")
        else:
            try:
                generate_lineidx(self.path, index)
                self.offsets = _read_offsets(index, self.path)
            except OSError:  # read-only dataset folder: index in memory only
                self.offsets = row_offsets(self.path)
        self.size = self.path.stat().st_size
        if len(self.offsets) and (self.offsets.max() >= self.size or self.offsets.min() < 0):
            raise FastMetroError(
                f"{index}: offsets point past the end of {self.path.name} (stale .lineidx or truncated tsv; "
                "delete the .lineidx to regenerate it)"
            )
        self._handle = None
        self._pid = None
        self._ends: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self):  # picklable for spawn-started workers: never ship a handle
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None
        return state

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.path, "rb")  # noqa: SIM115 (kept open for random access)
            self._pid = os.getpid()
        return self._handle

    def _row_end(self, index: int) -> int:
        if self._ends is None:
            # a row ends where the next row (in file order) starts, the last one at end of file
            ordered = np.unique(self.offsets)
            position = np.searchsorted(ordered, self.offsets, side="right")
            self._ends = np.append(ordered, self.size)[position]
        return int(self._ends[index])

    def read_bytes(self, index: int) -> bytes:
        """The raw bytes of row ``index`` without its line ending."""
        if not 0 <= index < len(self.offsets):
            raise IndexError(f"{self.path}: row {index} out of range (0..{len(self.offsets) - 1})")
        handle = self._file()
        start = int(self.offsets[index])
        if hasattr(os, "pread"):  # positional read: no shared file position, safe from threads too
            data = os.pread(handle.fileno(), self._row_end(index) - start, start)
            return data.split(b"\n", 1)[0].rstrip(b"\r")
        handle.seek(start)
        return handle.readline().rstrip(b"\r\n")

    def __getitem__(self, index: int) -> list[str]:
        return self.read_bytes(index).decode("utf-8", errors="replace").split("\t")

    def key(self, index: int) -> str:
        return self.read_bytes(index).split(b"\t", 1)[0].decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_linelist(path: str | os.PathLike, columns: int = 1) -> np.ndarray:
    """Read a linelist tsv: (N,) row indices, or (N, 2) ``source, row`` for composites."""
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: linelist file not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            values = [int(part) for part in parts[:columns]]
        except ValueError:
            raise FastMetroError(f"{path}: line {number} is not {columns} integer column(s)") from None
        if len(values) != columns:
            raise FastMetroError(f"{path}: line {number} has {len(values)} column(s), expected {columns}")
        rows.append(values)
    array = np.array(rows, dtype=np.int64).reshape(-1, columns)
    return array[:, 0] if columns == 1 else array


# ----------------------------------------------------------------------------------- yaml
@dataclass(frozen=True)
class Source:
    """One physical shard: its tsv files and optional vertex side file (absolute paths)."""

    img: Path
    label: Path
    hw: Path | None = None
    vertices: Path | None = None
    key_prefix: str = ""  # composite keys: "<tsv path as written>_"


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset yaml says: its sources and which (source, row) pairs are used.

    ``rows`` is None for "every row of the single source".
    """

    yaml_path: Path
    sources: tuple[Source, ...]
    rows: np.ndarray | None = None  # (N, 2) int64 (source, row)
    composite: bool = False


def _resolve(base: Path, value: Any, what: str, yaml_path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise FastMetroError(f"{yaml_path}: '{what}' must be a file path, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _path_list(base: Path, value: Any, what: str, yaml_path: Path) -> list[str | None]:
    """A composite entry: a list of paths, or a text file listing them one per line."""
    if isinstance(value, str):
        listing = _resolve(base, value, what, yaml_path)
        if not listing.is_file():
            raise FastMetroError(f"{yaml_path}: list file for '{what}' not found: {listing}")
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if isinstance(value, list):
        return [None if item in (None, "", "null") else str(item) for item in value]
    raise FastMetroError(f"{yaml_path}: '{what}' must be a list of paths or a list file, got {type(value).__name__}")


def read_yaml(yaml_path: str | os.PathLike) -> DatasetSpec:
    """Parse a non-composite or composite dataset yaml (paths relative to the yaml's folder)."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise FastMetroError(f"{yaml_path}: dataset yaml not found")
    try:
        config = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as error:
        raise FastMetroError(f"{yaml_path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise FastMetroError(f"{yaml_path}: expected a mapping with 'img' and 'label' entries")
    base = yaml_path.parent
    for required in ("img", "label"):
        if required not in config:
            raise FastMetroError(f"{yaml_path}: missing '{required}' entry")
    if config.get("composite"):
        imgs = _path_list(base, config["img"], "img", yaml_path)
        labels = _path_list(base, config["label"], "label", yaml_path)
        hws = _path_list(base, config["hw"], "hw", yaml_path) if config.get("hw") else [None] * len(imgs)
        verts = _path_list(base, config["vertices"], "vertices", yaml_path) if config.get("vertices") else [None] * len(imgs)
        if not (len(imgs) == len(labels) == len(hws) == len(verts)) or not imgs:
            raise FastMetroError(
                f"{yaml_path}: composite lists differ in length (img {len(imgs)}, label {len(labels)}, "
                f"hw {len(hws)}, vertices {len(verts)})"
            )
        sources = tuple(
            Source(
                img=_resolve(base, img, "img", yaml_path),
                label=_resolve(base, label, "label", yaml_path),
                hw=_resolve(base, hw, "hw", yaml_path) if hw else None,
                vertices=_resolve(base, vert, "vertices", yaml_path) if vert else None,
                key_prefix=f"{img}_",
            )
            for img, label, hw, vert in zip(imgs, labels, hws, verts)
        )
        if "linelist" in config and config["linelist"]:
            rows = read_linelist(_resolve(base, config["linelist"], "linelist", yaml_path), columns=2)
        else:  # every row of every source, in order
            counts = [len(TSVFile(source.label)) for source in sources]
            rows = np.concatenate(
                [np.stack([np.full(count, i), np.arange(count)], 1) for i, count in enumerate(counts)]
            ).astype(np.int64)
        if len(rows) and (rows[:, 0].min() < 0 or rows[:, 0].max() >= len(sources)):
            raise FastMetroError(f"{yaml_path}: composite linelist names a source outside 0..{len(sources) - 1}")
        return DatasetSpec(yaml_path, sources, rows, composite=True)
    source = Source(
        img=_resolve(base, config["img"], "img", yaml_path),
        label=_resolve(base, config["label"], "label", yaml_path),
        hw=_resolve(base, config["hw"], "hw", yaml_path) if config.get("hw") else None,
        vertices=_resolve(base, config["vertices"], "vertices", yaml_path) if config.get("vertices") else None,
    )
    rows = None
    if config.get("linelist"):
        line_rows = read_linelist(_resolve(base, config["linelist"], "linelist", yaml_path))
        rows = np.stack([np.zeros_like(line_rows), line_rows], 1)
    return DatasetSpec(yaml_path, (source,), rows, composite=False)


# ----------------------------------------------------------------------------------- decoding
def decode_image(encoded: str | bytes, source: str = "<image>", key: str = "?") -> np.ndarray:
    """base64 text (or raw encoded bytes) of a JPEG/PNG -> (H, W, 3) uint8 RGB."""
    import cv2

    if isinstance(encoded, str):
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise BadRowError(source, key, f"image column is not valid base64 ({error})") from None
    else:
        raw = encoded
    image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR) if raw else None
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise BadRowError(source, key, "image bytes are not a decodable JPEG/PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def parse_label_json(text: str, source: str = "<label>", key: str = "?") -> dict:
    """The METRO label column: a JSON list holding one dict (a bare dict is accepted too)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError) as error:
        raise BadRowError(source, key, f"label is not valid JSON ({error.msg if hasattr(error, 'msg') else error})") from None
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict):
            raise BadRowError(source, key, f"label must be a JSON list holding one dict, got a list of {len(value)}")
        value = value[0]
    if not isinstance(value, dict):
        raise BadRowError(source, key, f"label must be a JSON dict (or a list of one), got {type(value).__name__}")
    return value


def parse_hw(text: str, source: str = "<hw>", key: str = "?") -> tuple[int, int]:
    """``[{"height": H, "width": W}]`` or ``"H W"`` -> (H, W)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        value = text
    try:
        if isinstance(value, list):
            value = value[0]
        if isinstance(value, dict):
            return int(value["height"]), int(value["width"])
        height, width = str(value).split()
        return int(height), int(width)
    except (KeyError, ValueError, IndexError, TypeError):
        raise BadRowError(source, key, f"hw column is not [{{'height': H, 'width': W}}] or 'H W': {text[:60]!r}") from None


# ----------------------------------------------------------------------------------- reader
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
        for source, img, label in zip(self.spec.sources, self._img, self._label):
            if len(img) != len(label):
                raise FastMetroError(
                    f"{source.label}: {len(label)} label rows but {len(img)} image rows in {source.img.name}"
                )
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
                raise FastMetroError(f"{self.yaml_path}: linelist names rows outside 0..{len(label) - 1} of {label.path.name}")

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
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as error:
                raise FastMetroError(f"{path}: cannot read vertices ({error})") from None
            if array.ndim != 3 or array.shape[2] != 3:
                raise FastMetroError(f"{path}: vertices must have shape (N, V, 3), got {array.shape}")
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
        hw = None
        hw_file = self._hw[source_index]
        if hw_file is not None and row_index < len(hw_file):
            hw_columns = hw_file[row_index]
            if len(hw_columns) >= 2:
                hw = parse_hw(hw_columns[-1], hw_file.path, key)
        vertices = None
        if int(label.get("has_vertices", 0) or 0):
            vertices = self._row_vertices(source_index, label, key)
        return RawRow(key, image, label, vertices, hw, source_index, row_index)

    def _row_vertices(self, source_index: int, label: dict, key: str) -> np.ndarray:
        array = self.vertices_array(source_index)
        source = self.spec.sources[source_index]
        if array is None:
            raise BadRowError(source.label, key, "label says has_vertices=1 but the yaml names no vertices file")
        try:
            vertex_row = int(label.get("vertices_row", -1))
        except (TypeError, ValueError):
            raise BadRowError(source.label, key, f"vertices_row must be an integer, got {label.get('vertices_row')!r}") from None
        if not 0 <= vertex_row < len(array):
            raise BadRowError(source.label, key, f"vertices_row {vertex_row} outside 0..{len(array) - 1} of {source.vertices.name}")
        vertices = np.asarray(array[vertex_row], dtype=np.float32)
        if not np.isfinite(vertices).all():
            raise BadRowError(source.vertices, key, "vertices contain NaN or inf")
        return vertices


# ----------------------------------------------------------------------------------- writer
def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def encode_image(image: np.ndarray | bytes, image_format: str = "jpg", jpeg_quality: int = 95) -> tuple[bytes, int, int]:
    """Encoded JPEG/PNG bytes (passed through) or an (H, W, 3) uint8 RGB array -> (bytes, H, W)."""
    import cv2

    if isinstance(image, (bytes, bytearray, memoryview)):
        raw = bytes(image)
        decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
        if decoded is None:
            raise ValueError("image bytes are not a decodable JPEG/PNG")
        return raw, int(decoded.shape[0]), int(decoded.shape[1])
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image array must be (H, W, 3) uint8 RGB, got {array.shape} {array.dtype}")
    bgr = np.ascontiguousarray(array[:, :, ::-1])
    if image_format.lower() in ("jpg", "jpeg"):
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif image_format.lower() == "png":
        ok, buffer = cv2.imencode(".png", bgr)
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if not ok:
        raise ValueError("image encoding failed")
    return buffer.tobytes(), int(array.shape[0]), int(array.shape[1])


class TSVDatasetWriter:
    """Write one METRO-format shard ``out_dir/NAME.{img,label,hw}.tsv`` + ``.lineidx`` + ``NAME.yaml``.

    Usage::

        with TSVDatasetWriter(out_dir, "train_00000") as writer:
            writer.add(key, image, label_dict, vertices=None)

    ``image``: encoded JPEG/PNG bytes (stored as is) or an (H, W, 3) uint8 RGB array (encoded as
    ``image_format``). ``label``: a JSON-able dict (numpy arrays allowed) of the fields in
    :mod:`fastmetro.data.labels`; NaN/inf are refused. ``vertices``: (V0, 3) metres, stored in
    ``NAME.vertices.npy`` (``vertices_dtype``); the writer sets ``has_vertices`` and
    ``vertices_row`` in the label. Files appear only on a clean exit (yaml last); an exception
    inside the ``with`` block removes the temporary files and leaves nothing behind.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        name: str,
        image_format: str = "jpg",
        jpeg_quality: int = 95,
        vertices_dtype: str | np.dtype = "float32",
        extra_yaml: dict | None = None,
    ):
        if not name or any(c in name for c in "/\\\t\n"):
            raise ValueError(f"invalid shard name {name!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.vertices_dtype = np.dtype(vertices_dtype)
        if self.vertices_dtype not in (np.dtype("float32"), np.dtype("float16")):
            raise ValueError("vertices_dtype must be float32 or float16")
        self.extra_yaml = dict(extra_yaml or {})
        self.num_rows = 0
        self.num_vertex_rows = 0
        self.vertex_count: int | None = None
        self._keys: set[str] = set()
        self._temps: dict[str, tuple[Path, Any]] = {}
        self._offsets: dict[str, list[int]] = {"img": [], "label": [], "hw": []}
        self._closed = False
        self._remove_stale_temporaries()
        for part in ("img", "label", "hw", "vertices"):
            self._open_temp(part)

    # file names
    @property
    def yaml_path(self) -> Path:
        return self.out_dir / f"{self.name}.yaml"

    def final_path(self, part: str) -> Path:
        return self.out_dir / (f"{self.name}.vertices.npy" if part == "vertices" else f"{self.name}.{part}.tsv")

    def _remove_stale_temporaries(self) -> None:
        """Temporaries a killed earlier writer of this shard left behind (never another shard's)."""
        for part in ("img.tsv", "label.tsv", "hw.tsv", "vertices.npy", "yaml", "img.lineidx", "label.lineidx",
                     "hw.lineidx"):
            for stale in self.out_dir.glob(f".{glob_escape(self.name)}.{part}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()

    def _open_temp(self, part: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.final_path(part).name}.", suffix=".tmp", dir=self.out_dir)
        self._temps[part] = (Path(tmp), os.fdopen(fd, "wb"))

    def _write_row(self, part: str, key: str, value: str) -> None:
        handle = self._temps[part][1]
        self._offsets[part].append(handle.tell())
        handle.write(f"{key}\t{value}\n".encode())

    def add(self, key: str, image: np.ndarray | bytes, label: dict, vertices: np.ndarray | None = None) -> None:
        """Append one sample. Raises ValueError on a bad key/label/vertices (nothing is written then)."""
        if self._closed:
            raise ValueError("writer is closed")
        key = str(key)
        if not key or any(c in key for c in "\t\r\n"):
            raise ValueError(f"row key must be non-empty without tabs/newlines: {key!r}")
        if key in self._keys:
            raise ValueError(f"duplicate row key {key!r}")
        label = _jsonable(dict(label))
        vertex_block = None
        if vertices is not None:
            vertex_block = np.asarray(vertices, dtype=np.float32)
            if vertex_block.ndim != 2 or vertex_block.shape[1] != 3:
                raise ValueError(f"{key}: vertices must be (V, 3), got {vertex_block.shape}")
            if not np.isfinite(vertex_block).all():
                raise ValueError(f"{key}: vertices contain NaN or inf")
            if self.vertex_count is None:
                self.vertex_count = vertex_block.shape[0]
            elif vertex_block.shape[0] != self.vertex_count:
                raise ValueError(f"{key}: {vertex_block.shape[0]} vertices, earlier rows have {self.vertex_count}")
            label["has_vertices"] = 1
            label["vertices_row"] = self.num_vertex_rows
        else:
            label["has_vertices"] = 0
            label["vertices_row"] = -1
        try:
            label_text = json.dumps([label], allow_nan=False, separators=(",", ":"))
        except ValueError:
            raise ValueError(f"{key}: label contains NaN or inf") from None
        except TypeError as error:
            raise ValueError(f"{key}: label is not JSON-serialisable ({error})") from None
        encoded, height, width = encode_image(image, self.image_format, self.jpeg_quality)
        self._write_row("img", key, base64.b64encode(encoded).decode("ascii"))
        self._write_row("label", key, label_text)
        self._write_row("hw", key, json.dumps([{"height": height, "width": width}]))
        if vertex_block is not None:
            self._temps["vertices"][1].write(vertex_block.astype(self.vertices_dtype).tobytes())
            self.num_vertex_rows += 1
        self._keys.add(key)
        self.num_rows += 1

    def close(self) -> Path:
        """Publish the shard (rename temporaries into place, yaml last). Returns the yaml path."""
        if self._closed:
            return self.yaml_path
        self._closed = True
        try:
            for _, handle in self._temps.values():
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            config: dict[str, Any] = {
                "img": self.final_path("img").name,
                "label": self.final_path("label").name,
                "hw": self.final_path("hw").name,
            }
            published = []
            # vertex side file: header + the raw rows streamed from the temp file
            vertex_tmp = self._temps["vertices"][0]
            if self.num_vertex_rows:
                with atomic_write(self.final_path("vertices")) as out:
                    header = {
                        "descr": np.lib.format.dtype_to_descr(self.vertices_dtype),
                        "fortran_order": False,
                        "shape": (self.num_vertex_rows, int(self.vertex_count), 3),
                    }
                    np.lib.format.write_array_header_2_0(out, header)
                    with open(vertex_tmp, "rb") as raw:
                        shutil.copyfileobj(raw, out, 1 << 22)
                config["vertices"] = self.final_path("vertices").name
            vertex_tmp.unlink(missing_ok=True)
            for part in ("img", "label", "hw"):
                with atomic_write(lineidx_path(self.final_path(part)), "w") as out:
                    out.write("".join(f"{offset}\n" for offset in self._offsets[part]))
                os.replace(self._temps[part][0], self.final_path(part))
                published.append(part)
            config["num_rows"] = self.num_rows
            config.update(self.extra_yaml)
            with atomic_write(self.yaml_path, "w") as out:
                yaml.safe_dump(config, out, sort_keys=False)
        except BaseException:
            self.abort()
            raise
        return self.yaml_path

    def abort(self) -> None:
        """Drop everything written so far (temporaries only; published files are untouched)."""
        self._closed = True
        for tmp, handle in self._temps.values():
            with contextlib.suppress(Exception):
                handle.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def __enter__(self) -> "TSVDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_composite_yaml(
    path: str | os.PathLike, shard_yaml_paths: Sequence[str | os.PathLike], extra_yaml: dict | None = None
) -> Path:
    """Write a composite yaml (+ its 2-column linelist) over several shard yamls.

    Paths inside are written relative to the composite yaml's folder when possible. Each
    shard's own linelist (if any) is honoured. Returns the yaml path.
    """
    path = Path(path)
    base = path.parent.resolve()
    if not shard_yaml_paths:
        raise FastMetroError(f"{path}: a composite dataset needs at least one shard yaml")

    def relative(p: Path) -> str:
        try:
            return os.path.relpath(p.resolve(), base)
        except ValueError:  # another drive (Windows)
            return str(p.resolve())

    imgs, labels, hws, verts, linelist_rows = [], [], [], [], []
    for source_index, shard in enumerate(shard_yaml_paths):
        spec = read_yaml(shard)
        if spec.composite:
            raise FastMetroError(f"{shard}: nested composite datasets are not supported")
        source = spec.sources[0]
        imgs.append(relative(source.img))
        labels.append(relative(source.label))
        hws.append(relative(source.hw) if source.hw is not None else None)
        verts.append(relative(source.vertices) if source.vertices is not None else None)
        rows = spec.rows[:, 1] if spec.rows is not None else np.arange(len(TSVFile(source.label)))
        linelist_rows.extend(f"{source_index}\t{int(row)}\n" for row in rows)
    linelist = path.with_name(f"{path.stem}.linelist.tsv")
    with atomic_write(linelist, "w") as out:
        out.write("".join(linelist_rows))
    config: dict[str, Any] = {"composite": True, "img": imgs, "label": labels}
    if all(hw is not None for hw in hws):
        config["hw"] = hws
    if any(v is not None for v in verts):
        config["vertices"] = verts
    config["linelist"] = linelist.name
    config["num_rows"] = len(linelist_rows)
    config.update(extra_yaml or {})
    with atomic_write(path, "w") as out:
        yaml.safe_dump(config, out, sort_keys=False)
    return path


def shard_is_complete(out_dir: str | os.PathLike, name: str) -> bool:
    """True if ``out_dir/NAME.yaml`` exists (the writer publishes it last)."""
    return (Path(out_dir) / f"{name}.yaml").is_file()


__all__ = [
    "BadRowError",
    "one_line_message",
    "DatasetSpec",
    "RawRow",
    "Source",
    "TSVDataset",
    "TSVDatasetWriter",
    "TSVFile",
    "decode_image",
    "encode_image",
    "generate_lineidx",
    "lineidx_path",
    "parse_hw",
    "parse_label_json",
    "read_linelist",
    "read_yaml",
    "row_offsets",
    "shard_is_complete",
    "write_composite_yaml",
]

"""Writing shards atomically (:class:`TSVDatasetWriter`) and composite yamls over them."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fastmetro.data.tsv.index import TSVFile, lineidx_path
from fastmetro.data.tsv.spec import read_yaml
from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write


def jsonable(value: Any) -> Any:
    """``value`` with numpy arrays/scalars turned into lists and Python numbers (for JSON)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def encode_image(
    image: np.ndarray | bytes, image_format: str = "jpg", jpeg_quality: int = 95
) -> tuple[bytes, int, int]:
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
        for part in (
            "img.tsv",
            "label.tsv",
            "hw.tsv",
            "vertices.npy",
            "yaml",
            "img.lineidx",
            "label.lineidx",
            "hw.lineidx",
        ):
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
        label = jsonable(dict(label))
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
                assert self.vertex_count is not None  # set by the first vertex row
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

    def __enter__(self) -> TSVDatasetWriter:
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

    linelist_rows: list[str]
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

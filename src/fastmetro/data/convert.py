"""Convert a folder of images + an annotation file into a METRO-format shard.

Annotation schema (``fastmetro data convert --images DIR --annotations ANN.json|ANN.npz``)
-----------------------------------------------------------------------------------------

JSON: a list of records (or ``{"images": [records]}``); NPZ: one array per field whose first
axis indexes the images (``file`` as a string array). Per image:

==============  =====================================================================================
``file``        image path relative to ``--images`` (JPEG/PNG stored as is; other formats as PNG);
                in an NPZ name the array ``image`` (``np.savez`` reserves ``file``)
``key``         optional row key (default: ``file``)
``center``      [x, y] px and ``scale`` (box side / 200), *or* ``bbox`` [x0, y0, w, h] px (then
                center = box centre, scale = ``bbox_scale`` * max(w, h) / 200; 1.2 as for 3DPW);
                neither: the whole image
``joints_2d``   (J, 2) or (J, 3) px [x, y(, visibility)]
``joints_3d``   (J, 3) or (J, 4) metres [x, y, z(, confidence)], camera axes x right, y down, z forward
``pose``        SMPL (72,) / MANO (48,) axis-angle, with ``betas`` (10,)
``vertices``    (V0, 3) metres (stored in the shard's ``.vertices.npy`` side file)
``joints_format``  "j24" (24 released joints) or "topology" (the topology's K joints); see labels.py
``gender``, ``camera`` ({fx, fy, cx, cy})  passed through
==============  =====================================================================================
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fastmetro.data.labels import parse_annotation
from fastmetro.data.tsv import BadRowError, TSVDatasetWriter
from fastmetro.data.tsv.writer import jsonable
from fastmetro.errors import FastMetroError
from fastmetro.io import load_npz

PASS_THROUGH = ("joints_format", "gender", "camera")


def read_annotations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records from a JSON list / ``{"images": [...]}`` or an NPZ of per-field arrays."""
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: annotation file not found")
    if path.suffix == ".npz":
        arrays = load_npz(path)  # plain arrays only: never unpickled
        if "file" not in arrays and "image" in arrays:  # np.savez cannot take a 'file' keyword
            arrays["file"] = arrays.pop("image")
        if "file" not in arrays:
            raise FastMetroError(f"{path}: needs an 'image' (or 'file') array of image paths")
        count = len(arrays["file"]) if arrays["file"].ndim else 0
        for name, array in arrays.items():
            if array.ndim == 0 or len(array) != count:
                raise FastMetroError(
                    f"{path}: array '{name}' has shape {array.shape}, one row per image ('file' has {count})"
                )
        return [{name: array[i] for name, array in arrays.items()} for i in range(count)]
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise FastMetroError(
            f"{path}: not valid JSON ({getattr(error, 'msg', None) or type(error).__name__})"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        data = data["images"]
    if not isinstance(data, list) or not all(isinstance(record, dict) for record in data):
        raise FastMetroError(f"{path}: expected a list of per-image records (or {{'images': [...]}})")
    return data


def _numbers(record: dict, name: str, where: str, shape: tuple | None = None) -> np.ndarray:
    """A finite float64 array of the record's field ``name`` (reshaped to ``shape`` if given)."""
    try:
        array = np.asarray(record[name], dtype=np.float64)
        if shape is not None:
            array = array.reshape(shape)
    except (TypeError, ValueError):
        wanted = "numbers" if shape is None else "one number" if shape == () else f"{shape[0]} numbers"
        raise FastMetroError(f"{where}: '{name}' must be {wanted}") from None
    if not np.isfinite(array).all():
        raise FastMetroError(f"{where}: '{name}' contains NaN or inf")
    return array


def _points(record: dict, name: str, columns: int, where: str) -> np.ndarray:
    array = _numbers(record, name, where)
    if array.ndim != 2 or array.shape[1] not in (columns - 1, columns):
        raise FastMetroError(f"{where}: '{name}' must be (J, {columns - 1}) or (J, {columns}), got {array.shape}")
    if array.shape[1] == columns - 1:
        array = np.concatenate([array, np.ones((len(array), 1))], 1)
    return array


def _box(record: dict, image_hw: tuple[int, int], where: str, bbox_scale: float) -> tuple[list[float], float]:
    height, width = image_hw
    if "center" in record and "scale" in record:
        return _numbers(record, "center", where, (2,)).tolist(), float(_numbers(record, "scale", where, ()))
    if "bbox" in record:
        x0, y0, box_w, box_h = _numbers(record, "bbox", where, (4,)).tolist()
        return [x0 + box_w / 2.0, y0 + box_h / 2.0], bbox_scale * max(box_w, box_h) / 200.0
    return [(width - 1) / 2.0, (height - 1) / 2.0], max(height, width) / 200.0


def record_to_label(record: dict, image_hw: tuple[int, int], where: str, bbox_scale: float = 1.2) -> dict:
    """One annotation record -> a METRO label dict (released field names), validated as
    :func:`fastmetro.data.labels.parse_annotation` (what ``data check`` applies) would."""
    label: dict[str, Any] = {}
    label["center"], label["scale"] = _box(record, image_hw, where, bbox_scale)
    if "joints_2d" in record:
        label["2d_joints"] = _points(record, "joints_2d", 3, where)
    label["has_2d_joints"] = int("joints_2d" in record)
    if "joints_3d" in record:
        label["3d_joints"] = _points(record, "joints_3d", 4, where)
    label["has_3d_joints"] = int("joints_3d" in record)
    if "pose" in record or "betas" in record:
        if "pose" not in record or "betas" not in record:
            raise FastMetroError(f"{where}: 'pose' and 'betas' go together")
        label["pose"] = _numbers(record, "pose", where).reshape(-1)
        label["betas"] = _numbers(record, "betas", where).reshape(-1)
    label["has_smpl"] = int("pose" in record)
    for name in PASS_THROUGH:
        if name in record:
            value = record[name]
            label[name] = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    try:  # the one definition of a valid label (JSON round trip: what the reader will see)
        parse_annotation(json.loads(json.dumps(jsonable(label))), "", where, image_hw=image_hw)
    except BadRowError as error:
        raise FastMetroError(f"{where}: {error.problem}") from None
    except (TypeError, ValueError) as error:  # not JSON-serialisable pass-through values
        raise FastMetroError(f"{where}: a field cannot be stored as JSON ({error})") from None
    return label


def convert(
    images_dir: str | os.PathLike,
    annotations: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str = "train",
    image_format: str = "keep",
    bbox_scale: float = 1.2,
    progress: bool = False,
) -> Path:
    """Write ``out_dir/NAME.yaml`` (+ tsv files) from images and annotations. Returns the yaml."""
    import cv2

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FastMetroError(f"{images_dir}: image folder not found")
    if not (math.isfinite(bbox_scale) and bbox_scale > 0):
        raise FastMetroError(f"--bbox-scale must be a positive number, got {bbox_scale}")
    if not name or any(c in name for c in "/\\\t\n\r") or name.startswith("."):
        raise FastMetroError(f"--name {name!r}: a shard name is a plain file name (no '/', no leading '.')")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise FastMetroError(f"{out_dir}: output exists and is not a folder")
    records = read_annotations(annotations)
    if not records:
        raise FastMetroError(f"{annotations}: no records")
    iterable: Iterable[dict[str, Any]] = records
    if progress:
        from tqdm import tqdm

        iterable = tqdm(records, desc="converting", unit="image")
    store_format = "png" if image_format == "keep" else image_format  # "keep": other formats -> lossless PNG
    with TSVDatasetWriter(out_dir, name, image_format=store_format) as writer:
        for number, record in enumerate(iterable):
            if "file" not in record and "image" in record:
                record = {**record, "file": record["image"]}
            if "file" not in record:
                raise FastMetroError(f"{annotations}: record {number} has no 'file'")
            relative = (
                record["file"].item()
                if isinstance(record["file"], np.ndarray) and record["file"].ndim == 0
                else record["file"]
            )
            if not isinstance(relative, str) or not relative:
                raise FastMetroError(
                    f"{annotations}: record {number}: 'file' must be an image path, got {relative!r:.40}"
                )
            where = f"{annotations}: record {number} ({relative})"
            image_path = images_dir / relative
            if not image_path.is_file():
                raise FastMetroError(f"{where}: image not found at {image_path}")
            raw = image_path.read_bytes()
            decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
            if decoded is None:
                raise FastMetroError(f"{where}: {image_path} is not a readable image")
            keep = image_format == "keep" and image_path.suffix.lower() in (".jpg", ".jpeg", ".png")
            image = raw if keep else np.ascontiguousarray(decoded[:, :, ::-1])
            label = record_to_label(record, decoded.shape[:2], where, bbox_scale)
            vertices = None
            if "vertices" in record:
                vertices = _numbers(record, "vertices", where)
                if vertices.ndim != 2 or vertices.shape[1] != 3:
                    raise FastMetroError(f"{where}: 'vertices' must be a finite (V, 3) array, got {vertices.shape}")
            key = str(record.get("key", relative))
            try:
                writer.add(key, image, label, vertices=vertices)
            except ValueError as error:
                raise FastMetroError(f"{where}: {error}") from None
    return writer.yaml_path


__all__ = ["convert", "read_annotations", "record_to_label"]

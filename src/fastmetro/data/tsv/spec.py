"""What a dataset yaml says: its shards (sources) and which rows are used."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fastmetro.data.tsv.index import TSVFile, read_linelist
from fastmetro.errors import FastMetroError


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


def _describe(value: Any) -> str:
    """A short description of a yaml value for messages (never the repr of a whole structure)."""
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_text(path: Path, what: str) -> str:
    """A text file the dataset names, as UTF-8 (a one-line error otherwise)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise FastMetroError(f"{path}: {what} is not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise FastMetroError(f"{path}: cannot read {what} ({error.strerror or error})") from None


def _resolve(base: Path, value: Any, what: str, yaml_path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise FastMetroError(f"{yaml_path}: '{what}' must be a file path, got {_describe(value)}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _path_list(base: Path, value: Any, what: str, yaml_path: Path) -> list[str | None]:
    """A composite entry: a list of paths, or a text file listing them one per line."""
    if isinstance(value, str):
        listing = _resolve(base, value, what, yaml_path)
        if not listing.is_file():
            raise FastMetroError(f"{yaml_path}: list file for '{what}' not found: {listing}")
        return [line.strip() for line in read_text(listing, "list file").splitlines() if line.strip()]
    if isinstance(value, list):
        items = []
        for item in value:
            if item is None or isinstance(item, str):
                items.append(None if item in (None, "", "null") else item)
            else:  # never str() a nested structure: a yaml alias bomb would expand
                raise FastMetroError(f"{yaml_path}: '{what}' must list file paths, got {_describe(item)} in the list")
        return items
    raise FastMetroError(f"{yaml_path}: '{what}' must be a list of paths or a list file, got {type(value).__name__}")


def read_yaml(yaml_path: str | os.PathLike) -> DatasetSpec:
    """Parse a non-composite or composite dataset yaml (paths relative to the yaml's folder)."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise FastMetroError(f"{yaml_path}: dataset yaml not found")
    try:
        config = yaml.safe_load(read_text(yaml_path, "dataset yaml"))
    except yaml.YAMLError as error:
        raise FastMetroError(f"{yaml_path}: not valid YAML ({str(error).splitlines()[0]})") from None
    except RecursionError:
        raise FastMetroError(f"{yaml_path}: not valid YAML (nested too deeply)") from None
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
        verts = (
            _path_list(base, config["vertices"], "vertices", yaml_path)
            if config.get("vertices")
            else [None] * len(imgs)
        )
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
    listed: np.ndarray | None = None  # None: every row
    if config.get("linelist"):
        line_rows = read_linelist(_resolve(base, config["linelist"], "linelist", yaml_path))
        listed = np.stack([np.zeros_like(line_rows), line_rows], 1)
    return DatasetSpec(yaml_path, (source,), listed, composite=False)

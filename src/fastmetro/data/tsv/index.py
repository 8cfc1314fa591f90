"""Random access to the rows of one ``.tsv`` through its ``.lineidx``, and linelist files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write


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


STALE = "stale .lineidx or changed tsv; delete the .lineidx to regenerate it"


def _read_offsets(path: Path, source: Path) -> np.ndarray:
    """The offsets of a ``.lineidx``: ASCII integers, strictly increasing, inside ``source``."""
    try:
        offsets = np.array(path.read_bytes().decode("ascii").split(), dtype=np.int64)
    except (ValueError, OverflowError):  # UnicodeDecodeError is a ValueError
        raise FastMetroError(f"{path}: not a .lineidx file (one integer byte offset per line, within int64)") from None
    return offsets


def _has_content(path: Path, length: int) -> bool:
    """True if the first ``length`` bytes of ``path`` hold anything but whitespace (read in chunks)."""
    with open(path, "rb") as handle:
        while length > 0:
            chunk = handle.read(min(length, 1 << 20))
            if not chunk:
                return False
            if chunk.strip():
                return True
            length -= len(chunk)
    return False


def _check_offsets(offsets: np.ndarray, index: Path, tsv: Path, size: int) -> None:
    """Offsets must increase strictly, stay inside the tsv and skip no row before the first."""
    if len(offsets) and (offsets.min() < 0 or offsets.max() >= size):
        raise FastMetroError(f"{index}: offsets point past the end of {tsv.name} ({STALE})")
    if np.any(np.diff(offsets) <= 0):
        raise FastMetroError(f"{index}: offsets are not strictly increasing ({STALE})")
    if _has_content(tsv, int(offsets[0]) if len(offsets) else size):
        raise FastMetroError(f"{index}: rows of {tsv.name} come before its first offset ({STALE})")


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
        self.index = index
        _check_offsets(self.offsets, index, self.path, self.size)
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
            # a row ends where the next row starts (offsets increase), the last one at end of file
            self._ends = np.append(self.offsets[1:], self.size)
        return int(self._ends[index])

    def read_bytes(self, index: int) -> bytes:
        """The raw bytes of row ``index`` without its line ending.

        The span up to the next offset must be exactly one row (the byte before it a newline,
        nothing but blank lines after it): a ``.lineidx`` of another version of the file is an
        error, never a misread row.
        """
        if not 0 <= index < len(self.offsets):
            raise IndexError(f"{self.path}: row {index} out of range (0..{len(self.offsets) - 1})")
        handle = self._file()
        start = int(self.offsets[index])
        before = 1 if start > 0 else 0
        end = self._row_end(index)
        if hasattr(os, "pread"):  # positional read: no shared file position, safe from threads too
            data = os.pread(handle.fileno(), end - start + before, start - before)
        else:
            handle.seek(start - before)
            data = handle.read(end - start + before)
        if before and data[:1] != b"\n":
            raise FastMetroError(
                f"{self.index}: offset of row {index} is not the start of a row of {self.path.name} ({STALE})"
            )
        row, _, rest = data[before:].partition(b"\n")
        if rest.strip() or len(data) != end - start + before:
            raise FastMetroError(f"{self.index}: row {index} of {self.path.name} is not where the index says ({STALE})")
        return row.rstrip(b"\r")

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
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise FastMetroError(f"{path}: not a linelist (not UTF-8 text)") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            values = [int(part) for part in parts[:columns]]
        except ValueError:
            raise FastMetroError(f"{path}: line {number} is not {columns} integer column(s)") from None
        if len(values) != columns:
            raise FastMetroError(f"{path}: line {number} has {len(values)} column(s), expected {columns}")
        if any(not 0 <= value < 2**63 for value in values):
            raise FastMetroError(f"{path}: line {number} has an index outside 0..2^63-1")
        rows.append(values)
    array = np.array(rows, dtype=np.int64).reshape(-1, columns)
    return array[:, 0] if columns == 1 else array

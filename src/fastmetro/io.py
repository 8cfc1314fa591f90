"""Safe file I/O shared by every area: a restricted unpickler and atomic writes.

Nothing in fastmetro calls plain ``pickle.load``/``torch.load`` on a file it did not write:
legacy SMPL/MANO/GraphCMR files are read with :class:`RestrictedUnpickler`, which resolves only
the classes listed in an allow-list, and refuses anything else (``os.system``, ``eval``...).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastmetro.errors import FastMetroError


class PickledObject:
    """Stand-in for a class we must not import (e.g. ``psbody.mesh.Mesh``, chumpy arrays).

    It records the attributes the pickle restores, so callers can read plain arrays from it.
    """

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) protocol
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


def _numpy_reconstruct():
    # numpy renamed numpy.core -> numpy._core in 2.0; pickles name either.
    from numpy._core.multiarray import _reconstruct, scalar

    return _reconstruct, scalar


def _scipy_sparse_classes() -> dict[tuple[str, str], Any]:
    import scipy.sparse as sp

    classes = {}
    for module in ("scipy.sparse.csc", "scipy.sparse._csc"):
        classes[(module, "csc_matrix")] = sp.csc_matrix
    for module in ("scipy.sparse.csr", "scipy.sparse._csr"):
        classes[(module, "csr_matrix")] = sp.csr_matrix
    for module in ("scipy.sparse.coo", "scipy.sparse._coo"):
        classes[(module, "coo_matrix")] = sp.coo_matrix
    return classes


def numpy_scipy_classes() -> dict[tuple[str, str], Any]:
    """The allow-list for pickles of numpy arrays and scipy sparse matrices."""
    reconstruct, scalar = _numpy_reconstruct()
    classes: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        classes[(module, "_reconstruct")] = reconstruct
        classes[(module, "scalar")] = scalar
    for name in ("float64", "float32", "int64", "int32", "uint32", "bool_"):
        classes[("numpy", name)] = getattr(np, name)
    classes.update(_scipy_sparse_classes())
    return classes


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the ``(module, name)`` pairs in ``allowed``.

    ``allowed`` maps a pair to the object to use in its place (the real class, or a
    stand-in such as :class:`PickledObject`). Any other global raises ``pickle.UnpicklingError``.
    """

    def __init__(self, file, allowed: Mapping[tuple[str, str], Any] | None = None, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self.allowed = dict(numpy_scipy_classes() if allowed is None else allowed)
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self.source}: refusing to load '{module}.{name}' (not in the allow-list of classes)"
            ) from None


def restricted_loads(
    data: bytes, allowed: Mapping[tuple[str, str], Any] | None = None, source: str = "<pickle>"
) -> Any:
    """Unpickle ``data`` allowing only ``allowed`` globals (default: numpy and scipy.sparse)."""
    return RestrictedUnpickler(io.BytesIO(data), allowed, source).load()


def load_npz_restricted(
    path: str | os.PathLike,
    allowed: Mapping[tuple[str, str], Any] | None = None,
    keys: list[str] | None = None,
) -> dict[str, Any]:
    """Read an ``.npz`` whose members may be pickled object arrays, without plain pickle.

    Plain numeric members are read by numpy with ``allow_pickle=False``; object members are
    unpickled with :class:`RestrictedUnpickler`. Errors name the file and the member.
    """
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: file not found")
    out: dict[str, Any] = {}
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise FastMetroError(f"{path}: not a readable .npz archive ({error})") from None
    with archive:
        for member in archive.namelist():
            key = member[:-4] if member.endswith(".npy") else member
            if keys is not None and key not in keys:
                continue
            raw = archive.read(member)
            stream = io.BytesIO(raw)
            try:
                version = np.lib.format.read_magic(stream)
                shape, fortran, dtype = np.lib.format._read_array_header(stream, version)  # noqa: SLF001
            except AttributeError:
                # Public fallbacks of older numpy releases.
                stream.seek(0)
                version = np.lib.format.read_magic(stream)
                reader = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }[version]
                shape, fortran, dtype = reader(stream)
            except ValueError as error:
                raise FastMetroError(f"{path}: member '{member}' is not a .npy array ({error})") from None
            if dtype.hasobject:
                try:
                    out[key] = RestrictedUnpickler(stream, allowed, f"{path}:{member}").load()
                except pickle.UnpicklingError as error:
                    raise FastMetroError(str(error)) from None
                except Exception as error:  # truncated or corrupt pickle stream
                    raise FastMetroError(f"{path}: member '{member}' is corrupt ({error})") from None
            else:
                stream.seek(0)
                out[key] = np.lib.format.read_array(stream, allow_pickle=False)
    if keys is not None:
        missing = [k for k in keys if k not in out]
        if missing:
            raise FastMetroError(f"{path}: missing array(s) {missing}")
    return out


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A crash or exception leaves the previous file (if any) untouched and no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_save(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Atomically create ``path`` with a library writer that takes a file name.

    ``writer(tmp_path)`` writes the content (e.g. ``safetensors.torch.save_file``); the
    result is renamed over ``path`` only if it succeeds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp_name)
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise

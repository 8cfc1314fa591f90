"""Safe file I/O shared by every area: a restricted unpickler, atomic writes and the cache folder.

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


def cache_dir() -> Path:
    """fastmetro's cache directory (``$FASTMETRO_CACHE`` or ``~/.cache/fastmetro``).

    Built topologies and fetched MediaPipe networks live here, each area in its own sub-folder.
    """
    return Path(os.environ.get("FASTMETRO_CACHE") or Path.home() / ".cache" / "fastmetro")


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

    classes: dict[tuple[str, str], Any] = {}
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
    """Unpickle ``data`` allowing only ``allowed`` globals (default: numpy and scipy.sparse).

    Raises a one-line :class:`FastMetroError` naming ``source``: for a refused global it names the
    global (``refusing to load 'posix.system'``), else says the bytes are not a readable pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), allowed, source).load()
    except Exception as error:  # noqa: BLE001 (any malformed stream: UnpicklingError, EOFError, ...)
        raise _pickle_error(error, source) from None


def _pickle_error(error: Exception, source: str) -> FastMetroError:
    message = _reason(error)
    if isinstance(error, pickle.UnpicklingError) and message.startswith(str(source)):
        return FastMetroError(message)  # our refusal, naming the global
    return FastMetroError(f"{source}: not a readable pickle ({message})")


def _reason(error: BaseException) -> str:
    """The first line of an exception's message (its type name if empty), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------------- .npy / .npz
NPY_MAGIC = b"\x93NUMPY"
# Deflate cannot expand data by more than about 1032:1, so a member cannot hold more bytes than this
# times its compressed size: a header declaring more is refused before anything is allocated.
_DEFLATE_MAX_RATIO = 1100


def _npy_header(stream, source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy header at the start of ``stream`` (bounded read)."""
    try:
        version = np.lib.format.read_magic(stream)
        if hasattr(np.lib.format, "_read_array_header"):
            return np.lib.format._read_array_header(stream, version)  # noqa: SLF001 (all versions)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        return reader[version](stream)
    except FastMetroError:
        raise
    except Exception as error:  # noqa: BLE001 (bad magic/header: ValueError, SyntaxError, zlib.error, ...)
        raise FastMetroError(f"{source}: not a .npy array ({_reason(error)})") from None


def _check_plain(shape, dtype: np.dtype, source: str, available: int) -> None:
    """Refuse object arrays (never unpickled) and headers declaring more bytes than ``available``."""
    if dtype.hasobject:
        raise FastMetroError(
            f"{source}: holds pickled Python objects; only plain numeric arrays are read "
            "(fastmetro never unpickles arrays)"
        )
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed > available:
        raise FastMetroError(
            f"{source}: header declares a {'x'.join(map(str, shape)) or 'scalar'} {dtype} array "
            f"({needed} bytes) but the file holds {max(available, 0)} (truncated or damaged)"
        )


def load_npy(path: str | os.PathLike, mmap: bool = False, what: str = "array") -> np.ndarray:
    """A plain (numeric/str, never pickled) ``.npy`` array, memory-mapped when ``mmap``.

    The header is checked against the file size before anything is allocated or mapped.
    Raises a one-line :class:`FastMetroError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: {what} file not found")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(NPY_MAGIC))
            if magic != NPY_MAGIC:
                kind = (
                    "is empty"
                    if not magic
                    else "is an .npz archive, not an .npy array"
                    if magic.startswith(b"PK")
                    else "has no NumPy .npy header"
                )
                raise FastMetroError(f"{path}: {what} file {kind}")
            handle.seek(0)
            shape, _, dtype = _npy_header(handle, str(path))
            offset = handle.tell()
        _check_plain(shape, dtype, str(path), path.stat().st_size - offset)
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FastMetroError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise FastMetroError(f"{path}: cannot read {what} ({_reason(error)})") from None


def load_npz(
    path: str | os.PathLike,
    keys: list[str] | None = None,
    unpickle: Mapping[tuple[str, str], Any] | None = None,
) -> dict[str, Any]:
    """The members of an ``.npz`` archive (name without ``.npy`` -> array), read safely.

    Every member's header is checked against what the archive can hold before any allocation;
    a corrupt compressed member, a bad CRC or a truncated member is a one-line
    :class:`FastMetroError` naming the file and the member. Object (pickled) members are refused
    unless ``unpickle`` gives an allow-list for :class:`RestrictedUnpickler`. ``keys``: read only
    these and require all of them.
    """
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: file not found")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise FastMetroError(f"{path}: not an .npz archive (a zip of .npy arrays): {_reason(error)}") from None
    out: dict[str, Any] = {}
    with archive:
        for info in archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if keys is None or key in keys:
                out[key] = _read_member(archive, info, f"{path}: member '{key}'", unpickle)
    missing = [k for k in keys or () if k not in out]
    if missing:
        raise FastMetroError(f"{path}: missing array(s) {missing}")
    return out


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, unpickle) -> Any:
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FastMetroError(f"{where} uses a compression .npz files do not use ({info.compress_type})")
    try:
        with archive.open(info) as stream:
            shape, _, dtype = _npy_header(stream, where)
            if dtype.hasobject and unpickle is not None:
                return RestrictedUnpickler(stream, unpickle, where).load()
            ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
            _check_plain(shape, dtype, where, min(info.file_size, info.compress_size * ratio) - stream.tell())
        with archive.open(info) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)
    except FastMetroError:
        raise
    except pickle.UnpicklingError as error:
        message = _reason(error)
        raise FastMetroError(message if message.startswith(where) else f"{where} is corrupt ({message})") from None
    except Exception as error:  # noqa: BLE001 (zlib.error, BadZipFile (CRC), EOFError, a corrupt pickle...)
        raise FastMetroError(f"{where} is corrupt ({type(error).__name__}: {_reason(error)})") from None


def load_npz_restricted(
    path: str | os.PathLike,
    allowed: Mapping[tuple[str, str], Any] | None = None,
    keys: list[str] | None = None,
) -> dict[str, Any]:
    """Read an ``.npz`` whose members may be pickled object arrays, without plain pickle.

    Plain members as :func:`load_npz`; object members are unpickled with
    :class:`RestrictedUnpickler` (``allowed``; default numpy and scipy.sparse). Errors name the
    file and the member, and a refused global by name.
    """
    return load_npz(path, keys=keys, unpickle=numpy_scipy_classes() if allowed is None else allowed)


def _writable_target(path: Path) -> Path:
    """``path`` may be created or replaced: never rename over a device, folder or other non-file."""
    if path.exists() and not path.is_file():
        raise FastMetroError(f"{path}: exists and is not a regular file; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A crash or exception leaves the previous file (if any) untouched and no partial file. A
    ``path`` that exists but is not a regular file (a device, a folder) is refused.
    """
    path = _writable_target(Path(path))
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


def write_bytes(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str: UTF-8) to ``path`` atomically, as an ordinary file (the umask applies)."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    # The atomic temporary file is private (0600); results are ordinary files.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


def atomic_save(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Atomically create ``path`` with a library writer that takes a file name.

    ``writer(tmp_path)`` writes the content (e.g. ``safetensors.torch.save_file``); the
    result is renamed over ``path`` only if it succeeds.
    """
    path = _writable_target(Path(path))
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

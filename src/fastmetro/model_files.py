"""Untrusted model files, read in one place with one policy: weights files (state dicts) and
SMPL/MANO model pickles.

:func:`read_state_dict` reads ``.safetensors`` or torch files weights-only (the backbone's ImageNet
weights, official checkpoints, a torchvision detector's weights all come through it).

The licensed model files (``SMPL_NEUTRAL.pkl``, ``basicModel_*.pkl``, ``MANO_RIGHT.pkl``) are
pickled dicts whose arrays are *chumpy* objects, often written by Python 2 at protocol 0-2.
:func:`read_model_pickle` reads them through :class:`fastmetro.io.RestrictedUnpickler` with
:func:`model_pickle_classes`: numpy, scipy sparse, and inert stand-ins for chumpy's classes, so
neither chumpy nor plain ``pickle.load`` is ever needed; :func:`chumpy_to_numpy` evaluates the
stand-ins. ``topology.mano`` (the MANO joint regressor) and ``data.body_models`` (the full SMPL/MANO
layer) both read through here, so one policy decides what such a file may contain.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fastmetro.errors import FastMetroError
from fastmetro.io import PickledObject, RestrictedUnpickler, numpy_scipy_classes


class ChumpyNode(PickledObject):
    """Inert stand-in for a pickled chumpy object; :func:`chumpy_to_numpy` evaluates it."""

    kind = "Ch"


def _chumpy_class(kind: str) -> type:
    return type(f"Chumpy{kind}", (ChumpyNode,), {"kind": kind})


# chumpy terminal arrays and the reordering nodes that appear in SMPL/MANO files.
_CHUMPY_KINDS = {
    ("chumpy.ch", "Ch"): "Ch",
    ("chumpy.reordering", "Select"): "Select",
    ("chumpy.reordering", "Reshape"): "Reshape",
    ("chumpy.reordering", "transpose"): "transpose",
    ("chumpy.reordering", "Transpose"): "transpose",
    ("chumpy.reordering", "Concatenate"): "Concatenate",
    ("chumpy.reordering", "Permute"): "transpose",
    ("chumpy.reordering", "Ravel"): "Ravel",
    ("chumpy.ch_ops", "add"): "add",
    ("chumpy.ch_ops", "subtract"): "subtract",
    ("chumpy.ch_ops", "multiply"): "multiply",
}


def _safe_reconstructor(cls, base, state=None):
    """``copy_reg._reconstructor`` (pickle protocols 0/1) for stand-ins and scipy sparse only.

    ``cls`` was itself resolved through the allow-list, so it is one of ours.
    """
    import scipy.sparse as sparse  # scipy is heavy to import; only old-protocol pickles need it here

    allowed = isinstance(cls, type) and (issubclass(cls, PickledObject) or issubclass(cls, sparse.spmatrix))
    if not allowed or base is not object:
        raise ValueError(f"refusing to reconstruct {cls!r}")
    return object.__new__(cls)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles (protocols 0-2) use it for bytes (latin1 only)."""
    if encoding not in ("latin1", "latin-1"):
        raise ValueError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


def model_pickle_classes() -> dict[tuple[str, str], Any]:
    """The allow-list for SMPL/MANO model files (``.pkl``, or ``.npz`` with pickled members).

    numpy arrays and dtypes, scipy sparse matrices, chumpy arrays and reordering nodes (as inert
    :class:`ChumpyNode` stand-ins), and the few helpers Python 2 / protocol 0-2 pickles rebuild
    objects and bytes with (restricted to those uses).
    """
    allowed = numpy_scipy_classes()
    for name, kind in _CHUMPY_KINDS.items():
        allowed[name] = _chumpy_class(kind)
    # Python 2 pickles of new-style objects at protocol 0/1 go through copy_reg._reconstructor.
    for module in ("copy_reg", "copyreg"):
        allowed[(module, "_reconstructor")] = _safe_reconstructor
    for module in ("__builtin__", "builtins"):
        allowed[(module, "object")] = object
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class _ModelUnpickler(RestrictedUnpickler):
    """Allow-list of :func:`model_pickle_classes`, plus an inert stand-in for any other chumpy class.

    An unknown chumpy node only fails if an array we need is built from it (:func:`chumpy_to_numpy`).
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed and (module == "chumpy" or module.startswith("chumpy.")):
            return _chumpy_class(f"unsupported {module}.{name}")
        return super().find_class(module, name)


def read_model_pickle(path: str | os.PathLike, what: str = "model") -> dict[str, Any]:
    """The dict pickled in a SMPL/MANO model ``.pkl``, read with :func:`model_pickle_classes` only.

    Values are numpy arrays, scipy sparse matrices or chumpy stand-ins (see :func:`chumpy_to_numpy`).

    Raises:
        FastMetroError: one line naming the file: not found, a refused global (by name), a
            damaged stream, or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: {what} file not found")
    try:
        with open(path, "rb") as handle:
            raw = _ModelUnpickler(handle, model_pickle_classes(), source=str(path)).load()
    except Exception as error:  # noqa: BLE001 (refused global, truncated stream, bad opcode...)
        message = (str(error).splitlines() or [type(error).__name__])[0]
        if isinstance(error, pickle.UnpicklingError) and message.startswith(str(path)):
            raise FastMetroError(message) from None  # our refusal, naming the global
        raise FastMetroError(f"{path}: not a readable {what} pickle ({message})") from None
    if not isinstance(raw, dict):
        raise FastMetroError(f"{path}: expected a pickled dict of arrays, got {type(raw).__name__}")
    return raw


def chumpy_to_numpy(value: Any, depth: int = 0) -> Any:
    """Evaluate chumpy stand-ins (recursively) to numpy arrays; other values pass through.

    Raises:
        KeyError, ValueError, TypeError, AttributeError: a node it cannot evaluate.
    """
    if depth > 64:
        raise ValueError("chumpy graph too deep")
    if not isinstance(value, ChumpyNode):
        return value
    state = value.__dict__

    def get(name: str) -> np.ndarray:
        return np.asarray(chumpy_to_numpy(state[name], depth + 1))

    kind = value.kind
    if kind == "Ch":
        return get("x")
    if kind == "Select":
        array = get("a").ravel()[np.asarray(state["idxs"]).ravel()]
        shape = state.get("preferred_shape")
        return array.reshape(shape) if shape is not None else array
    if kind == "Reshape":
        return get("a").reshape(state["newshape"])
    if kind == "transpose":
        return np.transpose(get("a"), state.get("axes"))
    if kind == "Ravel":
        return get("a").ravel()
    if kind == "Concatenate":
        parts = [np.asarray(chumpy_to_numpy(part, depth + 1)) for part in state["many"]]
        return np.concatenate(parts, axis=state.get("axis", 0))
    if kind in ("add", "subtract", "multiply"):
        operation = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply}[kind]
        return operation(get("a"), get("b"))
    raise ValueError(f"unsupported chumpy node {kind}")


def read_state_dict(path: str | os.PathLike, what: str = "file") -> dict[str, torch.Tensor]:
    """A flat name -> tensor mapping from ``.safetensors`` or a torch file, read weights-only
    (no pickled code runs); ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and the
    ``module.`` prefix of a DistributedDataParallel save are removed.

    Raises:
        FastMetroError: ``"<path>: <what> not found"``, or one line saying what the file is not.
    """
    path = Path(path)
    if not path.is_file():
        raise FastMetroError(f"{path}: {what} not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise FastMetroError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (corrupt zip, unpickling refused, truncated...)
        raise FastMetroError(f"{path}: {_torch_load_problem(error)}") from None
    # Common wrappers: {"state_dict": ...} / {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not loaded:
        raise FastMetroError(f"{path}: does not hold a state dict (got {type(loaded).__name__})")
    bad = [key for key, value in loaded.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise FastMetroError(f"{path}: entry {bad[0]!r} is not a tensor; not a state dict")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def _torch_load_problem(error: Exception) -> str:
    """What ``torch.load(weights_only=True)`` refused, in one line and without torch's advice to
    switch the protection off: the refused pickled global by name, else the unpickler's reason."""
    text = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (
            f"not a readable weights-only torch file (refusing to load the pickled global '{refused.group(1)}'; "
            "only tensors and plain containers are read)"
        )
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif "Weights only load failed" in text:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"not a readable weights-only torch file ({lines[0] if lines else type(error).__name__})"


__all__ = ["ChumpyNode", "chumpy_to_numpy", "model_pickle_classes", "read_model_pickle", "read_state_dict"]

"""Read a ``.tflite`` file into plain Python dataclasses, its weights ready for use.

The flatbuffer is parsed with the ``tflite`` package (the schema's generated bindings); nothing of
TensorFlow or LiteRT is needed. Constant sub-graphs made of DEQUANTIZE (fp16 -> fp32) and DENSIFY
(sparse -> dense) are evaluated here, so every operator left in :attr:`Graph.operators` computes on
activations and every weight it reads is a dense numpy array (float32 for float tensors).

Any problem (not a TFLite flatbuffer, truncated, several subgraphs, an op we do not run) raises
:class:`~fastmetro.errors.FastMetroError` with a one-line message naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tflite

from fastmetro.errors import FastMetroError

# Ops the PyTorch graph runs (see fastmetro.mediapipe.ops), plus those folded away at load time.
SUPPORTED_OPS = frozenset(
    {
        "ADD",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "DEPTH_TO_SPACE",
        "FULLY_CONNECTED",
        "LOGISTIC",
        "MAX_POOL_2D",
        "MEAN",
        "PAD",
        "PRELU",
        "RESHAPE",
        "RESIZE_BILINEAR",
    }
)
FOLDED_OPS = frozenset({"DEQUANTIZE", "DENSIFY"})

# tflite.TensorType values -> numpy dtypes (the ones these networks use, and a few harmless others).
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}
_OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_OPTION_CLASSES = {
    v: getattr(tflite, k)
    for k, v in vars(tflite.BuiltinOptions).items()
    if not k.startswith("_") and hasattr(tflite, k)
}
# SparseIndexVector union members: 1 Int32Vector, 2 Uint16Vector, 3 Uint8Vector.
_INDEX_VECTORS = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}


@dataclass
class Tensor:
    """One tensor of the graph: ``data`` is a dense numpy array for constants, else None."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None


@dataclass
class Operator:
    """One op: its builtin name, tensor indices (-1: optional input absent) and options."""

    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict)


@dataclass
class Graph:
    """The single subgraph of a ``.tflite`` file, constants folded, ops in execution order."""

    path: Path
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def read_tflite(path) -> Graph:
    """Parse ``path`` into a :class:`Graph`; raise FastMetroError (one line) on any problem."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as error:
        raise FastMetroError(f"{path}: cannot read the TFLite file ({error.strerror})") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise FastMetroError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        return _parse(path, buf)
    except FastMetroError:
        raise
    except Exception as error:  # a corrupt flatbuffer fails anywhere, with any exception type
        raise FastMetroError(f"{path}: truncated or corrupt TFLite file ({type(error).__name__}: {error})") from None


def _parse(path: Path, buf: bytes) -> Graph:
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() != 1:
        raise FastMetroError(
            f"{path}: {model.SubgraphsLength()} subgraphs; only single-subgraph networks are supported"
        )
    sub = model.Subgraphs(0)
    tensors = [_read_tensor(path, model, sub.Tensors(i), i, buf) for i in range(sub.TensorsLength())]
    operators = []
    for i in range(sub.OperatorsLength()):
        op = _read_operator(path, model, sub.Operators(i))
        if op.op in FOLDED_OPS:
            _fold(path, op, tensors)
        else:
            operators.append(op)
    inputs = tuple(int(i) for i in sub.InputsAsNumpy())
    outputs = tuple(int(i) for i in sub.OutputsAsNumpy())
    _check_activations(path, tensors, operators, inputs)
    return Graph(path, tensors, operators, inputs, outputs)


def _check_activations(path: Path, tensors: list[Tensor], operators: list[Operator], inputs: tuple[int, ...]) -> None:
    """One 4-D float32 image input; every op computes one float32 tensor (no integer kernels)."""
    if len(inputs) != 1 or len(tensors[inputs[0]].shape) != 4 or tensors[inputs[0]].dtype != np.float32:
        raise FastMetroError(
            f"{path}: expected one 4-D float32 image input, found "
            f"{[(tensors[i].shape, str(tensors[i].dtype)) for i in inputs]}"
        )
    for op in operators:
        if len(op.outputs) != 1:
            raise FastMetroError(f"{path}: {op.op} with {len(op.outputs)} outputs is not supported")
        if tensors[op.outputs[0]].dtype != np.float32:
            raise FastMetroError(
                f"{path}: {op.op} computes a {tensors[op.outputs[0]].dtype} "
                f"tensor ({tensors[op.outputs[0]].name!r}); only float32 "
                "activations are supported"
            )


def _read_tensor(path: Path, model, t, index: int, buf: bytes) -> Tensor:
    """A tensor with its constant data (raw dtype; sparse ones still in their compressed form)."""
    name = t.Name().decode("utf-8", "replace")
    if t.Type() not in _DTYPES:
        raise FastMetroError(f"{path}: tensor {name!r} has unsupported type {t.Type()}")
    dtype = np.dtype(_DTYPES[t.Type()])
    shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    raw = _buffer_bytes(model.Buffers(t.Buffer()), buf)
    data = None
    if raw is not None:
        data = np.frombuffer(raw, dtype=dtype).copy()
        if t.Sparsity() is not None:
            if t.Sparsity().BlockMapLength():
                raise FastMetroError(f"{path}: sparse tensor {name!r} uses block sparsity, which is not supported")
            data = _densify(t.Sparsity(), data, shape)
        elif data.size != int(np.prod(shape)):
            raise FastMetroError(
                f"{path}: constant {name!r} holds {data.size} values for shape {shape} (truncated or corrupt file)"
            )
        data = data.reshape(shape)
    return Tensor(index, name, shape, dtype, data)


def _buffer_bytes(buffer, buf: bytes) -> bytes | None:
    """A buffer's bytes, inline or (files over 2 GB) at an offset into the file; None if empty."""
    if buffer.Offset() > 1:
        start, size = buffer.Offset(), buffer.Size()
        if start + size > len(buf):
            raise ValueError(f"buffer at {start}+{size} past the file's end ({len(buf)} bytes)")
        return buf[start : start + size]
    if buffer.DataLength() == 0:
        return None
    return buffer.DataAsNumpy().tobytes()


def _densify(sparsity, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Expand TFLite's sparse format: one level per dim, in traversal order, each dense or CSR.

    Walks the levels as TFLite's FormatConverter does, but vectorised over all stored values:
    after the last level there is one path per value, in the order the values are stored.
    """
    order = [int(i) for i in sparsity.TraversalOrderAsNumpy()]
    prev = np.zeros(1, dtype=np.int64)  # index into the previous level, per partial path
    coords: list[np.ndarray] = []  # coordinate on each level so far, per partial path
    for level in range(len(order)):
        meta = sparsity.DimMetadata(level)
        if meta.Format() == 0:  # DENSE
            size = meta.DenseSize()
            coord = np.tile(np.arange(size), len(prev))
            prev = np.repeat(prev * size, size) + coord
            coords = [np.repeat(c, size) for c in coords]
        else:  # SPARSE_CSR
            segments = _index_vector(meta.ArraySegmentsType(), meta.ArraySegments())
            indices = _index_vector(meta.ArrayIndicesType(), meta.ArrayIndices())
            counts = segments[prev + 1] - segments[prev]  # stored children of each path
            first = np.repeat(segments[prev], counts)  # per new path: its parent's first child
            nth = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            prev = first + nth
            coord = indices[prev]
            coords = [np.repeat(c, counts) for c in coords]
        coords.append(coord)
    if sorted(order) != list(range(len(shape))):
        raise ValueError(f"sparse traversal order {order} for a {len(shape)}-D tensor")
    if len(prev) != values.size:
        raise ValueError(f"sparse tensor lists {len(prev)} positions for {values.size} values")
    by_dim = {order[level]: coords[level] for level in range(len(order))}
    dense = np.zeros(shape, dtype=values.dtype)
    dense[tuple(by_dim[dim] for dim in range(len(shape)))] = values
    return dense


def _index_vector(kind: int, table) -> np.ndarray:
    """A SparseIndexVector union member as an int64 numpy array."""
    vector = _INDEX_VECTORS[kind]()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy().astype(np.int64)


def _read_operator(path: Path, model, op) -> Operator:
    code = model.OperatorCodes(op.OpcodeIndex())
    number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    name = _OP_NAMES.get(number, str(number))
    if name == "CUSTOM":
        name = f"CUSTOM ({code.CustomCode().decode('utf-8', 'replace')})"
    if name not in SUPPORTED_OPS | FOLDED_OPS:
        raise FastMetroError(f"{path}: uses the TFLite op {name}, which fastmetro does not support")
    inputs = tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else ()
    outputs = tuple(int(i) for i in op.OutputsAsNumpy()) if op.OutputsLength() else ()
    return Operator(name, inputs, outputs, _read_options(op))


def _read_options(op) -> dict:
    """The op's builtin options as {snake_case_name: value} (e.g. ``stride_h``, ``padding``)."""
    kind = op.BuiltinOptionsType()
    table = op.BuiltinOptions()
    if kind == 0 or table is None or kind not in _OPTION_CLASSES:
        return {}
    options = _OPTION_CLASSES[kind]()
    options.Init(table.Bytes, table.Pos)
    result = {}
    for attr in dir(options):
        if (
            not attr[0].isupper()
            or attr.startswith(("GetRootAs", "Init"))
            or attr.endswith(("AsNumpy", "Length", "IsNone", "BufferHasIdentifier"))
        ):
            continue
        if hasattr(options, attr + "AsNumpy"):  # a vector field, e.g. ReshapeOptions.NewShape
            value = getattr(options, attr + "AsNumpy")()
            result[_snake(attr)] = value.tolist() if isinstance(value, np.ndarray) else []
        else:
            result[_snake(attr)] = getattr(options, attr)()
    return result


def _snake(name: str) -> str:
    """``StrideH`` -> ``stride_h``, ``FusedActivationFunction`` -> ``fused_activation_function``."""
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _fold(path: Path, op: Operator, tensors: list[Tensor]) -> None:
    """Evaluate a DEQUANTIZE or DENSIFY of a constant at load time (its output becomes constant)."""
    source, target = tensors[op.inputs[0]], tensors[op.outputs[0]]
    if source.data is None:
        raise FastMetroError(
            f"{path}: {op.op} of the activation {source.name!r}; only constant (weight) inputs are supported"
        )
    if op.op == "DEQUANTIZE" and source.dtype != np.float16:
        raise FastMetroError(
            f"{path}: DEQUANTIZE of {source.dtype} tensor {source.name!r}; only "
            "fp16 weights are supported (no integer quantisation)"
        )
    target.data = source.data.astype(target.dtype).reshape(target.shape)

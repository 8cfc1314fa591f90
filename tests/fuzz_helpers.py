"""The fuzz suite's harness: what a clean failure is, a hang guard, Hypothesis profiles, damaged files.

Every reader fastmetro owns is fed damaged input and must either raise a
:class:`~fastmetro.errors.FastMetroError` with a clean one-line message or accept the input (only
where the test documents that acceptance and checks what came out). Failures are tagged so a run
can be tallied by kind:

``[traceback]`` another exception type escaped (the user would see a traceback);
``[silent]``    damaged input was accepted (a silently wrong result);
``[message]``   a FastMetroError, but several lines, a wrapped worker traceback, advice to allow
                pickle / ``weights_only=False``, or without the file it is about;
``[hang]``      no answer within the time limit;
``[refused]``   input the tests document as accepted was refused.

Hypothesis profiles (``FASTMETRO_FUZZ_PROFILE``): ``fast`` (default: derandomized, few examples, the
default suite stays fast) and ``thorough`` (``make test-all``: many more, freshly random examples).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from fastmetro.errors import FastMetroError

settings.register_profile(
    "fast",
    derandomize=True,
    max_examples=12,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    derandomize=False,
    max_examples=300,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("FASTMETRO_FUZZ_PROFILE", "fast"))

# Words that must never reach a user in an error about a file: the worker wrapper of DataLoader,
# a traceback, or advice to turn off the pickle protections.
FORBIDDEN = (
    "Traceback",
    "Original",
    "DataLoader worker",
    "allow_pickle",
    "weights_only",
    "pickle.load",
    "trust the",
    "unsafely",
)


class Hang(BaseException):
    """Raised by :func:`time_limit` (a BaseException: code under test cannot swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`Hang` if the block runs longer than ``seconds`` (SIGALRM; main thread only)."""

    def on_alarm(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_message(error: BaseException, names=(), match: str | None = None) -> str:
    """Fail ``[message]`` unless ``error``'s text is one clean line naming every item of ``names``."""
    import re

    text = str(error)
    if not text.strip() or "\n" in text.strip():
        pytest.fail(f"[message] not one line: {text!r}"[:600])
    for word in FORBIDDEN:
        if word in text:
            pytest.fail(f"[message] contains {word!r}: {text!r}"[:600])
    for name in names:
        if str(name) not in text:
            pytest.fail(f"[message] does not name {str(name)!r}: {text!r}"[:600])
    if match is not None and not re.search(match, text):
        pytest.fail(f"[message] does not say {match!r}: {text!r}"[:600])
    return text


def expect_error(fn, *args, names=(), match: str | None = None, seconds: float = 30, **kwargs) -> FastMetroError:
    """``fn(*args, **kwargs)`` must raise a clean :class:`FastMetroError`; returns it."""
    try:
        with time_limit(seconds):
            result = fn(*args, **kwargs)
    except FastMetroError as error:
        check_message(error, names, match)
        return error
    except Hang as error:
        pytest.fail(f"[hang] {error}")
    except Exception as error:  # noqa: BLE001 (the point: any other type is a defect)
        pytest.fail(f"[traceback] {type(error).__name__}: {error}"[:600])
    pytest.fail(f"[silent] accepted, returned {result!r}"[:400])


def expect_clean(fn, *args, names=(), seconds: float = 30, **kwargs):
    """Either a clean FastMetroError (returns ``("error", error)``) or a result (``("ok", result)``)."""
    try:
        with time_limit(seconds):
            return "ok", fn(*args, **kwargs)
    except FastMetroError as error:
        check_message(error, names)
        return "error", error
    except Hang as error:
        pytest.fail(f"[hang] {error}")
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"[traceback] {type(error).__name__}: {error}"[:600])


def expect_ok(fn, *args, seconds: float = 30, **kwargs):
    """A documented acceptance: ``fn`` must return (no exception at all); returns the result."""
    try:
        with time_limit(seconds):
            return fn(*args, **kwargs)
    except Hang as error:
        pytest.fail(f"[hang] {error}")
    except FastMetroError as error:
        pytest.fail(f"[refused] expected acceptance, got: {error}"[:600])
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"[traceback] expected acceptance, got {type(error).__name__}: {error}"[:600])


def run_cli(args: list[str], capsys, seconds: float = 120) -> tuple[int, str, str]:
    """``fastmetro ARGS`` in this process: (exit code, stdout, stderr); an escaping exception fails."""
    from fastmetro.cli import main

    try:
        with time_limit(seconds):
            code = main([str(a) for a in args])
    except Hang as error:
        pytest.fail(f"[hang] {error}")
    except SystemExit as error:  # argparse
        code = int(error.code or 0)
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"[traceback] fastmetro {' '.join(map(str, args))}: {type(error).__name__}: {error}"[:600])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_cli_error(args: list[str], capsys, names=(), match: str | None = None, code: int = 2) -> str:
    """The command must exit ``code`` printing exactly one ``error: ...`` line on stderr."""
    status, out, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error: ")]
    if "Traceback" in err or "Traceback" in out:
        pytest.fail(f"[traceback] exit {status}: {err[-600:]!r}")
    if status == 0:
        pytest.fail(f"[silent] exit 0; stdout {out[-300:]!r}")
    if len(error_lines) != 1 or status != code:
        pytest.fail(f"[message] exit {status}, stderr {err[-600:]!r}")
    check_message(error_lines[0], names, match)
    return error_lines[0]


# ---------------------------------------------------------------------------- damaged bytes
def flip_bytes(data: bytes, positions, xor: int = 0x5A) -> bytes:
    out = bytearray(data)
    for position in positions:
        out[position % len(out)] ^= xor
    return bytes(out)


def png_bytes(height: int = 24, width: int = 32, seed: int = 0) -> bytes:
    import cv2

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def jpeg_bytes(height: int = 48, width: int = 64, seed: int = 0) -> bytes:
    import cv2

    grid = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    pixels = (grid + np.random.default_rng(seed).normal(0, 10, (height, width, 3))).clip(0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def png_bomb(height: int, width: int) -> bytes:
    """A small PNG (all black, 8-bit grey) whose header declares ``height`` x ``width`` pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.asanyarray(array), allow_pickle=True)
    return stream.getvalue()


def npy_with_header(header: dict, payload: bytes = b"") -> bytes:
    """An .npy whose header says anything (shape/dtype) followed by ``payload``."""
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue() + payload


def zip_members(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return stream.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray], compressed: bool = True) -> bytes:
    stream = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(stream, **arrays)
    return stream.getvalue()


class Payload:
    """A pickle payload: unpickling it would create ``path`` (it must never run)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def pickle_payload(path: Path, protocol: int = 2) -> bytes:
    import pickle

    return pickle.dumps(Payload(path), protocol=protocol)


def object_npy_payload(path: Path) -> bytes:
    """An .npy of dtype object whose pickled element would run ``os.mkdir(path)``."""
    array = np.empty((1,), dtype=object)
    array[0] = Payload(path)
    return npy_bytes(array)


def base64_text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def label_row(key: str, label: dict | list | str) -> str:
    text = (
        label
        if isinstance(label, str)
        else json.dumps(label if isinstance(label, list) else [label], default=lambda a: a.tolist())
    )
    return f"{key}\t{text}\n"


def tiny_model_assets(directory: Path, model: str = "FastMETRO-S-R18") -> tuple[Path, Path]:
    """A tiny topology file and a seeded tiny model's checkpoint on it, in ``directory``."""
    import torch

    import fastmetro
    from data_helpers import tiny_topology
    from fastmetro.model.checkpoint import save_checkpoint
    from train_helpers import TINY_MODEL_OVERRIDES

    topology_path = tiny_topology().save(directory / "tiny.npz")
    torch.manual_seed(0)
    network = fastmetro.create_model(model, topology=topology_path, **TINY_MODEL_OVERRIDES)
    return topology_path, save_checkpoint(network, directory / "model.safetensors")

"""Command-line entry point: ``fastmetro <command> ...``.

Each area of the package owns its sub-commands in a ``commands.py`` module exposing
``register(subparsers)``; a registered parser sets ``func`` (called with the parsed args,
returning an exit code). This file only wires them together and turns
:class:`~fastmetro.errors.FastMetroError` into a one-line message.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fastmetro.errors import FastMetroError

# Order here is the order in `fastmetro --help`.
COMMAND_MODULES = (
    "fastmetro.model.commands",  # models, convert
    "fastmetro.topology.commands",  # topology build/info
    "fastmetro.data.commands",  # data convert/check
    "fastmetro.data.synthetic.commands",  # synth
    "fastmetro.engine.commands",  # train, eval
    "fastmetro.inference.commands",  # infer, export
    "fastmetro.app.commands",  # app
    "fastmetro.bench.commands",  # bench
    "fastmetro.mediapipe.commands",  # assets (MediaPipe networks)
)


def build_parser() -> argparse.ArgumentParser:
    from fastmetro import __version__

    parser = argparse.ArgumentParser(
        prog="fastmetro",
        description="FastMETRO: 3D human and hand mesh recovery from a single image.",
    )
    parser.add_argument("--version", action="version", version=f"fastmetro {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come after options too (`eval --data D --json data.num_workers=0`):
    # argparse ends a `nargs="*"` positional at the first option, so collect the rest here.
    if extra and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.parse_args(argv)  # the usual "unrecognized arguments" error and exit 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FastMetroError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `fastmetro models | head`: stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

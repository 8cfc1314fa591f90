"""Sub-commands of this area: ``fastmetro train``, ``fastmetro eval``, ``fastmetro demo``."""

from __future__ import annotations


def _demo(args) -> int:
    from fastmetro.engine.demo import run_demo

    return run_demo(args)


def register(subparsers) -> None:
    """Add this area's sub-commands to the `fastmetro` parser."""
    demo = subparsers.add_parser("demo", help="run the whole pipeline on the free default (Anny) on CPU")
    demo.set_defaults(func=_demo)

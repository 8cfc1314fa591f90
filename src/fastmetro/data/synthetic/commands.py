"""Sub-commands of this area (see fastmetro.cli)."""


def register(subparsers) -> None:
    """Add this area's sub-commands to the `fastmetro` parser."""

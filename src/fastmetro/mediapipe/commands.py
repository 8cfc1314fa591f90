"""``fastmetro assets [list]`` / ``fastmetro assets fetch [--from PATH] [NAMES...]``: MediaPipe's networks."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    """Add this area's sub-commands to the `fastmetro` parser."""
    parser = subparsers.add_parser("assets", help="list or fetch the MediaPipe networks (person and hand finding)")
    commands = parser.add_subparsers(dest="assets_command", metavar="ACTION")
    parser.set_defaults(func=run_list)  # `fastmetro assets` alone lists them

    listing = commands.add_parser("list", help="names, sizes, licence, status and paths of the networks")
    listing.set_defaults(func=run_list)

    fetch = commands.add_parser(
        "fetch",
        help="fetch the networks from npm (pinned versions, verified hashes) into the cache",
        description="Fetch MediaPipe's networks with `npm pack` (or from tarballs copied here, --from), check "
        "them against pinned hashes and write them into fastmetro's cache. Valid files are kept.",
    )
    fetch.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="PATH",
        help="a folder holding the tarballs `npm pack` makes (or one .tgz) instead of npm",
    )
    fetch.add_argument("names", nargs="*", metavar="NAME", help="networks to fetch (default: all)")
    fetch.set_defaults(func=run_fetch)


def run_list(args) -> int:
    from fastmetro.mediapipe.assets import ASSETS, LICENCE, status

    rows = status()
    width = max(len(row.name) for row in rows)
    print(f"{'network':<{width}}  {'MB':>5}  {'licence':<10}  {'status':<8}  path")
    for row in rows:
        asset = ASSETS[row.name]
        state = "ok" if row.valid else "missing" if not row.present else "damaged"
        print(f"{row.name:<{width}}  {asset.size / 1e6:>5.1f}  {LICENCE:<10}  {state:<8}  {row.path}")
    packages = dict.fromkeys(ASSETS[row.name].package for row in rows)
    print("from npm: " + ", ".join(package.spec for package in packages) + " (Google LLC, MediaPipe)")
    for row in rows:
        if row.present and not row.valid:
            print(f"  {row.name}: {row.problem}")
    if not all(row.valid for row in rows):
        print("run `fastmetro assets fetch` (or `fastmetro assets fetch --from FOLDER` with the tarballs offline)")
    return 0


def run_fetch(args) -> int:
    from fastmetro.mediapipe.assets import fetch

    fetch(args.names or None, source=args.source)
    return 0

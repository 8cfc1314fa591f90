"""``fastmetro synth``: render a synthetic METRO-format dataset from the Anny body model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add ``synth`` to the ``fastmetro`` parser."""
    parser = subparsers.add_parser(
        "synth",
        help="render a synthetic training set of random Anny bodies (METRO TSV format)",
        description=(
            "Render random Anny bodies (shape, pose, camera, light, clothing colours, background, "
            "occluders) into a METRO-format dataset with 2D/3D joints and full-resolution vertices. "
            "Deterministic per --seed; rerunning the same command resumes an interrupted run."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (train.yaml / test.yaml)")
    parser.add_argument("--num", type=int, required=True, help="number of images (train + test)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (default 1)")
    parser.add_argument("--shard-size", type=int, default=256, help="images per shard (default 256)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of images in test (default 0.1)")
    parser.add_argument("--no-occluders", action="store_true", help="never place occluding boxes")
    parser.add_argument(
        "--backgrounds",
        choices=("mixed", "studio"),
        default="mixed",
        help="mixed: photos and procedural textures (default); studio: plain backdrops",
    )
    parser.add_argument(
        "--poses",
        default=None,
        help="pose families: 'mixed' (default for a new folder), one family (e.g. 'standing'), or weights "
        "like 'sitting=2,lying=1'; families: standing walking sitting kneeling squatting lying crawling "
        "jumping athletic inverted",
    )
    parser.add_argument(
        "--split",
        choices=("train", "generalisation"),
        default=None,
        help="train (default): the training distribution (+ its held-out test split); generalisation: a test "
        "set from disjoint photos, textures, clothing patterns, the held-out pose family and other lenses "
        "(all of it in OUT/test.yaml)",
    )
    parser.add_argument(
        "--generator-version",
        type=int,
        choices=(1, 2),
        default=None,
        help="samplers to use: 2 (default for a new folder): pose families, coloured lights, patterned clothing, "
        "close-ups; 1: the first release's (standing poses, one light, flat colours, whole bodies). "
        "A rerun keeps the folder's",
    )
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument(
        "--vertices-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="storage of the vertex side file (float16 halves it, ~1-4 mm rounding)",
    )
    parser.add_argument("--preview", action="store_true", help="also write OUT/preview.png (3x3 samples, 2D joints)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def resumed_settings(out_dir: Path, poses: str | None, split: str | None, version: int | None = None) -> dict:
    """poses / split / generator_version: as given, else the folder's (a rerun resumes), else the defaults.

    A folder made before pose families existed (generator version 1) resumes as version 1;
    version 1 knows only standing poses, so that is its default.
    """
    from fastmetro.data.synthetic.config import GENERATOR_VERSION, read_manifest

    existing = read_manifest(out_dir) or {}
    if version is None:
        version = existing.get("generator_version", GENERATOR_VERSION)
    default_poses = "standing" if version == 1 else "mixed"
    return {
        "poses": poses if poses is not None else existing.get("poses", default_poses),
        "split": split if split is not None else existing.get("split", "train"),
        "generator_version": version,
    }


def run(args: argparse.Namespace) -> int:
    from fastmetro.data.synthetic.generator import GENERATOR_VERSION, SynthConfig, generate, write_preview
    from fastmetro.errors import FastMetroError

    if args.shard_size < 1:
        raise FastMetroError(f"--shard-size must be at least 1, got {args.shard_size}")
    if not 1 <= args.jpeg_quality <= 100:
        raise FastMetroError(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
    config = SynthConfig(
        out_dir=args.out,
        num=args.num,
        seed=args.seed,
        size=args.size,
        workers=args.workers,
        shard_size=args.shard_size,
        test_fraction=args.test_fraction,
        occluders=not args.no_occluders,
        backgrounds=args.backgrounds,
        jpeg_quality=args.jpeg_quality,
        vertices_dtype=args.vertices_dtype,
        **resumed_settings(args.out, args.poses, args.split, args.generator_version),
    )
    if config.generator_version != GENERATOR_VERSION:
        print(f"{args.out}: resuming a dataset of generator version {config.generator_version} with its own samplers")
    report = generate(config, progress=not args.quiet)
    if report.skipped:
        print(f"resumed: {len(report.skipped)} finished shard(s) kept as they were")
    if report.images:
        print(
            f"rendered {report.images} images in {len(report.written)} shard(s), "
            f"{report.images_per_second:.1f} images/s ({report.pose_rejections} poses redrawn for "
            f"self-intersection, {report.pose_fallbacks} fell back to the rest pose)"
        )
    for split, path in report.yamls.items():
        print(f"{split}: {path}")
    if args.preview:
        split_yaml = report.yamls.get("train") or report.yamls.get("test")  # a generalisation set has only test
        if split_yaml is None:
            raise FastMetroError(f"{args.out}: dataset incomplete, no preview written")
        print(f"preview: {write_preview(split_yaml, args.out / 'preview.png')}")
    return 0

"""``fastmetro infer`` and ``fastmetro export`` (see fastmetro.cli)."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from fastmetro.errors import FastMetroError


def register(subparsers) -> None:
    """Add this area's sub-commands to the `fastmetro` parser."""
    infer = subparsers.add_parser(
        "infer",
        help="reconstruct meshes from images, folders or a video",
        description="Run FastMETRO on images: one mesh per person box, pasted back into the full image. "
        "Writes OUT/<image>/person_XX.{obj,ply,glb,json}, scene.glb and overlay.png.",
    )
    infer.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or video files")
    infer.add_argument("--checkpoint", required=True, help="our .safetensors checkpoint (or an official .bin with --topology)")
    infer.add_argument("--out", required=True, help="output folder")
    boxes = infer.add_mutually_exclusive_group()
    boxes.add_argument("--bbox", action="append", metavar="X,Y,W,H",
                       help="person box in pixels for every input (repeat for several people)")
    boxes.add_argument("--boxes", metavar="JSON",
                       help='boxes per image: {"name.jpg": [[x, y, w, h], {"box": [x, y, w, h], "side": "left"}, '
                       '{"center": [x, y], "scale": s}]} (center/scale: the released label convention, '
                       'square side 200 * scale, not expanded)')
    boxes.add_argument("--detector", metavar="WEIGHTS", help="torchvision person detector weights file (local)")
    infer.add_argument("--detector-threshold", type=float, default=0.7, help="detector score threshold (0.7)")
    infer.add_argument("--max-people", type=int, default=20, help="detector: keep the most confident N people (20)")
    infer.add_argument("--detector-arch", help="torchvision detector builder (default: recognised from the weights)")
    infer.add_argument("--attention", metavar="JOINT", help="also draw this joint's attention (name or index)")
    infer.add_argument("--hand", choices=("right", "left"), default="right",
                       help="hand models: side of the hands in the boxes (left hands are run mirrored)")
    infer.add_argument("--topology", help="mesh topology (default: the checkpoint's)")
    infer.add_argument("--data-dir", help="folder with the SMPL/MANO files for the smpl/mano topologies")
    infer.add_argument("--body-model", help="SMPL model file (.pkl/.npz): models with the SMPL parameter regressor "
                       "then also write the SMPL mesh (person_XX_smpl.obj/.ply)")
    infer.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1...)")
    infer.add_argument("--batch-size", type=int, default=16, help="crops per network call (16)")
    infer.add_argument("--image-size", type=int, help="network input size (default: the model's, from its checkpoint)")
    infer.add_argument("--box-expand", type=float, default=1.2,
                       help="square crop side = this x the box's longer side (1.2)")
    infer.add_argument("--focal-length", type=float,
                       help="full-image focal length in pixels (default: 1000 px per 224 px of the longer side)")
    infer.add_argument("--no-overlay", action="store_true", help="skip the rendered overlay PNGs")
    infer.add_argument("--max-side", type=int, default=1024, help="longest side of overlay images (1024)")
    infer.set_defaults(func=run_infer)

    export = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript",
        description="Export images (B, 3, S, S) -> camera, joints, coarse_vertices, fine_vertices, mesh_joints.",
    )
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    export.add_argument("--out", required=True, help="output file")
    export.add_argument("--topology", help="mesh topology (default: the checkpoint's)")
    export.add_argument("--data-dir", help="folder with the SMPL/MANO files for the smpl/mano topologies")
    export.add_argument("--image-size", type=int, help="input size (default: the model's, from its checkpoint)")
    export.add_argument("--no-verify", action="store_true", help="skip comparing the export with PyTorch")
    export.set_defaults(func=run_export)


# ----------------------------------------------------------------------------- infer
def parse_bbox(text: str):
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise FastMetroError(f"--bbox {text!r}: expected four numbers x,y,w,h")
    return tuple(values)


def read_boxes_file(path: str | Path) -> dict[str, list]:
    """``{image key: [PersonBox, ...]}`` from a boxes JSON (keys: path, file name or stem)."""
    from fastmetro.inference.predictor import PersonBox

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FastMetroError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise FastMetroError(f"{path}: expected an object mapping image names to lists of boxes")
    boxes = {}
    for key, entries in data.items():
        if not isinstance(entries, list):
            raise FastMetroError(f"{path}: {key!r}: expected a list of boxes")
        people = []
        for entry in entries:
            side, expand = "right", None
            if isinstance(entry, dict):
                side = entry.get("side", "right")
                if "center" in entry and "scale" in entry:
                    entry, expand = _released_box(entry, path, key), 1.0
                else:
                    entry = entry.get("box")
            if not (isinstance(entry, list) and len(entry) == 4 and all(isinstance(v, (int, float)) for v in entry)):
                raise FastMetroError(f"{path}: {key!r}: a box must be [x, y, w, h] numbers, got {entry!r}")
            try:
                people.append(PersonBox(tuple(float(v) for v in entry), side=side, expand=expand))
            except FastMetroError as error:
                raise FastMetroError(f"{path}: {key!r}: {error}") from None
        boxes[str(key)] = people
    return boxes


def _released_box(entry: dict, path: Path, key: str) -> list:
    """The released label convention: square of side 200 * scale around ``center`` (used as is)."""
    center, scale = entry["center"], entry["scale"]
    if not (isinstance(center, list) and len(center) == 2 and isinstance(scale, (int, float))):
        raise FastMetroError(f"{path}: {key!r}: center must be [x, y] and scale a number")
    side = 200.0 * float(scale)
    return [float(center[0]) - side / 2, float(center[1]) - side / 2, side, side]


def _lookup(boxes: dict, frame) -> list | None:
    source = Path(frame.source.split("#frame")[0])
    for key in (frame.source, str(source), source.name, frame.name, source.stem):
        if key in boxes:
            return boxes[key]
    return None


@dataclass
class _Job:
    frame: object
    image: object
    boxes: object


def run_infer(args) -> int:
    from fastmetro.inference import images as image_io
    from fastmetro.inference.predictor import PersonBox, Predictor

    for name, value in (("--batch-size", args.batch_size), ("--image-size", args.image_size or 1), ("--max-side", args.max_side)):
        if value < 1:
            raise FastMetroError(f"{name} must be positive, got {value}")
    fixed_boxes = [parse_bbox(text) for text in args.bbox] if args.bbox else None
    boxes_by_image = read_boxes_file(args.boxes) if args.boxes else None
    paths = image_io.expand_inputs(args.inputs)
    detector = None
    if args.detector:
        from fastmetro.inference.detector import TorchvisionDetector

        detector = TorchvisionDetector(args.detector, score_threshold=args.detector_threshold,
                                       max_people=args.max_people, architecture=args.detector_arch,
                                       device=args.device)
    predictor = Predictor(
        checkpoint=args.checkpoint,
        topology=args.topology,
        device=args.device,
        image_size=args.image_size,
        batch_size=args.batch_size,
        box_expand=args.box_expand,
        focal_length=args.focal_length,
        data_dir=args.data_dir,
        body_model=args.body_model,
    )
    joint = predictor.joint_index(args.attention) if args.attention is not None else None
    out_dir = Path(args.out)
    pool = None
    if not args.no_overlay or joint is not None:
        from fastmetro.inference.outputs import RendererPool

        pool = RendererPool()

    failures: list[str] = []
    done = people_count = 0

    def boxes_for(frame, image):
        if fixed_boxes is not None:
            return [PersonBox(box, side=args.hand) for box in fixed_boxes]
        if boxes_by_image is not None:
            found = _lookup(boxes_by_image, frame)
            if found is None:
                warnings_out.append(f"{frame.source}: not in {args.boxes}; using the whole image as the box")
                return None
            # "side": "left" in the file wins over --hand.
            return [dataclasses.replace(p, side=p.side if p.side != "right" else args.hand) for p in found]
        if detector is not None:
            detections = detector(image)
            if not detections:
                warnings_out.append(f"{frame.source}: the detector found no person")
            return [PersonBox(d.box, side=args.hand, score=d.score) for d in detections]
        return None

    def process(jobs: list[_Job]) -> None:
        nonlocal done, people_count
        items = [(job.image, job.boxes, job.frame.source) for job in jobs]
        try:
            predictions = predictor.predict_many(items, return_attention=joint is not None)
        except FastMetroError:
            if len(jobs) == 1:
                raise
            for job in jobs:  # isolate the image that failed
                try:
                    process([job])
                except FastMetroError as error:
                    failures.append(str(error))
            return
        for job, prediction in zip(jobs, predictions):
            try:
                _write_outputs(out_dir / job.frame.name, job, prediction, predictor, args, pool, joint)
            except OSError as error:
                failures.append(f"{job.frame.source}: cannot write outputs ({error})")
                continue
            for message in prediction.warnings:
                print(f"warning: {message}", file=sys.stderr)
            done += 1
            people_count += len(prediction.people)
            print(f"{job.frame.source}: {len(prediction.people)} person(s) -> {out_dir / job.frame.name}")

    warnings_out: list[str] = []
    pending: list[_Job] = []
    try:
        for path in paths:
            try:
                frames = image_io.iter_frames([path])
                for frame in frames:
                    try:
                        image = frame.load()
                        boxes = boxes_for(frame, image)
                    except FastMetroError as error:
                        failures.append(str(error))
                        continue
                    for message in warnings_out:
                        print(f"warning: {message}", file=sys.stderr)
                    warnings_out.clear()
                    pending.append(_Job(frame, image, boxes))
                    if len(pending) >= args.batch_size:
                        _flush(process, pending, failures)
            except FastMetroError as error:  # e.g. a corrupt video stream
                failures.append(str(error))
        _flush(process, pending, failures)
    finally:
        if pool is not None:
            pool.release()

    print(f"done: {done} image(s), {people_count} person(s), {len(failures)} failed; outputs in {out_dir}")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for message in failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


def _flush(process, pending: list, failures: list) -> None:
    if not pending:
        return
    jobs = list(pending)
    pending.clear()
    try:
        process(jobs)
    except FastMetroError as error:
        failures.append(str(error))


def _write_outputs(directory: Path, job: _Job, prediction, predictor, args, pool, joint) -> None:
    from fastmetro.inference import attention, outputs

    outputs.write_image_outputs(
        directory,
        prediction,
        predictor.joint_names,
        job.frame.source,
        image=None if args.no_overlay else job.image,
        renderer_pool=pool,
        max_side=args.max_side,
    )
    if joint is None:
        return
    name = predictor.joint_names[joint]
    for index, person in enumerate(prediction.people):
        stem = f"person_{index:02d}_{name}"
        cross = attention.cross_attention_image(job.image, person, joint, predictor.image_size)
        cross, _ = outputs.scaled_view(cross, person.intrinsics, args.max_side)
        outputs.write_png(directory / f"attention_cross_{stem}.png", cross)
        self_view = attention.self_attention_image(job.image, person, joint, predictor.topology, pool)
        outputs.write_png(directory / f"attention_self_{stem}.png", self_view)


# ----------------------------------------------------------------------------- export
def run_export(args) -> int:
    from fastmetro.inference import export as exporter
    from fastmetro.model.factory import load_model

    model = load_model(args.checkpoint, args.topology, data_dir=args.data_dir).cpu().eval()
    if args.image_size is None:
        args.image_size = model.spec.input.image_size
    if args.image_size < 32:
        raise FastMetroError(f"--image-size must be >= 32, got {args.image_size}")
    path = exporter.export(model, args.out, args.format, args.image_size)
    print(f"wrote {path} ({args.format}, input images (B, 3, {args.image_size}, {args.image_size}))")
    if not args.no_verify:
        images = exporter.example_input(args.image_size, batch_size=2, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            differences = exporter.max_abs_difference(model, path, args.format, images)
        print("max |exported - pytorch| on random inputs (batch 2):")
        for name, value in differences.items():
            print(f"  {name:16s} {value:.2e}")
        worst = max(differences.values())
        if worst > 1e-4:
            print(f"warning: exported outputs differ from PyTorch by up to {worst:.2e}", file=sys.stderr)
            return 1
    return 0

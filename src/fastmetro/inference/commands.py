"""``fastmetro infer`` and ``fastmetro export`` (see fastmetro.cli)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from fastmetro.errors import FastMetroError
from fastmetro.inference import validate
from fastmetro.inference.video_commands import add_video_arguments, check_video_options, run_video_tracks


def register(subparsers) -> None:
    """Add this area's sub-commands to the `fastmetro` parser."""
    infer = subparsers.add_parser(
        "infer",
        help="reconstruct meshes from images, folders or a video",
        description="Run FastMETRO on images: one mesh per person box, pasted back into the full image. "
        "Writes OUT/<image>/person_XX.{obj,ply,glb,json}, scene.glb and overlay.png.",
    )
    infer.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or video files")
    infer.add_argument(
        "--checkpoint",
        help="our .safetensors checkpoint (or an official .bin with --topology); "
        "default: the model shipped with fastmetro",
    )
    infer.add_argument("--out", required=True, help="output folder")
    boxes = infer.add_mutually_exclusive_group()
    boxes.add_argument(
        "--bbox",
        action="append",
        metavar="X,Y,W,H",
        help="person box in pixels for every input (repeat for several people)",
    )
    boxes.add_argument(
        "--boxes",
        metavar="JSON",
        help='boxes per image: {"name.jpg": [[x, y, w, h], {"box": [x, y, w, h], "side": "left"}, '
        '{"center": [x, y], "scale": s}]} (center/scale: the released label convention, '
        "square side 200 * scale, not expanded)",
    )
    boxes.add_argument(
        "--detector",
        default="mediapipe",
        metavar="mediapipe|none|WEIGHTS",
        help="how people are found when no box is given: `mediapipe` (default: BlazePose, hands: "
        "MediaPipe Hands; `fastmetro assets fetch` fetches it), `none` (the whole image is the box), "
        "or a torchvision detector's weights file (local)",
    )
    infer.add_argument(
        "--detector-threshold", type=float, help="detector score threshold (default: MediaPipe 0.3, torchvision 0.7)"
    )
    infer.add_argument(
        "--landmarks",
        choices=("lite", "full", "heavy", "none"),
        default="full",
        help="MediaPipe's landmark network, which sets each box from the body's landmarks and "
        "writes them into the person JSON (full; hands: heavy means full; none: detector boxes)",
    )
    infer.add_argument("--max-people", type=int, default=20, help="detector: keep the most confident N people (20)")
    infer.add_argument("--detector-arch", help="torchvision detector builder (default: recognised from the weights)")
    infer.add_argument("--attention", metavar="JOINT", help="also draw this joint's attention (name or index)")
    infer.add_argument(
        "--hand",
        choices=("right", "left"),
        default="right",
        help="hand models: side of the hands in the boxes (left hands are run mirrored)",
    )
    infer.add_argument("--topology", help="mesh topology (default: the checkpoint's)")
    infer.add_argument("--data-dir", help="folder with the SMPL/MANO files for the smpl/mano topologies")
    infer.add_argument(
        "--body-model",
        help="SMPL model file (.pkl/.npz): models with the SMPL parameter regressor "
        "then also write the SMPL mesh (person_XX_smpl.obj/.ply)",
    )
    infer.add_argument(
        "--rig",
        action="store_true",
        help="also fit body-model parameters (Anny; SMPL with --body-model) and write animatable files: "
        "person_XX_rig.glb (skeleton, skin, pose), person_XX.bvh, person_XX_rig.json; videos: per track",
    )
    infer.add_argument("--rig-steps", type=int, help="refinement steps of the --rig fit (Anny 60; SMPL at most 100)")
    infer.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N, mps or xpu (cpu)")
    infer.add_argument("--batch-size", type=int, default=16, help="crops per network call (16)")
    infer.add_argument(
        "--int8",
        action="store_true",
        help="CPU: the backbone in static int8 (lossy, ~1.6x for ResNet-50 models; see docs/speed.md)",
    )
    infer.add_argument(
        "--calibration",
        nargs="+",
        metavar="IMAGE",
        help="--int8: person crops calibrating the activation ranges (default: scikit-image photos)",
    )
    infer.add_argument(
        "--flip-test",
        action="store_true",
        help="bodies: also run each crop mirrored and average (test-time augmentation; ~1.5x the model's time)",
    )
    infer.add_argument("--image-size", type=int, help="network input size (default: the model's, from its checkpoint)")
    infer.add_argument(
        "--box-expand", type=float, default=1.2, help="square crop side = this x the box's longer side (1.2)"
    )
    infer.add_argument(
        "--focal-length",
        type=float,
        help="full-image focal length in pixels (default: 1000 px per 224 px of the longer side)",
    )
    infer.add_argument("--no-overlay", action="store_true", help="skip the rendered overlay PNGs")
    infer.add_argument("--max-side", type=int, default=1024, help="longest side of overlay images (1024)")
    add_video_arguments(infer)
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
    export.add_argument("--int8", action="store_true",
                        help="ONNX only: static int8 backbone (lossy CPU path; see docs/speed.md)")  # fmt: skip
    export.add_argument("--calibration", nargs="+", metavar="IMAGE",
                        help="--int8: person crops (files or folders) calibrating the activation ranges "
                        "(default: crops of scikit-image's photographs)")  # fmt: skip
    export.set_defaults(func=run_export)


# ----------------------------------------------------------------------------- infer
def check_infer_options(args) -> None:
    """Every numeric/device option of ``fastmetro infer``, before anything is loaded."""
    validate.integer("--batch-size", args.batch_size, 1)
    if args.image_size is not None:  # None: the model's own input size
        validate.image_size("--image-size", args.image_size)
    validate.integer("--max-side", args.max_side, 1)
    validate.positive_number("--box-expand", args.box_expand, high=100.0)
    if args.focal_length is not None:
        validate.positive_number("--focal-length", args.focal_length)
    if args.detector_threshold is not None:
        validate.number("--detector-threshold", args.detector_threshold, 0.0, 1.0)
    validate.integer("--max-people", args.max_people, 1)
    if args.rig_steps is not None:
        validate.integer("--rig-steps", args.rig_steps, 0)
    args.device = str(validate.device("--device", args.device))  # "auto" becomes a device
    if args.flip_test and args.attention is not None:
        raise FastMetroError("--flip-test and --attention cannot be combined (whose attention would it draw?)")
    check_video_options(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FastMetroError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FastMetroError(f"--out {out}: cannot create the folder ({error.strerror})") from None


def box_source_from_args(args, is_hand: bool = False):
    """The boxes of ``fastmetro infer``: --bbox, --boxes, or a detector (MediaPipe unless
    ``--detector none``, which leaves the whole image as the box)."""
    from fastmetro.inference import boxes
    from fastmetro.inference.detector import make_detector

    if args.bbox:
        return boxes.GivenBoxes([boxes.parse_bbox(text) for text in args.bbox], side=args.hand)
    if args.boxes:
        return boxes.BoxesByImage(boxes.read_boxes_file(args.boxes, side=args.hand), label=args.boxes, side=args.hand)
    detector = make_detector(
        args.detector,
        is_hand=is_hand,
        threshold=args.detector_threshold,
        max_people=args.max_people,
        landmarks=None if args.landmarks == "none" else args.landmarks,
        architecture=args.detector_arch,
        device=args.device,
        tiles=getattr(args, "tiles", 0),
    )
    return None if detector is None else boxes.DetectorBoxes(detector, side=args.hand)


def run_infer(args) -> int:
    from fastmetro.inference import images as image_io
    from fastmetro.inference.predictor import Predictor
    from fastmetro.inference.runner import Failure, InferenceRunner

    check_infer_options(args)
    given = box_source_from_args(args) if args.bbox or args.boxes else None  # typos fail before loading
    paths = image_io.expand_inputs(args.inputs)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from fastmetro.weights import find_default_checkpoint

        default = find_default_checkpoint()
        print(f"no --checkpoint given: using {default.origin}", file=sys.stderr, flush=True)
        checkpoint = default.path
    predictor = Predictor(
        checkpoint=checkpoint,
        topology=args.topology,
        device=args.device,
        image_size=args.image_size,
        batch_size=args.batch_size,
        box_expand=args.box_expand,
        focal_length=args.focal_length,
        data_dir=args.data_dir,
        body_model=args.body_model,
        int8=args.int8,
        calibration=image_io.expand_inputs(args.calibration) if args.calibration else None,
        flip_test=args.flip_test,
    )
    boxes = given or box_source_from_args(args, is_hand=predictor.topology.is_hand)
    rigger = None
    if args.rig:
        from fastmetro.inference.rigging import Rigger

        rigger = Rigger(predictor.topology, body_model=args.body_model, steps=args.rig_steps, device=args.device)
    out_dir = Path(args.out)
    failures: list[Failure] = []
    done = people = 0
    if not args.no_track:  # videos become tracks (fastmetro.inference.video); images go on below
        failures += run_video_tracks(args, predictor, boxes, paths, rigger)
        paths = [path for path in paths if not image_io.is_video(path)]
    with InferenceRunner(
        predictor,
        boxes=boxes,
        side=args.hand,
        out_dir=out_dir,
        attention_joint=args.attention,
        overlay=not args.no_overlay,
        max_side=args.max_side,
        rigger=rigger,
    ) as runner:
        for item in runner.iter_results(paths):
            if isinstance(item, Failure):
                failures.append(item)
                continue
            for message in item.warnings:
                print(f"warning: {message}", file=sys.stderr)
            done += 1
            people += len(item.prediction.people)
            print(f"{item.source}: {len(item.prediction.people)} person(s) -> {item.directory}")
    print(f"done: {done} image(s), {people} person(s), {len(failures)} failed; outputs in {out_dir}")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure.message}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- export
def run_export(args) -> int:
    from fastmetro.inference import export as exporter
    from fastmetro.model.factory import load_model

    if args.image_size is not None:
        validate.image_size("--image-size", args.image_size)
    out = Path(args.out)
    if out.exists() and not out.is_file():
        raise FastMetroError(f"--out {out}: exists and is not a regular file; give the file to write")
    if not out.parent.is_dir():
        raise FastMetroError(f"--out {out}: folder {out.parent} does not exist")
    model = load_model(args.checkpoint, args.topology, data_dir=args.data_dir).cpu().eval()
    if args.image_size is None:  # the size the model was trained for (its spec)
        args.image_size = model.spec.input.image_size
    if args.int8 or args.calibration:
        return _export_int8(args, model)
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


def _export_int8(args, model) -> int:
    """``fastmetro export --int8``: the fp32 ONNX file, then its static int8 version at ``--out``."""
    import tempfile

    import numpy as np
    import torch

    from fastmetro.inference import export as exporter
    from fastmetro.inference import quantize
    from fastmetro.inference.images import expand_inputs

    if args.format != "onnx" or not args.int8:
        raise FastMetroError("--int8 (with --calibration) needs --format onnx")
    size, spec = args.image_size, model.spec.input
    if args.calibration:
        calibration = quantize.calibration_images(expand_inputs(args.calibration), size, spec.mean, spec.std)
    else:
        calibration = quantize.calibration_photos(32, size, mean=spec.mean, std=spec.std)
    with tempfile.TemporaryDirectory(prefix="fastmetro-export-") as workdir:
        fp32 = exporter.export_onnx(model, Path(workdir) / "fp32.onnx", size)
        path = quantize.quantize_onnx_static(fp32, args.out, calibration)
    print(f"wrote {path} (onnx, int8 backbone calibrated on {len(calibration)} images, input (B, 3, {size}, {size}))")
    if not args.no_verify:  # lossy by design: report the error in millimetres, do not fail on it
        images = torch.from_numpy(calibration[:8])
        reference, exported = exporter.pytorch_outputs(model, images), exporter.run_onnx(path, images)
        for name in ("fine_vertices", "joints"):
            distance = np.linalg.norm(exported[name] - reference[name], axis=-1) * 1000.0
            print(f"  {name:14s} int8 - pytorch: mean {distance.mean():.2f} mm, max {distance.max():.2f} mm")
    return 0

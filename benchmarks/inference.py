"""End-to-end inference cost on the CPU: Predictor (crop + network + paste-back), output files,
overlay rendering, and the exported ONNX model under ONNX Runtime.

    python benchmarks/inference.py [--model FastMETRO-S-R50] [--topology anny] [--people 4]
                                   [--runs 5] [--threads N] [--no-onnx]

Weights are random (timing does not depend on them); the image is a 1280x720 photograph-sized
array with ``--people`` boxes. Prints a table of median milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.ops  # noqa: F401  (before any EGL context; see fastmetro.inference.outputs)


def timed(function, runs: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="FastMETRO-S-R50")
    parser.add_argument("--topology", default="anny")
    parser.add_argument("--data-dir")
    parser.add_argument("--people", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import fastmetro
    from fastmetro.inference import outputs
    from fastmetro.inference.predictor import Predictor

    torch.manual_seed(0)
    model = fastmetro.create_model(args.model, topology=args.topology, data_dir=args.data_dir).eval()
    predictor = Predictor(model=model, batch_size=max(1, args.people))
    image = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    boxes = [(100 + 250 * i, 100, 200, 500) for i in range(args.people)]
    rows = []
    prediction = predictor.predict(image, boxes)
    rows.append(
        (f"Predictor.predict ({args.people} people)", timed(lambda: predictor.predict(image, boxes), args.runs))
    )
    rows.append(
        ("  + attention maps", timed(lambda: predictor.predict(image, boxes, return_attention=True), args.runs))
    )
    pool = outputs.RendererPool()
    rows.append(("overlay panel (1024 px)", timed(lambda: outputs.overlay_panel(image, prediction, pool), args.runs)))
    with tempfile.TemporaryDirectory() as folder:
        rows.append(
            (
                "obj/ply/glb/json files",
                timed(
                    lambda: outputs.write_image_outputs(Path(folder), prediction, predictor.joint_names, "bench"),
                    args.runs,
                ),
            )
        )
        if not args.no_onnx:
            from fastmetro.inference import export as exporter

            path = exporter.export_onnx(model, Path(folder) / "model.onnx")
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            batch = exporter.example_input(224, batch_size=args.people)
            with torch.no_grad():
                rows.append((f"PyTorch network, batch {args.people}", timed(lambda: model(batch), args.runs)))
            feed = {"images": batch.numpy()}
            rows.append(
                (f"ONNX Runtime network, batch {args.people}", timed(lambda: session.run(None, feed), args.runs))
            )
    pool.release()

    print(f"{args.model} on {args.topology}, {torch.get_num_threads()} threads, median of {args.runs} runs")
    print(f"{'step':42s} {'ms':>9s}")
    for name, milliseconds in rows:
        print(f"{name:42s} {milliseconds:9.1f}")


if __name__ == "__main__":
    main()

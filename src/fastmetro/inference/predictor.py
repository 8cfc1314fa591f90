"""``fastmetro.Predictor``: meshes for the people (or hands) in full images.

For every person box: square crop (released preprocessing: square around the box, centre kept,
224 x 224, zero padding, ImageNet normalisation), batched network run, then paste-back of the
weak-perspective camera to a perspective camera of the full image
(:func:`fastmetro.inference.camera.full_image_camera`).

Hands: the networks are right-hand models. A box marked ``"left"`` is cropped mirrored, run as a
right hand, and the result mirrored back (x -> -x, camera tx -> -tx; triangle winding reversed),
as the released demo expects users to do by hand. For a mesh with a left/right vertex
permutation (bodies), mirroring also applies the topology's ``vertex_flip``/``joint_flip`` so
vertex and joint identities are kept.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from fastmetro import topology as topology_module
from fastmetro.conventions import (
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalise_image,
    root_centred,
    weak_perspective_project,
)
from fastmetro.data.body_models import load_body_model
from fastmetro.errors import FastMetroError
from fastmetro.inference import camera as cam
from fastmetro.inference import quantize
from fastmetro.inference.boxes import SIDES, PersonBox, box_tuple, person_boxes
from fastmetro.inference.detector import detector_for, make_detector
from fastmetro.model.factory import load_model
from fastmetro.model.fast import inference_view, prepare_for_inference
from fastmetro.weights import find_default_checkpoint

if TYPE_CHECKING:
    from fastmetro.model.fastmetro import FastMETRO
    from fastmetro.topology import Topology

logger = logging.getLogger("fastmetro.inference")


@dataclass
class PersonPrediction:
    """One reconstructed person. Coordinates in metres unless stated.

    Attributes:
        box: (x, y, w, h) input box, pixels.
        crop_box: the square crop actually used.
        side: ``"right"`` or ``"left"`` (left = mirrored crop, result mirrored back).
        camera: (3,) weak-perspective (s, tx, ty) of the crop (after un-mirroring); it applies
            to the root-centred points below (see :mod:`fastmetro.conventions`).
        intrinsics: (3, 3) full-image pinhole camera (OpenCV convention, shared by the image).
        translation: (3,) add to the root-centred model-space points to get camera coordinates
            (the mesh root then sits at ``translation``).
        vertices: (V0, 3) fine mesh centred on its root point (body: the pelvis regressed from
            the mesh; hand: the wrist), model axes (x right, y down).
        faces: (F, 3) triangles for ``vertices`` (winding reversed for a mirrored hand).
        joints: (K, 3) joints from the joint tokens, centred on their root joints (body: mid-hip).
        mesh_joints: (K, 3) joints regressed from the mesh, in the frame of ``vertices``.
        joints_2d: (K, 2) full-image pixels of ``joints`` under the weak-perspective camera (what
            the network was trained to predict).
        raw_root: (3,) the mesh root of the raw network output (model space), which the network's
            losses never constrain: kept for reference only.
        smpl_rotmat, smpl_betas: (24, 3, 3), (10,) SMPL parameters (models with the SMPL parameter
            regressor), else None.
        smpl_vertices: (6890, 3) the SMPL mesh of those parameters, root-centred like
            ``vertices`` (needs a body model: ``Predictor(body_model=...)``), else None.
        smpl_faces: its triangles.
        joint_self_attention: (K, V_L) decoder self-attention of every joint to the coarse
            vertices, mean over heads and layers of both transformers (when requested).
        joint_cross_attention: (K, h, w) decoder cross-attention of every joint to the image
            tokens, same averaging, in the un-mirrored crop's orientation (when requested).
        score: the detector's confidence (None for given boxes).
        pose: what the detector found (MediaPipe: landmarks, world landmarks and their scores,
            a :class:`~fastmetro.mediapipe.people.FoundPerson`), else None.
    """

    box: tuple[float, float, float, float]
    crop_box: cam.CropBox
    side: str
    camera: np.ndarray
    intrinsics: np.ndarray
    translation: np.ndarray
    vertices: np.ndarray
    faces: np.ndarray
    joints: np.ndarray
    mesh_joints: np.ndarray
    joints_2d: np.ndarray
    raw_root: np.ndarray | None = None
    smpl_rotmat: np.ndarray | None = None
    smpl_betas: np.ndarray | None = None
    smpl_vertices: np.ndarray | None = None
    smpl_faces: np.ndarray | None = None
    joint_self_attention: np.ndarray | None = None
    joint_cross_attention: np.ndarray | None = None
    score: float | None = None
    pose: object | None = None

    @property
    def vertices_camera(self) -> np.ndarray:
        """(V0, 3) mesh in full-image camera coordinates (OpenCV: x right, y down, z forward)."""
        return self.vertices + self.translation

    @property
    def joints_camera(self) -> np.ndarray:
        return self.joints + self.translation


@dataclass
class ImagePrediction:
    """All people of one image: ``image_size`` (W, H), ``people``, and warnings raised."""

    image_size: tuple[int, int]
    people: list[PersonPrediction]
    focal_length: float
    warnings: list[str] = field(default_factory=list)


class Predictor:
    """Run FastMETRO on full images with person boxes.

    Args:
        checkpoint: our ``.safetensors`` checkpoint (with its JSON) or an official ``.bin``
            (loaded with :func:`fastmetro.load_model`). With neither ``checkpoint`` nor ``model``:
            the default model (:func:`fastmetro.weights.find_default_checkpoint`, the
            one shipped with fastmetro), said once in a log message.
        model: an already built network (instead of ``checkpoint``).
        topology: name / path / Topology; defaults to the checkpoint's or the model's.
        device: torch device for the network.
        image_size: crop size S (the network input is S x S); default: the size the model was
            trained for (its spec; released: 224).
        batch_size: crops per network call.
        box_expand: square side = ``box_expand * max(w, h)`` (1.2 suits tight detector boxes;
            use 1.0 for boxes that already include margin).
        focal_length: full-image focal length in pixels; default
            :func:`fastmetro.inference.camera.default_focal_length`.
        data_dir: folder of the SMPL/MANO files when the topology is ``smpl``/``mano``.
        detector: used when no boxes are given: ``"mediapipe"`` (people found by BlazePose; hand
            models: MediaPipe Hands), any callable ``detector(image) -> [Detection]`` (e.g.
            :class:`fastmetro.inference.detector.TorchvisionDetector`), or None / ``"none"``: the
            whole image is the box.
        body_model: an SMPL model file (or a loaded layer) for models with the SMPL parameter
            regressor: each person then also gets ``smpl_vertices``.
        int8: run the backbone in static int8 (lossy, CPU; needs ``fastmetro[int8]``): about
            1.6x for a ResNet-50 model at ~2 mm of vertex change, not for the shipped model
            (docs/speed.md). Building it takes 10-35 s.
        calibration: image files (person crops) for the int8 activation ranges; default: crops
            of scikit-image's photographs. Giving it implies ``int8``.
        flip_test: also run each crop mirrored and average the two results (the mirrored one
            mirrored back: x -> -x, left and right vertices and joints swapped, the camera's tx
            negated): test-time augmentation for body meshes, twice the network's work per
            person (docs/default-model.md measures it). Not with hands (a mirrored right hand is
            a left hand), a body model or attention maps.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        model: torch.nn.Module | None = None,
        topology=None,
        device: str | torch.device = "cpu",
        image_size: int | None = None,
        batch_size: int = 16,
        box_expand: float = 1.2,
        focal_length: float | None = None,
        data_dir: str | os.PathLike | None = None,
        detector=None,
        body_model=None,
        int8: bool = False,
        calibration: Sequence[str | os.PathLike] | None = None,
        flip_test: bool = False,
    ):
        if checkpoint is not None and model is not None:
            raise FastMetroError("Predictor takes checkpoint= or model=, not both")
        if checkpoint is None and model is None:
            default = find_default_checkpoint()
            logger.info("no checkpoint given: using %s", default.origin)
            checkpoint = default.path
        if checkpoint is not None:
            model = load_model(checkpoint, topology, data_dir=data_dir)
        elif topology is not None:
            given = topology_module.load(topology, data_dir)
            assert model is not None  # no checkpoint: a model was given (checked above)
            model_topology = cast("Topology", model.topology)  # a plain attribute, not a submodule
            if tuple(given.level_vertex_counts) != tuple(model_topology.level_vertex_counts) or (
                given.num_joints != model_topology.num_joints
            ):
                raise FastMetroError(
                    f"topology '{given.name}' {given.level_vertex_counts} does not fit the model's "
                    f"'{model_topology.name}' {model_topology.level_vertex_counts}"
                )
        if batch_size < 1:
            raise FastMetroError(f"batch_size must be >= 1, got {batch_size}")
        assert model is not None  # loaded from the checkpoint or given
        spec = getattr(model, "spec", None)
        if image_size is None:
            image_size = spec.input.image_size if spec is not None else IMAGE_SIZE
        if image_size < 32:
            raise FastMetroError(f"image_size must be >= 32, got {image_size}")
        self.device = torch.device(device)
        self.topology = cast("Topology", model.topology)  # a plain attribute, not a submodule
        self.image_size = int(image_size)
        self.normalisation = (spec.input.mean, spec.input.std) if spec is not None else (IMAGENET_MEAN, IMAGENET_STD)
        if int8 or calibration:
            self.model = self._int8_view(model.eval(), calibration)
        else:
            self.model = inference_view(model.to(self.device).eval())  # the fast path (same function)
        self.batch_size = int(batch_size)
        self.box_expand = float(box_expand)
        self.focal_length = focal_length
        self.faces = np.asarray(self.topology.faces[0], dtype=np.int64)
        self._root_regressor = np.asarray(self.topology.root_regressor, dtype=np.float64)
        self.detector = _detector(detector, self.topology.is_hand, self.device)
        self.smpl_faces = None
        self._has_body_model = body_model is not None
        if body_model is not None:
            self._attach_body_model(body_model)
        self.flip_test = flip_test

    @property
    def flip_test(self) -> bool:
        """Flip test-time augmentation (see the class docstring); may be switched between calls."""
        return self._flip_test

    @flip_test.setter
    def flip_test(self, on: bool) -> None:
        if on and (self.topology.vertex_flip is None or self._has_body_model):
            raise FastMetroError(
                f"flip_test needs a left-right symmetric body mesh and no body model "
                f"(topology '{self.topology.name}'{', with a body model' if self._has_body_model else ''})"
            )
        self._flip_test = bool(on)

    # ------------------------------------------------------------------ public
    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(self.topology.joint_names)

    def joint_index(self, joint: int | str) -> int:
        """Joint index from an index or a (case-insensitive) name."""
        names = [name.lower() for name in self.joint_names]
        if isinstance(joint, str) and not joint.lstrip("-").isdigit():
            if joint.lower() not in names:
                raise FastMetroError(f"unknown joint {joint!r}: one of {', '.join(self.joint_names)}")
            return names.index(joint.lower())
        index = int(joint)
        if not 0 <= index < len(names):
            raise FastMetroError(f"joint index {index} out of range 0..{len(names) - 1}")
        return index

    def predict(
        self,
        image: np.ndarray,
        boxes: Sequence[PersonBox | Sequence[float]] | None = None,
        return_attention: bool = False,
        source: str = "<image>",
    ) -> ImagePrediction:
        """Reconstruct every box of one (H, W, 3) uint8 RGB image.

        Without boxes, the predictor's detector finds them; without a detector the whole image
        is the box (and a warning says so).
        """
        return self.predict_many([(image, boxes, source)], return_attention)[0]

    def predict_many(
        self,
        items: Sequence[tuple[np.ndarray, Sequence | None, str]],
        return_attention: bool = False,
    ) -> list[ImagePrediction]:
        """Like :meth:`predict` for several ``(image, boxes, source)``; crops are batched together."""
        crops, plans, results = [], [], []
        for image, boxes, source in items:
            image = _checked_image(image, source)
            height, width = image.shape[:2]
            warnings: list[str] = []
            people = person_boxes(image, boxes, self.detector, source, warnings)
            focal = cam.default_focal_length((width, height)) if self.focal_length is None else self.focal_length
            results.append(ImagePrediction((width, height), [], float(focal), warnings))
            for person in people:
                expand = self.box_expand if person.expand is None else person.expand
                crop_box = _crop_box(person, expand, (width, height), source)
                flip = person.side == "left"
                crop = cam.crop_image(image, crop_box, self.image_size, flip=flip)
                crops.append(normalise_image(crop, *self.normalisation))
                plans.append((len(results) - 1, person, crop_box, flip))
        for start in range(0, len(crops), self.batch_size):
            batch = torch.from_numpy(np.stack(crops[start : start + self.batch_size])).to(self.device)
            outputs = self._run(batch, return_attention)
            for offset in range(batch.shape[0]):
                result_index, person, crop_box, flip = plans[start + offset]
                result = results[result_index]
                prediction = self._person(
                    outputs, offset, person, crop_box, flip, result.image_size, result.focal_length
                )
                if not prediction.camera[0] > 0:
                    result.warnings.append(
                        f"{items[result_index][2]}: person {len(result.people)}: camera scale "
                        f"s={prediction.camera[0]:.3g} <= 0 (untrained model?); its mesh is placed far away"
                    )
                result.people.append(prediction)
        return results

    # ------------------------------------------------------------------ internals
    def _int8_view(self, model: torch.nn.Module, calibration) -> torch.nn.Module:
        """The fast path with the backbone in static int8 (lossy, CPU; fastmetro.model.fast_int8),
        calibrated on ``calibration`` image files, else on crops of scikit-image's photographs."""
        if self.device.type != "cpu":
            raise FastMetroError(f"int8 runs on the CPU, not on {self.device}")
        mean, std = self.normalisation
        if calibration:
            crops = quantize.calibration_images(calibration, self.image_size, mean, std)
        else:
            crops = quantize.calibration_photos(32, self.image_size, mean=mean, std=std)
        network = cast("FastMETRO", model.cpu())  # another network is a one-line error there
        return prepare_for_inference(network, int8_calibration=torch.from_numpy(crops))

    def _attach_body_model(self, body_model) -> None:
        attach = getattr(self.model, "attach_body_model", None)
        if attach is None or not getattr(self.model.config, "smpl_parameter_regressor", False):
            raise FastMetroError("a body model was given, but this model has no SMPL parameter regressor")
        if isinstance(body_model, (str, os.PathLike)):
            body_model = load_body_model(body_model)
        if body_model.num_joints != 24:
            raise FastMetroError(
                f"the SMPL parameter regressor needs an SMPL model (24 joints), got {body_model.num_joints}"
            )
        attach(body_model.to(self.device))
        self.smpl_faces = body_model.faces if body_model.faces is not None else None

    @torch.no_grad()
    def _run(self, batch: torch.Tensor, return_attention: bool) -> dict:
        if self.flip_test:
            if return_attention:
                raise FastMetroError("flip_test and attention maps cannot be combined (whose maps would they be?)")
            count = batch.shape[0]
            both = self._run_network(torch.cat([batch, batch.flip(-1)]), False)
            return mirrored_mean(
                self.topology, {k: v[:count] for k, v in both.items()}, {k: v[count:] for k, v in both.items()}
            )
        return self._run_network(batch, return_attention)

    def _run_network(self, batch: torch.Tensor, return_attention: bool) -> dict:
        outputs = self.model(batch, return_attention=return_attention)
        out = {
            name: outputs[name].float().cpu().numpy()
            for name in (
                "camera",
                "joints",
                "fine_vertices",
                "mesh_joints",
                "smpl_rotmat",
                "smpl_betas",
                "smpl_vertices",
            )
            if name in outputs
        }
        if return_attention:
            num_joints = self.topology.num_joints
            # Mean over layers (both transformers) and heads of the joint rows.
            self_maps = torch.stack([a[:, :, :num_joints, num_joints:] for a in outputs["attention"]["self"]])
            cross_maps = torch.stack([a[:, :, :num_joints, :] for a in outputs["attention"]["cross"]])
            height, width = outputs["feature_size"]
            out["joint_self_attention"] = self_maps.float().mean(dim=(0, 2)).cpu().numpy()
            out["joint_cross_attention"] = (
                cross_maps.float().mean(dim=(0, 2)).reshape(batch.shape[0], num_joints, height, width).cpu().numpy()
            )
        return out

    def _person(self, outputs, index, person, crop_box, flip, image_size, focal) -> PersonPrediction:
        camera = outputs["camera"][index].astype(np.float64)
        # The camera's frame (released demo): the mesh on its root, token joints on their root.
        raw = {
            "joints": outputs["joints"][index].astype(np.float64),
            "mesh_joints": outputs["mesh_joints"][index].astype(np.float64),
            "vertices_by_level": (outputs["fine_vertices"][index].astype(np.float64),),
        }
        centred = root_centred(raw, self._root_regressor, self.topology.root_joints)
        vertices, joints, mesh_joints = centred["fine_vertices"], centred["joints"], centred["mesh_joints"]
        raw_root = centred["mesh_root"][0]
        smpl = self._smpl_outputs(outputs, index)
        faces = self.faces
        self_attention = outputs.get("joint_self_attention")
        cross_attention = outputs.get("joint_cross_attention")
        self_attention = None if self_attention is None else self_attention[index]
        cross_attention = None if cross_attention is None else cross_attention[index]
        if flip:
            # Mirror the result of the mirrored crop back: x -> -x in model space and in the crop.
            mirror = np.array([-1.0, 1.0, 1.0])
            vertices, joints, mesh_joints = vertices * mirror, joints * mirror, mesh_joints * mirror
            camera = camera * np.array([1.0, -1.0, 1.0])
            if cross_attention is not None:
                cross_attention = cross_attention[..., ::-1].copy()
            topology = self.topology
            if topology.vertex_flip is not None:
                # Symmetric mesh (body): keep vertex/joint identities (left stays left).
                vertices = vertices[topology.vertex_flip]
                joints = joints[topology.joint_flip]
                mesh_joints = np.asarray(topology.joint_regressor) @ vertices
                if self_attention is not None:
                    self_attention = self_attention[topology.joint_flip]
                if cross_attention is not None:
                    cross_attention = cross_attention[topology.joint_flip]
            else:
                # A mirrored right hand is a left hand; mirroring flips the triangles' orientation.
                faces = faces[:, ::-1].copy()
        intrinsics, translation = cam.full_image_camera(camera, crop_box, image_size, focal)
        joints_2d = crop_box.normalised_to_image(weak_perspective_project(joints, camera))
        return PersonPrediction(
            box=box_tuple(person.box),
            crop_box=crop_box,
            side=person.side,
            camera=camera,
            intrinsics=intrinsics,
            translation=translation,
            vertices=vertices,
            faces=faces,
            joints=joints,
            mesh_joints=mesh_joints,
            joints_2d=joints_2d,
            raw_root=raw_root,
            **smpl,
            joint_self_attention=self_attention,
            joint_cross_attention=cross_attention,
            score=person.score,
            pose=person.pose,
        )

    def _smpl_outputs(self, outputs: dict, index: int) -> dict:
        """SMPL parameters (and the SMPL mesh, root-centred, when a body model is attached)."""
        if "smpl_rotmat" not in outputs:
            return {}
        smpl = {
            "smpl_rotmat": outputs["smpl_rotmat"][index].astype(np.float64),
            "smpl_betas": outputs["smpl_betas"][index].astype(np.float64),
        }
        if "smpl_vertices" in outputs:
            mesh = outputs["smpl_vertices"][index].astype(np.float64)
            # Centred like `vertices` (SMPL topology: the pelvis; another topology: the centroid).
            root = self._root_regressor @ mesh if len(mesh) == len(self._root_regressor) else mesh.mean(0)
            smpl["smpl_vertices"] = mesh - root
            smpl["smpl_faces"] = self.smpl_faces if self.smpl_faces is not None else self.faces
        return smpl


def mirrored_mean(topology: Topology, outputs: dict, mirrored: dict) -> dict:
    """Flip test-time augmentation: the mean of a batch's network outputs (numpy, (B, ...)) and of
    the outputs of the same crops mirrored left-right, those mirrored back into the unmirrored
    crops' frame (x -> -x, left and right joints and vertices swapped, the camera's tx negated).
    Returns ``camera`` (B, 3), ``joints`` (B, K, 3), ``fine_vertices`` (B, V0, 3) and
    ``mesh_joints`` (B, K, 3), regressed from the mean mesh as the model regresses them."""
    if topology.vertex_flip is None:
        raise FastMetroError(f"topology '{topology.name}' has no left-right vertex mirror: no flip test")
    mirror = np.array([-1.0, 1.0, 1.0], np.float32)
    camera = (outputs["camera"] + mirrored["camera"] * np.array([1.0, -1.0, 1.0], np.float32)) / 2
    joints = (outputs["joints"] + mirrored["joints"][:, topology.joint_flip] * mirror) / 2
    vertices = (outputs["fine_vertices"] + mirrored["fine_vertices"][:, topology.vertex_flip] * mirror) / 2
    mesh_joints = np.einsum("kv,bvc->bkc", np.asarray(topology.joint_regressor, np.float32), vertices)
    return {"camera": camera, "joints": joints, "fine_vertices": vertices, "mesh_joints": mesh_joints}


def _detector(detector, is_hand: bool, device):
    """A detector choice (see :class:`Predictor`) as a callable for this body or hand model."""
    if isinstance(detector, str):
        if detector not in ("mediapipe", "none"):
            raise FastMetroError(f"detector must be 'mediapipe', 'none' or a callable, got {detector!r}")
        return make_detector(detector, is_hand=is_hand, device=str(device))
    return detector_for(detector, is_hand)


def _checked_image(image, source: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise FastMetroError(f"{source}: expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise FastMetroError(f"{source}: image has zero size")
    return image


def _crop_box(person: PersonBox, expand: float, image_size, source: str) -> cam.CropBox:
    try:
        return cam.square_box(person.box, expand=expand, image_size=image_size)
    except FastMetroError as error:
        raise FastMetroError(f"{source}: {error}") from None


__all__ = ["Predictor", "PersonBox", "PersonPrediction", "ImagePrediction", "SIDES", "mirrored_mean"]

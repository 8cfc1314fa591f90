"""The one factory and the one loader: :func:`create_model` builds a fresh network by preset name,
:func:`load_model` builds a network from a checkpoint.

``load_model`` reads the checkpoint's JSON spec first (a few hundred bytes), resolves the topology
from it (or the one given), builds the network and reads the weights once. An official
``*_state_dict.bin`` has no JSON: its preset is read from its layers (or given by name), and it
needs the topology (``smpl`` / ``mano``).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastmetro import topology as topology_module
from fastmetro.conventions import IMAGE_SIZE
from fastmetro.errors import FastMetroError
from fastmetro.model import checkpoint as ckpt
from fastmetro.model.backbone import load_backbone_weights
from fastmetro.model.presets import build_network, canonical_name, make_spec, model_config
from fastmetro.model.spec import InputSpec, ModelSpec
from fastmetro.weights import resolve_checkpoint


def create_model(
    name: str | None = None,
    topology="anny",
    flavor: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    pretrained: bool = False,
    image_size: int | None = None,
    **overrides,
):
    """Build a FastMETRO network; ``model.spec`` says what it is.

    Args:
        name: preset name (case-insensitive), e.g. ``"FastMETRO-S-R50"``; may be omitted with a
            ``checkpoint`` (its JSON or its layers name the model).
        topology: ``"anny"`` / ``"smpl"`` / ``"mano"`` / a topology ``.npz`` / a ``Topology``.
        flavor: ``"paper"`` (default) or ``"release"``.
        checkpoint: start from these weights (see :func:`load_model`); name/flavor must agree.
        backbone_weights: local ImageNet weights for the backbone (safetensors or torch file).
        data_dir: directory of the SMPL/MANO files for the ``smpl``/``mano`` topologies.
        pretrained: ImageNet weights from the local timm/Hugging Face cache (never downloads).
        image_size: the input crop size the model is trained for (recorded in its spec; 224).
        **overrides: :class:`~fastmetro.model.fastmetro.FastMETROConfig` fields.
    """
    if checkpoint is not None:
        model = load_model(checkpoint, topology=topology, data_dir=data_dir, name=name, flavor=flavor, **overrides)
        if image_size is not None:
            model.spec = model.spec.replace(
                input=InputSpec(int(image_size), model.spec.input.mean, model.spec.input.std)
            )
    else:
        if name is None:
            raise FastMetroError("create_model needs a model name (e.g. 'FastMETRO-S-R50') or a checkpoint")

        mesh = topology_module.load(topology, data_dir)
        spec = make_spec(name, mesh, flavor or "paper", overrides, image_size or IMAGE_SIZE)
        model = build_network(spec, mesh, pretrained=pretrained)
    if backbone_weights is not None:
        load_backbone_weights(model.backbone, backbone_weights)
    return model


def load_model(
    checkpoint: str | os.PathLike,
    topology=None,
    device="cpu",
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
    flavor: str | None = None,
    **overrides,
):
    """Build the network stored in ``checkpoint`` and load its weights (strictly).

    Args:
        checkpoint: our ``.safetensors`` (with its ``.json``), an official ``*_state_dict.bin``, or
            ``"default"``.
        topology: defaults to the one the checkpoint's spec names (``anny``/``smpl``/``mano``
            need ``data_dir`` for SMPL/MANO); a topology whose sizes do not fit is an error.
        device: where the model goes.
        name, flavor: checks against the spec (ours), or the preset of an official file when its
            layers do not tell (flavor is always read from the layers).
        **overrides: architecture overrides that leave the weights' shapes unchanged (e.g.
            ``dropout=0.0`` for fine-tuning).
    Every problem is a one-line :class:`FastMetroError` naming the file. ``"default"`` (when no
    file has that name) is the model shipped with fastmetro (:mod:`fastmetro.weights`).
    """
    path = resolve_checkpoint(checkpoint)
    if not path.is_file():
        raise FastMetroError(f"{path}: checkpoint not found")
    try:
        return _load(path, topology, device, data_dir, name, flavor, overrides)
    except FastMetroError as error:
        message = str(error)
        named = str(path) in message or str(ckpt.json_path(path)) in message
        raise FastMetroError(message if named else f"{path}: {message}") from None


def _load(path: Path, topology, device, data_dir, name, flavor, overrides):

    spec = ckpt.read_spec(path)
    if spec is not None:
        try:  # the JSON's preset, flavor and overrides must make a valid network
            model_config(spec.name, spec.flavor, **spec.overrides)
        except FastMetroError as error:
            raise FastMetroError(f"{ckpt.json_path(path)}: {error}") from None
        _check_request(spec, name, flavor)
        if topology is None:
            topology = spec.topology.name
        mesh = topology_module.load(topology, data_dir)
        spec = spec.replace(overrides={**spec.overrides, **overrides})
        loaded = ckpt.read_checkpoint(path, spec)
    else:
        if topology is None:
            raise FastMetroError("the checkpoint does not say its topology; pass one (--topology smpl|mano|anny|.npz)")
        mesh = topology_module.load(topology, data_dir)
        loaded = ckpt.read_checkpoint(path)
        inferred, found = ckpt.infer_preset(loaded.state_dict) if name is None else (name, {})
        if flavor is not None and loaded.flavor is not None and flavor != loaded.flavor:
            raise FastMetroError(f"holds the {loaded.flavor!r} flavor, not {flavor!r}")
        if "smpl_parameter_regressor" not in overrides and any(
            key.startswith("smpl_parameter_regressor.") for key in loaded.state_dict
        ):
            found = {**found, "smpl_parameter_regressor": True}
        spec = make_spec(inferred, mesh, loaded.flavor or flavor or "paper", {**found, **overrides})
    _check_sizes(loaded, mesh)
    model = build_network(spec, mesh)
    ckpt.load_strict(model, loaded.state_dict, source=str(path))
    return model.to(device)


def _check_request(spec: ModelSpec, name: str | None, flavor: str | None) -> None:
    if name is not None and canonical_name(name).lower() != spec.name.lower():
        raise FastMetroError(f"holds {spec.name}, not {name}")
    if flavor is not None and flavor != spec.flavor:
        raise FastMetroError(f"holds the {spec.flavor!r} flavor, not {flavor!r}")


def _check_sizes(loaded: ckpt.LoadedCheckpoint, topology) -> None:
    """The checkpoint's joint/vertex token counts (and saved sizes) must fit the topology."""
    problems = []
    if loaded.num_joints is not None and loaded.num_joints != topology.num_joints:
        problems.append(f"{loaded.num_joints} joint tokens, topology has {topology.num_joints} joints")
    if loaded.num_coarse_vertices is not None and loaded.num_coarse_vertices != topology.num_coarse_vertices:
        problems.append(
            f"{loaded.num_coarse_vertices} vertex tokens, topology has {topology.num_coarse_vertices} coarse vertices"
        )
    if loaded.spec is not None and tuple(loaded.spec.topology.level_vertex_counts) != tuple(
        topology.level_vertex_counts
    ):
        problems.append(
            f"mesh levels {loaded.spec.topology.level_vertex_counts}, "
            f"topology has {tuple(topology.level_vertex_counts)}"
        )
    if problems:
        raise FastMetroError(
            f"{loaded.path}: checkpoint does not fit topology '{topology.name}': " + "; ".join(problems)
        )


__all__ = ["create_model", "load_model"]

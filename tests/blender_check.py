"""Import a rigged ``.glb`` and a ``.bvh`` into Blender and write what Blender made of them (JSON).

Run by ``tests/test_rig_export.py``, inside Blender (its own Python, ``bpy``)::

    blender -b --factory-startup --python tests/blender_check.py -- \\
        --glb person.glb --bvh person.bvh --fps 5 --frames 0,2,4 --out blender.json

Written: per file the armatures (bone count, the action's frame range); for the glb the evaluated
(posed: armature modifier applied through the depsgraph) mesh vertices at each frame, for the BVH
the posed bone heads, all in Blender's world coordinates (z up; both importers turn y up into z
up). Frames are the files' own frame numbers (0-based); the BVH importer starts at Blender frame 1.
"""

from __future__ import annotations

import argparse
import builtins
import json
import sys
from typing import Any

import bpy  # type: ignore[import-not-found]  # only inside Blender

BVH_FRAME_START = 1


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="blender_check.py")
    parser.add_argument("--glb", required=True)
    parser.add_argument("--bvh", required=True)
    parser.add_argument("--fps", type=float, required=True, help="the files' frames per second (an integer)")
    parser.add_argument("--frames", required=True, help="comma-separated frame numbers, 0-based")
    parser.add_argument("--out", required=True)
    return parser.parse_args(sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else [])


def new_objects(before: set) -> list:
    return [obj for obj in bpy.context.scene.objects if obj.name not in before]


def armature_record(obj) -> dict:
    action = obj.animation_data.action if obj.animation_data else None
    frame_range = None if action is None else [float(v) for v in action.frame_range]
    return {"name": obj.name, "bones": len(obj.data.bones), "frame_range": frame_range}


def glb_record(path: str, frames: list[int]) -> dict:
    """Import the glb; the posed mesh vertices (world, metres) at each frame."""
    before = {obj.name for obj in bpy.context.scene.objects}
    # FLAT: what the importer does for a mesh without NORMAL anyway, and its default ("NORMALS")
    # fails in Blender 3.4 with numpy >= 1.24 (Debian bookworm's): it still uses np.bool.
    bpy.ops.import_scene.gltf(filepath=path, import_shading="FLAT")
    objects = new_objects(before)
    meshes = [obj for obj in objects if obj.type == "MESH"]
    record: dict[str, Any] = {
        "armatures": [armature_record(obj) for obj in objects if obj.type == "ARMATURE"],
        "meshes": [obj.name for obj in meshes],
        "vertices": {},
    }
    scene = bpy.context.scene
    for frame in frames:
        scene.frame_set(frame)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        per_mesh = {}
        for obj in meshes:
            evaluated = obj.evaluated_get(depsgraph)
            mesh = evaluated.to_mesh()
            world = evaluated.matrix_world
            per_mesh[obj.name] = [list(world @ vertex.co) for vertex in mesh.vertices]
            evaluated.to_mesh_clear()
        record["vertices"][str(frame)] = per_mesh
    return record


def allow_universal_newlines_mode() -> None:
    """Let Blender 3.4's BVH importer open its file under Python >= 3.11 (Debian's build).

    The importer calls ``open(path, 'rU')``; Python 3.11 removed the ``U`` mode (universal newlines
    are the default since Python 3). A module-level ``open`` shadows the builtin for it alone.
    """
    from io_anim_bvh import import_bvh  # type: ignore[import-not-found]  # Blender's add-on

    def open_without_u(file, mode="r", *args, **kwargs):
        return builtins.open(file, mode.replace("U", ""), *args, **kwargs)

    import_bvh.open = open_without_u


def bvh_record(path: str, frames: list[int]) -> dict:
    """Import the BVH; the posed bone heads (world, metres) at each of the file's frames."""
    allow_universal_newlines_mode()
    before = {obj.name for obj in bpy.context.scene.objects}
    bpy.ops.import_anim.bvh(filepath=path, frame_start=BVH_FRAME_START, global_scale=1.0, rotate_mode="NATIVE")
    armatures = [obj for obj in new_objects(before) if obj.type == "ARMATURE"]
    record: dict[str, Any] = {"armatures": [armature_record(obj) for obj in armatures], "heads": {}}
    if armatures:
        armature = armatures[0]
        for frame in frames:
            bpy.context.scene.frame_set(BVH_FRAME_START + frame)
            bpy.context.view_layer.update()
            world = armature.matrix_world
            heads = {bone.name: list(world @ bone.head) for bone in armature.pose.bones}
            record["heads"][str(frame)] = heads
    return record


def main() -> None:
    args = arguments()
    frames = [int(v) for v in args.frames.split(",")]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    # The glTF importer puts a key at time * scene.render.fps: at the files' rate, frame t is key t.
    scene.render.fps, scene.render.fps_base = round(args.fps), 1.0
    scene.frame_start, scene.frame_end = 0, max(frames) + BVH_FRAME_START
    result = {"blender": bpy.app.version_string, "glb": glb_record(args.glb, frames)}
    result["bvh"] = bvh_record(args.bvh, frames)
    with open(args.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()

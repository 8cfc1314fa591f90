"""The offscreen renderer puts geometry exactly where the intrinsics say it projects."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from fastmetro.errors import FastMetroError
from fastmetro.render import MeshPart, Renderer, vertex_normals

SIZE = 64


@pytest.fixture(scope="module")
def renderer():
    with Renderer(SIZE, SIZE) as instance:
        yield instance


def intrinsics(focal=100.0, cx=31.5, cy=31.5):
    return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])


def project(points, camera):
    projected = points @ camera.T
    return projected[:, :2] / projected[:, 2:]


def test_triangle_covers_exactly_the_pixel_centres_inside_its_projection(renderer):
    # Off-centre principal point and non-square pixels catch swapped or mirrored axes.
    camera = np.array([[90.0, 0.0, 27.0], [0.0, 120.0, 36.0], [0.0, 0.0, 1.0]])
    triangle = np.array([[-0.25, -0.2, 2.0], [0.3, -0.15, 2.5], [0.05, 0.3, 2.2]])
    result = renderer.render(triangle, np.array([[0, 1, 2]]), camera, color=(1.0, 0.0, 0.0))

    corners = project(triangle, camera)
    columns, rows = np.meshgrid(np.arange(SIZE), np.arange(SIZE))
    centres = np.stack([columns, rows], axis=-1).astype(np.float64)

    def edge(a, b):
        return (b[0] - a[0]) * (centres[..., 1] - a[1]) - (b[1] - a[1]) * (centres[..., 0] - a[0])

    signs = np.stack([edge(corners[0], corners[1]), edge(corners[1], corners[2]), edge(corners[2], corners[0])])
    inside = (signs > 0.5).all(0) | (signs < -0.5).all(0)  # clearly inside
    outside = (signs < -0.5).any(0) & (signs > 0.5).any(0)  # clearly outside
    assert inside.sum() > 200
    assert result.mask[inside].all()
    assert not result.mask[outside].any()
    assert (result.rgb[result.mask][:, 0] > 100).all()  # lit red
    assert (result.rgb[~result.mask] == 0).all()  # black background


def test_cube_silhouette_and_depth_match_projection(renderer):
    cube = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    vertices = np.asarray(cube.vertices) + np.array([0.1, -0.05, 3.0])
    camera = intrinsics(focal=120.0)
    result = renderer.render(vertices, cube.faces, camera)

    # Seen head-on, the silhouette is the front face's square (z = 2.8).
    front = vertices[np.isclose(vertices[:, 2], 2.8)]
    corners = project(front, camera)
    rows, columns = np.nonzero(result.mask)
    assert columns.min() == int(np.ceil(corners[:, 0].min()))
    assert columns.max() == int(np.floor(corners[:, 0].max()))
    assert rows.min() == int(np.ceil(corners[:, 1].min()))
    assert rows.max() == int(np.floor(corners[:, 1].max()))
    np.testing.assert_allclose(result.depth[result.mask], 2.8, atol=1e-4)
    assert (result.depth[~result.mask] == 0).all()
    # The default light comes from the upper left and front: the face is lit, not black.
    assert result.rgb[result.mask].mean() > 60


def test_background_occluder_and_per_vertex_colour():
    background = np.zeros((SIZE, SIZE, 3), np.uint8)
    background[:, :, 1] = np.arange(SIZE, dtype=np.uint8)[None, :] * 3  # green ramp along x
    background[: SIZE // 2, :, 2] = 200  # blue top half: catches a vertical flip
    cube = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    body = np.asarray(cube.vertices) + np.array([0.0, 0.0, 3.0])
    occluder = trimesh.creation.box(extents=(0.2, 1.0, 0.05))
    occluder_vertices = np.asarray(occluder.vertices) + np.array([0.0, 0.0, 2.0])
    colors = np.zeros((len(body), 3))
    colors[:, 2] = 1.0
    with Renderer(SIZE, SIZE, samples=4) as renderer:
        result = renderer.render(
            body,
            cube.faces,
            intrinsics(),
            color=colors,
            background=background,
            extra_meshes=(MeshPart(occluder_vertices, occluder.faces, (1.0, 1.0, 0.0)),),
        )
    # Background pixels come through unchanged and the right way up.
    np.testing.assert_array_equal(result.rgb[2, 2], background[2, 2])
    np.testing.assert_array_equal(result.rgb[SIZE - 3, SIZE - 3], background[SIZE - 3, SIZE - 3])
    # The occluder hides the body's centre: not in the mask, yellow, nearer depth.
    assert not result.mask[31, 31]
    assert result.rgb[31, 31, 0] > 100 and result.rgb[31, 31, 1] > 100
    assert result.depth[31, 31] == pytest.approx(1.975, abs=1e-3)
    # Left of the occluder the blue body shows and is in the mask.
    assert result.mask[31, 24]
    assert result.rgb[31, 24, 2] > 100 and result.rgb[31, 24, 0] < 60


def test_vertex_normals_of_a_box_point_outwards():
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    normals = vertex_normals(cube.vertices, cube.faces)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert (np.sum(normals * cube.vertices, axis=1) > 0).all()


@pytest.mark.parametrize(
    "vertices, faces, camera, message",
    [
        (np.zeros((3, 2)), np.array([[0, 1, 2]]), intrinsics(), "vertices must be"),
        (np.full((3, 3), np.nan), np.array([[0, 1, 2]]), intrinsics(), "NaN"),
        (np.ones((3, 3)), np.array([[0, 1, 3]]), intrinsics(), "out of range"),
        (np.ones((3, 3)), np.array([[0, 1, 2]]), np.eye(4), "intrinsics"),
    ],
)
def test_bad_input_gives_one_line_error(renderer, vertices, faces, camera, message):
    with pytest.raises(FastMetroError, match=message):
        renderer.render(vertices, faces, camera)


def test_background_of_the_wrong_size_is_refused(renderer):
    with pytest.raises(FastMetroError, match="background"):
        renderer.render(np.ones((3, 3)), np.array([[0, 1, 2]]), intrinsics(), background=np.zeros((8, 8, 3), np.uint8))


def test_missing_egl_gives_one_line_error(monkeypatch):
    import moderngl

    from fastmetro import render

    def no_display(**kwargs):
        raise Exception("requested backend not found\nmore detail")

    monkeypatch.setattr(moderngl, "create_standalone_context", no_display)
    with pytest.raises(FastMetroError, match=r"EGL: cannot create .*requested backend not found.*make render-deps"):
        render.Renderer(8, 8)


def test_depth_can_be_skipped(renderer):
    triangle = np.array([[-0.2, -0.2, 2.0], [0.2, -0.2, 2.0], [0.0, 0.3, 2.0]])
    full = renderer.render(triangle, np.array([[0, 1, 2]]), intrinsics())
    fast = renderer.render(triangle, np.array([[0, 1, 2]]), intrinsics(), with_depth=False)
    assert fast.depth is None
    np.testing.assert_array_equal(fast.rgb, full.rgb)
    np.testing.assert_array_equal(fast.mask, full.mask)
    np.testing.assert_array_equal(full.mask, full.depth > 0)


def test_torch_compiler_stack_imports_after_a_gl_context():
    # triton (under torch._dynamo), torchvision's compiled ops and Mesa's llvmpipe all bring
    # LLVM-linked code; in the wrong load order the process segfaults. Checked in a fresh
    # interpreter that opens a context first, then imports them and builds a timm model.
    import subprocess
    import sys

    code = (
        "from fastmetro.render import Renderer\n"
        "renderer = Renderer(8, 8)\n"
        "import torch._dynamo\n"
        "import torchvision.ops\n"
        "import timm\n"
        "timm.create_model('resnet18', pretrained=False)\n"
        "print('imported')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("other", ["renderer", "released", "raw_context"])
def test_a_renderer_draws_into_its_own_context_after_others_come_and_go(other):
    """Another GL context created (or released) in between must not redirect the draw: before the
    fix the first renderer drew into whichever context was current (silently wrong masks here,
    a segfault in the test suite)."""
    import gc

    from fastmetro.render import create_context

    vertices = np.array([[0.0, 0.0, 2.0], [0.4, 0.0, 2.0], [0.0, 0.4, 2.0]], np.float32)
    faces = np.array([[0, 1, 2]])
    camera = np.array([[50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]])
    first = Renderer(64, 64)
    expected = first.render(vertices, faces, camera)
    if other == "renderer":
        second = Renderer(32, 32, samples=4)
        second.render(vertices, faces, camera)
        del second
        gc.collect()
    elif other == "released":
        with Renderer(48, 48) as second:
            second.render(vertices, faces, camera)
    else:
        create_context().release()
    again = first.render(vertices, faces, camera)
    assert expected.mask.sum() > 20  # the triangle: ~45 pixels
    np.testing.assert_array_equal(again.mask, expected.mask)
    np.testing.assert_array_equal(again.rgb, expected.rgb)
    first.release()

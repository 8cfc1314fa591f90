"""Offscreen mesh renderer (moderngl on headless EGL), shared by synthetic data and overlays.

Geometry is given in OpenCV camera coordinates (metres; x right, y down, z forward) with a pinhole
intrinsics matrix ``K``; a point ``X`` lands on pixel ``(u, v) = (fx X/Z + cx, fy Y/Z + cy)``, where
integer ``(u, v)`` is the *centre* of pixel column ``u`` / row ``v`` (the OpenCV convention), so
labels projected with ``K`` line up with the rendered pixels.

The renderer needs an OpenGL 3.3 driver reachable through EGL. On Debian/Ubuntu without a GPU that
is Mesa's llvmpipe (packages ``libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri``; ``make render-deps``
installs them). With an NVIDIA driver installed, EGL picks the GPU instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fastmetro.errors import FastMetroError

if TYPE_CHECKING:
    import moderngl

_VERTEX_SHADER = """
#version 330
uniform vec4 intrinsics;      // fx, fy, cx, cy (pixels, OpenCV convention)
uniform vec2 image_size;      // W, H
uniform vec2 clip_range;      // near, far (metres)
in vec3 in_position;          // camera coordinates, metres
in vec3 in_normal;
in vec3 in_color;
in float in_label;            // 1 = the subject (goes into the mask), 0 = occluder
out vec3 v_position;
out vec3 v_normal;
out vec3 v_color;
out float v_label;
void main() {
    float z = in_position.z;
    float near = clip_range.x;
    float far = clip_range.y;
    // Pixel u (centre) sits at window x = u + 0.5; rows count down from the top, GL's go up.
    float clip_x = 2.0 * (intrinsics.x * in_position.x + (intrinsics.z + 0.5) * z) / image_size.x - z;
    float clip_y = z - 2.0 * (intrinsics.y * in_position.y + (intrinsics.w + 0.5) * z) / image_size.y;
    float clip_z = z * (far + near) / (far - near) - 2.0 * far * near / (far - near);
    gl_Position = vec4(clip_x, clip_y, clip_z, z);
    v_position = in_position;
    v_normal = in_normal;
    v_color = in_color;
    v_label = in_label;
}
"""

MAX_LIGHTS = 4

_FRAGMENT_SHADER = """
#version 330
#define MAX_LIGHTS @MAX_LIGHTS@
uniform int num_lights;
uniform vec3 light_directions[MAX_LIGHTS];  // unit vectors from each light towards the scene, camera coords
uniform vec3 light_colors[MAX_LIGHTS];
uniform float speculars[MAX_LIGHTS];
uniform vec3 ambient;
in vec3 v_position;
in vec3 v_normal;
in vec3 v_color;
in float v_label;
layout(location = 0) out vec4 out_color;
layout(location = 1) out vec2 out_depth_label;
void main() {
    vec3 normal = normalize(v_normal);
    vec3 to_camera = normalize(-v_position);
    // Meshes may be wound either way and seen from inside: light the side facing the camera.
    if (dot(normal, to_camera) < 0.0) normal = -normal;
    vec3 lit = vec3(0.0);
    vec3 shine = vec3(0.0);
    for (int i = 0; i < num_lights; ++i) {
        vec3 to_light = -light_directions[i];
        float diffuse = max(dot(normal, to_light), 0.0);
        vec3 half_vector = normalize(to_light + to_camera);
        lit += light_colors[i] * diffuse;
        shine += light_colors[i] * (speculars[i] * pow(max(dot(normal, half_vector), 0.0), 32.0));
    }
    vec3 color = v_color * (ambient + lit) + shine;
    out_color = vec4(clamp(color, 0.0, 1.0), v_label);  // alpha carries the subject mask
    out_depth_label = vec2(v_position.z, v_label);
}
""".replace("@MAX_LIGHTS@", str(MAX_LIGHTS))

_BACKGROUND_VERTEX_SHADER = """
#version 330
in vec2 in_corner;
out vec2 v_uv;
void main() {
    v_uv = vec2(in_corner.x * 0.5 + 0.5, 0.5 - in_corner.y * 0.5);  // row 0 of the image at the top
    gl_Position = vec4(in_corner, 1.0, 1.0);
}
"""

_BACKGROUND_FRAGMENT_SHADER = """
#version 330
uniform sampler2D background;
in vec2 v_uv;
layout(location = 0) out vec4 out_color;
layout(location = 1) out vec2 out_depth_label;
void main() {
    out_color = vec4(texture(background, v_uv).rgb, 0.0);
    out_depth_label = vec2(0.0, 0.0);
}
"""


@dataclass(frozen=True)
class RenderResult:
    """One rendered view.

    rgb: (H, W, 3) uint8. mask: (H, W) bool, pixels where the subject mesh is visible (occluders
    and background excluded). depth: (H, W) float32 camera-space z in metres of the visible
    surface (subject or occluder), 0 where only background is seen; None when the render was
    asked for ``with_depth=False``.
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray | None


@dataclass(frozen=True)
class Light:
    """Directional light plus ambient term (colours are linear RGB multipliers, 0..1+).

    Several lights (up to MAX_LIGHTS) may be given as a tuple: their diffuse and specular terms
    add up, and so do their ambient terms (give extra lights ``ambient=(0, 0, 0)``).
    """

    direction: tuple[float, float, float] = (0.3, 0.5, 1.0)  # camera coords, pointing into the scene
    color: tuple[float, float, float] = (0.8, 0.8, 0.8)
    ambient: tuple[float, float, float] = (0.35, 0.35, 0.35)
    specular: float = 0.1


@dataclass(frozen=True)
class MeshPart:
    """A mesh to draw alongside the subject (e.g. an occluder). Excluded from the mask.

    vertices: (V, 3) metres, camera coordinates; faces: (F, 3) int; color: (3,) or (V, 3) in 0..1.
    """

    vertices: np.ndarray
    faces: np.ndarray
    color: tuple[float, float, float] | np.ndarray = (0.5, 0.5, 0.5)
    normals: np.ndarray | None = None  # (V, 3); None = smooth normals from the faces


class VertexNormals:
    """Area-weighted unit vertex normals for one fixed face list (the sum is a sparse product).

    ``VertexNormals(faces, num_vertices)(vertices (V, 3)) -> (V, 3) float32``. Reuse one instance
    for many meshes of the same topology.
    """

    def __init__(self, faces: np.ndarray, num_vertices: int):
        import scipy.sparse

        self.faces = np.asarray(faces, dtype=np.int64)
        face_count = len(self.faces)
        rows = self.faces.reshape(-1)
        columns = np.repeat(np.arange(face_count), 3)
        self.incidence = scipy.sparse.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, columns)), shape=(num_vertices, face_count)
        )

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        vertices = np.asarray(vertices, dtype=np.float32)
        corners = vertices[self.faces]  # (F, 3, 3)
        face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normals = np.asarray(self.incidence @ face_normals, dtype=np.float32)
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        return normals / np.maximum(length, 1e-12)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals. vertices (V, 3), faces (F, 3) -> (V, 3) float32."""
    return VertexNormals(faces, len(vertices))(vertices)


def _load_llvm_users_first() -> None:
    # Mesa's llvmpipe, triton (pulled in by torch._dynamo, e.g. through roma/anny) and
    # torchvision's compiled ops (imported by timm) each bring LLVM-linked code; loading
    # either of the latter after Mesa has initialised crashes the process (segfault), the
    # other order works. So load them (when installed) before the first GL context.
    import importlib
    import importlib.util

    for module in ("triton", "torchvision.ops"):
        try:
            if importlib.util.find_spec(module.split(".")[0]) is not None:
                importlib.import_module(module)
        except Exception:  # a broken optional extension is not the renderer's business
            pass


def create_context(device_index: int | None = None):
    """A headless moderngl context on EGL, or a one-line FastMetroError saying what to install."""
    import moderngl

    _load_llvm_users_first()

    kwargs: dict[str, Any] = {"backend": "egl", "require": 330}
    if device_index is not None:
        kwargs["device_index"] = device_index
    try:
        return moderngl.create_standalone_context(**kwargs)
    except Exception as error:  # glcontext raises plain Exception subclasses
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FastMetroError(
            f"EGL: cannot create an offscreen OpenGL 3.3 context ({message}); "
            "install Mesa's EGL/llvmpipe (`make render-deps`) or a GPU driver"
        ) from None


def _color_array(color, count: int, what: str) -> np.ndarray:
    color = np.asarray(color, dtype=np.float32)
    if color.shape == (3,):
        return np.broadcast_to(color, (count, 3))
    if color.shape == (count, 3):
        return color
    raise FastMetroError(f"{what}: color must have shape (3,) or ({count}, 3), got {color.shape}")


def _check_mesh(vertices: np.ndarray, faces: np.ndarray, intrinsics: np.ndarray, normals) -> None:
    """One-line FastMetroError for malformed render inputs."""
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise FastMetroError(f"renderer: vertices must be (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise FastMetroError(f"renderer: faces must be (F, 3), got {faces.shape}")
    if intrinsics.shape != (3, 3):
        raise FastMetroError(f"renderer: intrinsics must be (3, 3), got {intrinsics.shape}")
    if not np.isfinite(vertices).all():
        raise FastMetroError("renderer: vertices contain NaN or infinity")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise FastMetroError(f"renderer: face indices out of range for {len(vertices)} vertices")
    if normals is not None and np.shape(normals) != vertices.shape:
        raise FastMetroError(f"renderer: normals must have shape {vertices.shape}, got {np.shape(normals)}")


def _pack(parts) -> tuple[np.ndarray, np.ndarray]:
    """Interleave (vertices, faces, colours, label, normals) parts into one vertex / index buffer.

    Vertex rows are ``position(3) normal(3) colour(3) label(1)`` float32; indices uint32.
    """
    vertex_blocks, index_blocks, offset = [], [], 0
    for part_vertices, part_faces, part_colors, label, part_normals in parts:
        block = np.empty((len(part_vertices), 10), dtype=np.float32)
        block[:, 0:3] = part_vertices
        block[:, 3:6] = vertex_normals(part_vertices, part_faces) if part_normals is None else part_normals
        block[:, 6:9] = part_colors
        block[:, 9] = label
        vertex_blocks.append(block)
        index_blocks.append(part_faces.astype(np.uint32).reshape(-1) + offset)
        offset += len(part_vertices)
    return np.concatenate(vertex_blocks), np.concatenate(index_blocks)


class Renderer:
    """Render triangle meshes offscreen to RGB, a subject mask and a depth map.

    One OpenGL context per Renderer (and per process: create it in the worker that uses it).
    ``samples`` > 0 enables multisample anti-aliasing (slower on llvmpipe).
    """

    def __init__(self, width: int, height: int, samples: int = 0, device_index: int | None = None):
        if width <= 0 or height <= 0:
            raise FastMetroError(f"renderer: image size must be positive, got {width}x{height}")
        self.width = int(width)
        self.height = int(height)
        self.samples = int(samples)
        self.ctx = create_context(device_index)
        ctx = self.ctx
        self._program = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        self._background_program = ctx.program(
            vertex_shader=_BACKGROUND_VERTEX_SHADER, fragment_shader=_BACKGROUND_FRAGMENT_SHADER
        )
        corners = np.array([-1, -1, 1, -1, -1, 1, 1, 1], dtype=np.float32)
        self._background_vao = ctx.vertex_array(
            self._background_program, [(ctx.buffer(corners.tobytes()), "2f", "in_corner")]
        )
        self._background_texture = ctx.texture((self.width, self.height), 3)
        self._background_texture.filter = (ctx.LINEAR, ctx.LINEAR)
        size = (self.width, self.height)
        self._fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer(size, 4), ctx.renderbuffer(size, 2, dtype="f4")],
            depth_attachment=ctx.depth_renderbuffer(size),
        )
        if self.samples > 0:
            self._draw_fbo = ctx.framebuffer(
                color_attachments=[
                    ctx.renderbuffer(size, 4, samples=self.samples),
                    ctx.renderbuffer(size, 2, dtype="f4", samples=self.samples),
                ],
                depth_attachment=ctx.depth_renderbuffer(size, samples=self.samples),
            )
        else:
            self._draw_fbo = self._fbo
        self._vertex_buffer: moderngl.Buffer | None = None
        self._index_buffer: moderngl.Buffer | None = None
        self._vao: moderngl.VertexArray | None = None

    def _upload(self, vertex_data: np.ndarray, index_data: np.ndarray) -> None:
        # Grow-only buffers: the same topology is rendered thousands of times.
        ctx = self.ctx
        rebuild = False
        if self._vertex_buffer is None or self._vertex_buffer.size < vertex_data.nbytes:
            if self._vertex_buffer is not None:
                self._vertex_buffer.release()
            self._vertex_buffer = ctx.buffer(reserve=vertex_data.nbytes)
            rebuild = True
        if self._index_buffer is None or self._index_buffer.size < index_data.nbytes:
            if self._index_buffer is not None:
                self._index_buffer.release()
            self._index_buffer = ctx.buffer(reserve=index_data.nbytes)
            rebuild = True
        assert self._vertex_buffer is not None and self._index_buffer is not None  # allocated above
        self._vertex_buffer.write(vertex_data.tobytes())
        self._index_buffer.write(index_data.tobytes())
        if rebuild:
            if self._vao is not None:
                self._vao.release()
            self._vao = ctx.vertex_array(
                self._program,
                [(self._vertex_buffer, "3f 3f 3f 1f", "in_position", "in_normal", "in_color", "in_label")],
                index_buffer=self._index_buffer,
                index_element_size=4,
            )

    def render(
        self,
        vertices: np.ndarray,
        faces: np.ndarray,
        intrinsics: np.ndarray,
        color=(0.7, 0.7, 0.75),
        background: np.ndarray | None = None,
        light: Light | tuple[Light, ...] | None = None,
        extra_meshes: tuple[MeshPart, ...] = (),
        near: float = 0.05,
        far: float = 100.0,
        normals: np.ndarray | None = None,
        with_depth: bool = True,
    ) -> RenderResult:
        """Render one mesh (plus optional occluders) over a background.

        vertices: (V, 3) metres, OpenCV camera coordinates. faces: (F, 3) int.
        intrinsics: (3, 3) pixels. color: (3,) or per-vertex (V, 3) in 0..1.
        background: None (black) or an (H, W, 3) uint8 image of the output size.
        light: key light + ambient (default :class:`Light`), or a tuple of up to MAX_LIGHTS
        lights. extra_meshes: occluders, drawn but left out of the mask. near/far: clipping
        depths (metres). normals: optional precomputed (V, 3) vertex normals (else smooth
        area-weighted normals from the faces).
        with_depth: False skips reading the depth buffer back (faster; ``depth`` is None).
        """
        vertices = np.asarray(vertices, dtype=np.float32)
        faces = np.asarray(faces)
        intrinsics = np.asarray(intrinsics, dtype=np.float64)
        _check_mesh(vertices, faces, intrinsics, normals)
        lights = (light or Light(),) if not isinstance(light, (tuple, list)) else tuple(light)
        if not 1 <= len(lights) <= MAX_LIGHTS:
            raise FastMetroError(f"renderer: 1 to {MAX_LIGHTS} lights, got {len(lights)}")
        parts = [(vertices, faces, _color_array(color, len(vertices), "renderer"), 1.0, normals)]
        for part in extra_meshes:
            part_vertices = np.asarray(part.vertices, dtype=np.float32)
            parts.append(
                (
                    part_vertices,
                    np.asarray(part.faces),
                    _color_array(part.color, len(part_vertices), "renderer occluder"),
                    0.0,
                    part.normals,
                )
            )
        vertex_data, index_data = _pack(parts)
        # Make this renderer's context current for the whole draw: creating or releasing another
        # context (another Renderer, in a test or an app) changes EGL's current context, and
        # drawing into a context that is not current crashed the process (segfault in llvmpipe).
        with self.ctx:
            self._upload(vertex_data, index_data)
            self._set_uniforms(intrinsics, near, far, lights)
            self._draw(background, len(index_data))
            return self._read(with_depth)

    def _set_uniforms(self, intrinsics: np.ndarray, near: float, far: float, lights: tuple[Light, ...]) -> None:
        program = self._program
        program["intrinsics"].value = (
            float(intrinsics[0, 0]),
            float(intrinsics[1, 1]),
            float(intrinsics[0, 2]),
            float(intrinsics[1, 2]),
        )
        program["image_size"].value = (float(self.width), float(self.height))
        program["clip_range"].value = (float(near), float(far))
        directions, colors, speculars = [], [], []
        ambient = np.zeros(3)
        for light in lights:
            direction = np.asarray(light.direction, dtype=np.float64)
            directions.append(tuple(float(x) for x in direction / max(float(np.linalg.norm(direction)), 1e-12)))
            colors.append(tuple(float(x) for x in light.color))
            speculars.append(float(light.specular))
            ambient = ambient + np.asarray(light.ambient, dtype=np.float64)
        padding = MAX_LIGHTS - len(lights)
        program["num_lights"].value = len(lights)
        program["light_directions"].value = directions + [(0.0, 0.0, 1.0)] * padding
        program["light_colors"].value = colors + [(0.0, 0.0, 0.0)] * padding
        program["speculars"].value = speculars + [0.0] * padding
        program["ambient"].value = tuple(float(x) for x in ambient)

    def _draw(self, background: np.ndarray | None, index_count: int) -> None:
        ctx = self.ctx
        fbo = self._draw_fbo
        fbo.use()
        ctx.viewport = (0, 0, self.width, self.height)
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        if background is not None:
            background = np.asarray(background)
            if background.shape != (self.height, self.width, 3) or background.dtype != np.uint8:
                raise FastMetroError(
                    f"renderer: background must be a ({self.height}, {self.width}, 3) uint8 image, "
                    f"got {background.shape} {background.dtype}"
                )
            self._background_texture.write(np.ascontiguousarray(background).tobytes())
            self._background_texture.use(0)
            self._background_program["background"].value = 0
            ctx.disable(ctx.DEPTH_TEST)
            self._background_vao.render(mode=ctx.TRIANGLE_STRIP)
        ctx.enable(ctx.DEPTH_TEST)
        ctx.disable(ctx.CULL_FACE)
        assert self._vao is not None  # built by the upload above
        self._vao.render(vertices=index_count)
        if fbo is not self._fbo:
            ctx.copy_framebuffer(self._fbo, fbo)

    def _read(self, with_depth: bool) -> RenderResult:
        # GL rows go bottom-up; images go top-down.
        rgba = np.frombuffer(self._fbo.read(components=4, attachment=0), dtype=np.uint8)
        rgba = rgba.reshape(self.height, self.width, 4)[::-1]
        depth = None
        if with_depth:
            depth_label = np.frombuffer(self._fbo.read(components=2, attachment=1, dtype="f4"), dtype=np.float32)
            depth = np.ascontiguousarray(depth_label.reshape(self.height, self.width, 2)[::-1, :, 0])
        return RenderResult(
            rgb=np.ascontiguousarray(rgba[..., :3]),
            mask=np.ascontiguousarray(rgba[..., 3] > 127),
            depth=depth,
        )

    def release(self) -> None:
        """Free the GL context now (otherwise at garbage collection)."""
        if self.ctx is not None:
            self.ctx.release()
            self.ctx = None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

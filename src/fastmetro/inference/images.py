"""Reading user images and videos into 8-bit RGB arrays, with one-line errors.

Every image becomes (H, W, 3) uint8 RGB, upright:

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so phone photos are upright;
* grayscale (8/16/32-bit, float) is scaled to 8 bits by its bit depth and replicated to RGB;
* 16-bit colour is reduced to 8 bits by Pillow; palette images are expanded;
* transparency (RGBA, LA, palette with transparency) is composited over black, the value the
  crop uses outside the image.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fastmetro.errors import FastMetroError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")

# A truncated file must be an error, not a silently grey half image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert any Pillow image to (H, W, 3) uint8 RGB (see the module docstring)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image).astype(np.float64)
        if mode.startswith("I;16"):
            peak = 65535.0
        elif mode == "F":
            peak = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
        else:  # 32-bit integer; Pillow also uses it for 16-bit PNG/TIFF
            peak = 65535.0 if values.size and values.max() > 255 else 255.0
        gray = np.clip(np.nan_to_num(values) * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("LA", "PA", "La", "RGBa"):
        image, mode = image.convert("RGBA"), "RGBA"
    if mode == "RGBA":
        rgba = np.asarray(image).astype(np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return (rgba[..., :3] * alpha).round().astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def load_image(path: str | os.PathLike, max_pixels: int | None = None, name: str | None = None) -> np.ndarray:
    """Read an image file as upright (H, W, 3) uint8 RGB.

    Args:
        max_pixels: refuse images with more pixels (checked from the header, before decoding).
        name: the file's name in messages (default: ``path``).

    Raises:
        FastMetroError: ``"<path>: <problem>"`` for a missing, unreadable, truncated or too
        large file.
    """
    path = Path(path)
    label = str(path) if name is None else name
    if not path.is_file():
        raise FastMetroError(f"{label}: file not found")
    try:
        image: Image.Image
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise FastMetroError(
                    f"{label}: the image is {width}x{height} ({width * height / 1e6:.1f} megapixels), "
                    f"over the limit of {max_pixels / 1e6:g} megapixels; make it smaller"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            pixels = to_rgb8(image)
    except UnidentifiedImageError:
        raise FastMetroError(f"{label}: not a readable image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        message = str(error) if name is None else str(error).replace(str(path), name)
        raise FastMetroError(f"{label}: cannot decode image ({message})") from None
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise FastMetroError(f"{label}: image has zero size")
    return pixels


@dataclass(frozen=True)
class Frame:
    """One input image: ``name`` (unique output stem), ``source`` (path for messages) and a
    loader that returns (H, W, 3) uint8 RGB or raises :class:`FastMetroError`."""

    name: str
    source: str
    index: int | None = None  # frame number in a video
    pixels: np.ndarray | None = None

    def load(self, max_pixels: int | None = None) -> np.ndarray:
        if self.pixels is not None:
            height, width = self.pixels.shape[:2]
            if max_pixels is not None and width * height > max_pixels:
                raise FastMetroError(
                    f"{self.source}: the image is {width}x{height}, over the limit of {max_pixels / 1e6:g} megapixels"
                )
            return self.pixels
        return load_image(self.source, max_pixels)


def iter_video(path: str | os.PathLike, name: str | None = None, label: str | None = None) -> Iterator[Frame]:
    """Frames of a video file (imageio's PyAV plugin), as RGB :class:`Frame`s.

    Frame ``i`` is named ``<name>_f<i:06d>`` (``name`` defaults to the file's stem); ``label``
    names the file in sources and messages (default: ``path``).
    """
    import imageio.v3 as iio

    path = Path(path)
    name = path.stem if name is None else name
    label = str(path) if label is None else label
    try:
        for index, pixels in enumerate(iio.imiter(path, plugin="pyav")):
            pixels = np.asarray(pixels)
            if pixels.ndim == 2:
                pixels = np.repeat(pixels[..., None], 3, axis=2)
            yield Frame(
                name=f"{name}_f{index:06d}",
                source=f"{label}#frame{index}",
                index=index,
                pixels=np.ascontiguousarray(pixels[..., :3].astype(np.uint8)),
            )
    except FastMetroError:
        raise
    except Exception as error:  # PyAV raises its own error types for corrupt streams
        message = str(error).replace(str(path), label)
        raise FastMetroError(f"{label}: cannot read video ({type(error).__name__}: {message})") from None


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image files, folders (their images, sorted, not recursive) and video files, in order.

    Raises:
        FastMetroError: an input that does not exist, or an empty folder.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FastMetroError(f"{path}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise FastMetroError(f"{path}: no such file or folder")
    return paths


def output_names(paths: list[Path]) -> list[str]:
    """One distinct output folder name per input path, the same whatever the other inputs' order.

    A file's stem when no other input has it; else ``<stem>_<extension>`` (``a.jpg``, ``a.png``
    -> ``a_jpg``, ``a_png``); else (the same file name in several folders) the parent folder's
    name in front (``x_a_jpg``); a name still taken (the same path twice, or a stem that equals
    another input's generated name) gets ``_2``, ``_3``... in input order.
    """
    stems = [path.stem for path in paths]
    with_suffix = [f"{path.stem}_{path.suffix.lstrip('.')}" if path.suffix else path.stem for path in paths]
    names = []
    for index, path in enumerate(paths):
        if stems.count(stems[index]) == 1:
            names.append(stems[index])
        elif with_suffix.count(with_suffix[index]) == 1:
            names.append(with_suffix[index])
        else:
            names.append(f"{path.parent.name}_{with_suffix[index]}" if path.parent.name else with_suffix[index])
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, count = name, 1
        while candidate in taken:
            count += 1
            candidate = f"{name}_{count}"
        taken.add(candidate)
        unique.append(candidate)
    return unique


def iter_frames(paths: list[Path]) -> Iterator[Frame]:
    """Frames for ``paths`` (from :func:`expand_inputs`), named by :func:`output_names` (video
    frames ``<name>_f<index>``); images load lazily so a bad file fails on its own."""
    for path, name in zip(paths, output_names(paths)):
        if is_video(path):
            yield from iter_video(path, name)
        else:
            yield Frame(name=name, source=str(path))


__all__ = [
    "Frame",
    "load_image",
    "output_names",
    "to_rgb8",
    "iter_video",
    "iter_frames",
    "expand_inputs",
    "is_video",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
]

"""``fastmetro synth --preview``: a contact sheet of a dataset, one tile per pose family.

Each tile is one image with its 2D joints (visible: filled dots, outside the image: not drawn)
and limbs (right red, left blue, trunk green) and, for version-2 data, its pose family.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastmetro.data.synthetic.pose_families import FAMILIES
from fastmetro.data.tsv import TSVDataset
from fastmetro.errors import FastMetroError
from fastmetro.io import atomic_write

# LSP-14 order (R_Ankle, R_Knee, R_Hip, L_Hip, L_Knee, L_Ankle, R_Wrist, R_Elbow, R_Shoulder,
# L_Shoulder, L_Elbow, L_Wrist, Neck, Head): limbs drawn on the preview.
PREVIEW_BONES = (
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 4),
    (4, 5),
    (6, 7),
    (7, 8),
    (8, 12),
    (9, 12),
    (9, 10),
    (10, 11),
    (12, 13),
    (2, 8),
    (3, 9),
)
RIGHT_JOINTS = {0, 1, 2, 6, 7, 8}
LEFT_JOINTS = {3, 4, 5, 9, 10, 11}
SCAN_ROWS = 5000  # labels read to find one row per family


def pick_rows(dataset, cells: int) -> list[int]:
    """Row indices for the sheet: the first row of each pose family, then the first rows left."""
    first_of: dict[str, int] = {}
    for index in range(min(len(dataset), SCAN_ROWS)):
        family = dataset.label(index)[1].get("pose_family")
        if family is not None and family not in first_of:
            first_of[family] = index

    rows = [first_of[name] for name in FAMILIES if name in first_of][:cells]
    for index in range(len(dataset)):
        if len(rows) >= cells:
            break
        if index not in rows:
            rows.append(index)
    return rows


def _draw_tile(image: np.ndarray, label: dict, tile: int) -> np.ndarray:
    import cv2

    zoom = tile / max(image.shape[:2])
    image = cv2.resize(
        np.ascontiguousarray(image),
        (round(image.shape[1] * zoom), round(image.shape[0] * zoom)),
        interpolation=cv2.INTER_LINEAR,
    )
    joints = np.asarray(label["2d_joints"], dtype=np.float64)
    points = (joints[:, :2] + 0.5) * zoom - 0.5  # pixel centres scale about the image corner
    visible = joints[:, 2] > 0

    def at(j):
        return tuple(int(round(c)) for c in points[j])

    if len(points) == 14:
        for a, b in PREVIEW_BONES:
            colour = (
                (255, 60, 60) if {a, b} <= RIGHT_JOINTS else (60, 120, 255) if {a, b} <= LEFT_JOINTS else (60, 220, 60)
            )
            cv2.line(image, at(a), at(b), colour, 2, cv2.LINE_AA)
    for j in np.flatnonzero(visible):
        cv2.circle(image, at(j), 3, (255, 255, 0), -1, cv2.LINE_AA)
    caption = label.get("pose_family")
    if caption:
        cv2.putText(image, caption, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, caption, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def write_preview(yaml_path: str | os.PathLike, out_path: str | os.PathLike, tile: int = 256) -> Path:
    """A contact sheet PNG (3x3, or 4x3 when the data hold more than 9 pose families)."""
    import cv2

    dataset = TSVDataset(yaml_path)
    if len(dataset) == 0:
        raise FastMetroError(f"{yaml_path}: empty dataset, nothing to preview")
    families = {dataset.label(i)[1].get("pose_family") for i in range(min(len(dataset), SCAN_ROWS))}
    columns = 4 if len(families - {None}) > 9 else 3
    rows = pick_rows(dataset, columns * 3)
    sheet = np.zeros((3 * tile, columns * tile, 3), np.uint8)
    for cell, index in enumerate(rows):
        row = dataset[index]
        image = _draw_tile(row.image, row.label, tile)
        top, left = (cell // columns) * tile, (cell % columns) * tile
        sheet[top : top + image.shape[0], left : left + image.shape[1]] = image
    out_path = Path(out_path)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FastMetroError(f"{out_path}: PNG encoding failed")
    with atomic_write(out_path) as handle:
        handle.write(encoded.tobytes())
    return out_path

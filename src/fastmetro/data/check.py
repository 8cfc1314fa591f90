"""Validate every row of a METRO-format dataset (``fastmetro data check``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastmetro.data.labels import parse_annotation
from fastmetro.data.tsv import BadRowError, TSVDataset


@dataclass
class CheckReport:
    """Rows checked and the bad ones (key -> one-line problem, in row order)."""

    yaml_path: str
    num_rows: int = 0
    bad_rows: dict[str, str] = field(default_factory=dict)
    rows_with_vertices: int = 0
    rows_with_joints_3d: int = 0
    rows_with_smpl: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad_rows

    def summary(self, max_keys: int = 20) -> str:
        lines = [
            f"{self.yaml_path}: {self.num_rows} rows, {len(self.bad_rows)} bad; "
            f"with 3D joints {self.rows_with_joints_3d}, SMPL/MANO parameters {self.rows_with_smpl}, "
            f"vertices {self.rows_with_vertices}"
        ]
        for number, (key, problem) in enumerate(self.bad_rows.items()):
            if number == max_keys:
                lines.append(f"  ... and {len(self.bad_rows) - max_keys} more")
                break
            lines.append(f"  bad row {key!r}: {problem}")
        return "\n".join(lines)


def check_dataset(
    yaml_path: str | os.PathLike,
    num_joints: int | None = None,
    num_vertices: int | None = None,
    progress: bool = False,
) -> CheckReport:
    """Decode every row (image, label, hw, vertices) and validate the label fields.

    ``num_joints`` / ``num_vertices``: the topology's K / V0, if known. Dataset-level problems
    (missing files, bad yaml) raise :class:`~fastmetro.errors.FastMetroError`.
    """
    dataset = TSVDataset(yaml_path)
    report = CheckReport(str(dataset.yaml_path), num_rows=len(dataset))
    indices: Iterable[int] = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="checking rows", unit="row")
    for index in indices:
        try:
            row = dataset[index]
            source = dataset.source_name_of(row)
            height, width = row.image.shape[:2]  # the reader checked the hw column against them
            annotation = parse_annotation(row.label, row.key, source, num_joints=num_joints, image_hw=(height, width))
            if row.vertices is not None and num_vertices is not None and row.vertices.shape[0] != num_vertices:
                raise BadRowError(source, row.key, f"{row.vertices.shape[0]} vertices, the topology has {num_vertices}")
        except BadRowError as error:
            report.bad_rows.setdefault(error.key, error.problem)
            continue
        report.rows_with_vertices += row.vertices is not None
        report.rows_with_joints_3d += annotation.has_joints_3d
        report.rows_with_smpl += annotation.has_smpl
    return report


__all__ = ["CheckReport", "check_dataset"]

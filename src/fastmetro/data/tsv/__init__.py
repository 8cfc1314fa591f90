"""METRO/FastMETRO TSV datasets: random-access reader and atomic writer.

File layout (the format the released METRO/FastMETRO code reads, plus one documented extension)
---------------------------------------------------------------------------------------------

A *shard* ``NAME`` in a folder is::

    NAME.img.tsv      key \\t base64(JPEG or PNG bytes)            one row per sample
    NAME.label.tsv    key \\t JSON list holding one dict (labels)   same rows, same order
    NAME.hw.tsv       key \\t [{"height": H, "width": W}]           (or key \\t "H W")
    *.lineidx         byte offset of every row of the .tsv with the same stem, one per line
    NAME.vertices.npy optional (N, V0, 3) float32/float16 ground-truth vertices (extension)
    NAME.yaml         {img, label, hw[, linelist][, vertices]} paths relative to the yaml

A ``linelist`` tsv lists the row indices to use, one per line. A *composite* yaml has
``composite: true``; ``img``, ``label``, ``hw`` (and optionally ``vertices``) are lists of paths
(or the path of a text file listing them, one per line) and ``linelist`` is a two-column tsv
``source_index \\t row_index``; a composite row key is ``<img tsv path as written>_<key>``.

Vertex extension: ``vertices`` in a shard yaml names an ``.npy`` memory-mapped at read time;
label fields ``has_vertices`` (0/1) and ``vertices_row`` (row of the ``.npy``, -1 for none) say
which row belongs to a label. See :mod:`fastmetro.data.labels` for every label field.

The reader opens file handles lazily *per process* (it notices a fork by the pid), so one
dataset object can be shared by several DataLoader workers. A ``.lineidx`` that is missing is
generated (atomically) on first use.

The writer (:class:`TSVDatasetWriter`) writes every file of a shard to temporary names and
renames them into place on a clean close, the yaml last: a shard whose yaml exists is complete;
a crash leaves no half shard (only ``.*.tmp`` files, removed on an exception).

The package has one module per idea: :mod:`.errors` (:class:`BadRowError`), :mod:`.index` (``.lineidx``
and random row access, linelists), :mod:`.spec` (dataset yaml), :mod:`.decode` (image, label and hw
columns), :mod:`.reader` (:class:`TSVDataset`) and :mod:`.writer` (:class:`TSVDatasetWriter`).
"""

from __future__ import annotations

from fastmetro.data.tsv.decode import decode_image, parse_hw, parse_label_json
from fastmetro.data.tsv.errors import BadRowError, one_line_message
from fastmetro.data.tsv.index import TSVFile, generate_lineidx, lineidx_path, read_linelist, row_offsets
from fastmetro.data.tsv.reader import RawRow, TSVDataset
from fastmetro.data.tsv.spec import DatasetSpec, Source, read_yaml
from fastmetro.data.tsv.writer import TSVDatasetWriter, encode_image, shard_is_complete, write_composite_yaml

__all__ = [
    "BadRowError",
    "one_line_message",
    "DatasetSpec",
    "RawRow",
    "Source",
    "TSVDataset",
    "TSVDatasetWriter",
    "TSVFile",
    "decode_image",
    "encode_image",
    "generate_lineidx",
    "lineidx_path",
    "parse_hw",
    "parse_label_json",
    "read_linelist",
    "read_yaml",
    "row_offsets",
    "shard_is_complete",
    "write_composite_yaml",
]

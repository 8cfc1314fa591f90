"""Fuzz: the label JSON and hw columns of a METRO shard, read by `data check` and by training/eval.

Each damaged label sits in row 0 of a two-row shard (row 1 stays good). A bad row must be listed
by ``check_dataset`` (the other row untouched) and must stop ``MeshDataset`` with one line naming
the label file and the row key; an accepted label must give a sample of finite numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from data_helpers import label, replace_row, tiny_topology, write_shard
from fastmetro.data.check import check_dataset
from fastmetro.data.dataset import MeshDataset
from fastmetro.data.tsv import TSVDataset
from fuzz_helpers import expect_clean, expect_error, expect_ok

TOPOLOGY = tiny_topology()
KEY = "s_0"


class Shard:
    """A two-row shard (14 joints, 8 vertices per row) whose row-0 label and hw can be replaced."""

    def __init__(self, directory):
        self.directory = directory
        self.yaml = write_shard(directory, "s", 2, with_vertices=True)
        self.label_tsv = directory / "s.label.tsv"
        self.hw_tsv = directory / "s.hw.tsv"
        self.good_label = self.label_tsv.read_bytes()
        self.good_hw = self.hw_tsv.read_bytes()

    def base_label(self) -> dict:
        text = self.good_label.splitlines()[0].split(b"\t", 1)[1]
        return json.loads(text)[0]

    def set_label(self, value, key: str = KEY) -> None:
        """``value``: a dict (merged over nothing), a list, or the raw column text/bytes."""
        self.restore()
        if isinstance(value, bytes):
            line = key.encode() + b"\t" + value + b"\n"
        elif isinstance(value, str):
            line = f"{key}\t{value}\n"
        else:
            line = f"{key}\t{json.dumps(value if isinstance(value, list) else [value])}\n"
        replace_row(self.label_tsv, 0, line)

    def set_fields(self, **fields) -> None:
        merged = self.base_label()
        for name, value in fields.items():
            if value is DROP:
                merged.pop(name, None)
            else:
                merged[name] = value
        self.set_label(merged)

    def set_hw(self, text: str) -> None:
        self.restore()
        replace_row(self.hw_tsv, 0, f"{KEY}\t{text}\n")

    def restore(self) -> None:
        for path, data in ((self.label_tsv, self.good_label), (self.hw_tsv, self.good_hw)):
            if path.read_bytes() != data:
                replace_row(path, 0, data.splitlines(keepends=True)[0])


DROP = object()


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return Shard(tmp_path_factory.mktemp("labels"))


def load_sample(shard: Shard, index: int = 0) -> dict:
    return MeshDataset(shard.yaml, TOPOLOGY).load(index)


def assert_finite_sample(sample: dict) -> None:
    for name, value in sample.items():
        if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
            pytest.fail(f"[silent] sample '{name}' has non-finite values")


def assert_bad_row(shard: Shard, match: str | None = None, file: str = "s.label.tsv") -> None:
    """Row 0 is reported by `data check` (row 1 is not) and stops MeshDataset with one clean line."""
    status, report = expect_clean(check_dataset, shard.yaml, num_joints=14, num_vertices=8)
    if status == "error":
        pytest.fail(f"[message] a bad row stopped data check instead of being listed: {report}")
    if KEY not in report.bad_rows:
        pytest.fail(f"[silent] data check accepted the row (bad rows: {report.bad_rows})")
    if set(report.bad_rows) != {KEY}:
        pytest.fail(f"[silent] one bad row spoiled others: {report.bad_rows}")
    if match is not None:
        assert __import__("re").search(match, report.bad_rows[KEY]), report.bad_rows[KEY]
    expect_error(load_sample, shard, names=(file, KEY))
    # the good row still loads
    assert_finite_sample(expect_ok(load_sample, shard, 1))


def assert_good_row(shard: Shard) -> dict:
    status, report = expect_clean(check_dataset, shard.yaml, num_joints=14, num_vertices=8)
    if status != "ok" or not report.ok:
        pytest.fail(f"[refused] documented acceptance refused: {report.bad_rows if status == 'ok' else report}")
    sample = expect_ok(load_sample, shard)
    assert_finite_sample(sample)
    return sample


# ---------------------------------------------------------------------------- flags
@pytest.mark.parametrize("name", ["has_vertices", "has_smpl", "has_2d_joints", "has_3d_joints"])
@pytest.mark.parametrize("value", ["yes", "1", math.inf, -math.inf, math.nan, 2, -1, 0.5, {"a": 1}, [1, 0], [[1]], []])
def test_flag_of_wrong_type_or_value_is_a_bad_row(shard, name, value):
    shard.set_fields(**{name: value})
    assert_bad_row(shard, match=name)


@pytest.mark.parametrize("value", [1, True, [1], 1.0])
def test_has_vertices_released_spellings_are_accepted(shard, value):
    """Documented acceptance: 0/1, true/false and the released one-element list [1]."""
    shard.set_fields(has_vertices=value, vertices_row=0)
    sample = assert_good_row(shard)
    assert float(sample["has_vertices"]) == 1.0


@pytest.mark.parametrize("value", [0, False, [0], None])
def test_has_vertices_off_means_no_vertices(shard, value):
    shard.set_fields(has_vertices=value)
    sample = assert_good_row(shard)
    assert float(sample["has_vertices"]) == 0.0


# ---------------------------------------------------------------------------- vertices_row
@pytest.mark.parametrize("value", [math.inf, math.nan, 1.5, "1", True, [0], 10**30, 2, -1, None])
def test_vertices_row_of_wrong_type_or_range_is_a_bad_row(shard, value):
    shard.set_fields(has_vertices=1, vertices_row=value)
    assert_bad_row(shard, match="vertices_row")


# ---------------------------------------------------------------------------- box
@pytest.mark.parametrize(
    "fields, what",
    [
        ({"center": ["a", 1]}, "center"),
        ({"center": [1]}, "center"),
        ({"center": "40 30"}, "center"),
        ({"center": [math.nan, 1]}, "center"),
        ({"center": [1e300, 1e300]}, "center"),
        ({"center": [True, False]}, "center"),
        ({"center": None}, "center"),
        ({"scale": "0.3"}, "scale"),
        ({"scale": 0}, "scale"),
        ({"scale": -0.3}, "scale"),
        ({"scale": math.inf}, "scale"),
        ({"scale": 1e-12}, "scale"),
        ({"scale": 1e300}, "scale"),
        ({"scale": [0.3, 0.3]}, "scale"),
        ({"scale": {"s": 1}}, "scale"),
        ({"center": DROP}, "center"),
    ],
)
def test_bad_box_is_a_bad_row(shard, fields, what):
    shard.set_fields(**fields)
    assert_bad_row(shard, match=what)


def test_label_without_a_box_uses_the_whole_image(shard):
    shard.set_fields(center=DROP, scale=DROP)
    assert_good_row(shard)


# ---------------------------------------------------------------------------- joints
@pytest.mark.parametrize(
    "name, value",
    [
        ("2d_joints", "joints"),
        ("2d_joints", {"x": 1}),
        ("2d_joints", [[1, 2, 1], [1, 2]]),
        ("2d_joints", [[1, 2, 1]] * 13 + [["a", 2, 1]]),
        ("2d_joints", [[1, 2]] * 14),
        ("2d_joints", [[1e300, 2, 1]] * 14),
        ("2d_joints", [[1, 2, -1]] * 14),
        ("2d_joints", [[1, 2, 1]] * 9),
        ("2d_joints", []),
        ("3d_joints", [[0.1, 0.2, 0.3, math.inf]] * 14),
        ("3d_joints", [[0.1, 0.2, 0.3]] * 14),
        ("3d_joints", [[None, 0.2, 0.3, 1]] * 14),
        ("3d_joints", [[1e200, 0.2, 0.3, 1]] * 14),
        ("joints_format", "J24"),
        ("joints_format", 24),
    ],
)
def test_bad_joints_are_a_bad_row(shard, name, value):
    shard.set_fields(**{name: value})
    assert_bad_row(shard)


def test_joints_nested_one_level_are_accepted(shard):
    """Documented acceptance: ``2d_joints`` nested one level ([[...]]) as some releases store it."""
    base = shard.base_label()
    shard.set_fields(**{"2d_joints": [base["2d_joints"]]})
    assert_good_row(shard)


# ---------------------------------------------------------------------------- pose / camera / misc
@pytest.mark.parametrize(
    "fields",
    [
        {"has_smpl": 1, "pose": [0.0] * 72},
        {"has_smpl": 1, "pose": "zero", "betas": [0.0] * 10},
        {"has_smpl": 1, "pose": [0.0] * 72, "betas": []},
        {"has_smpl": 1, "pose": [math.nan] * 72, "betas": [0.0] * 10},
        {"has_smpl": 1, "pose": [0.0] * 72, "betas": [1e300] * 10},
        {"camera": {"fx": "500", "fy": 500, "cx": 40, "cy": 30}},
        {"camera": {"fx": 500, "fy": 500, "cx": 40}},
        {"camera": [500, 500, 40, 30]},
        {"camera": {"fx": -500, "fy": 500, "cx": 40, "cy": 30}},
        {"camera": {"fx": math.inf, "fy": 500, "cx": 40, "cy": 30}},
        {"camera": {"fx": True, "fy": 500, "cx": 40, "cy": 30}},
        {"camera": {"fx": 500, "fy": 500, "cx": 1e300, "cy": 30}},
        {"gender": {"m": 1}},
    ],
)
def test_bad_parameters_are_a_bad_row(shard, fields):
    shard.set_fields(**fields)
    assert_bad_row(shard)


def test_pose_of_an_unknown_length_is_flagged_by_check_and_unused_in_training(shard):
    """Documented: ``data check`` accepts SMPL (72) / MANO (48) poses; without a body model training
    never reads the pose, so its length does not matter there."""
    shard.set_fields(has_smpl=1, pose=[0.0] * 71, betas=[0.0] * 10)
    status, report = expect_clean(check_dataset, shard.yaml, num_joints=14, num_vertices=8)
    assert status == "ok" and set(report.bad_rows) == {KEY} and "pose" in report.bad_rows[KEY]
    assert_finite_sample(expect_ok(load_sample, shard))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[",
        "[]",
        "[{}, {}]",
        "5",
        '"text"',
        "null",
        "[null]",
        "[" * 100_000 + "]" * 100_000,
        '[{"scale": ' + "9" * 5000 + "}]",
        '[{"center": [40, 30], "scale": 0.3, "extra": ' + "[" * 50_000 + "]" * 50_000 + "}]",
    ],
)
def test_label_column_that_is_not_a_label_dict_is_a_bad_row(shard, text):
    shard.set_label(text)
    assert_bad_row(shard)


def test_label_column_of_invalid_utf8_is_a_bad_row(shard):
    shard.set_label(b'[{"center": [40, 30], "scale": 0.3\xff\xfe}]')
    assert_bad_row(shard)


def test_missing_label_column_is_a_bad_row(shard):
    shard.set_label(b"")
    replace_row(shard.label_tsv, 0, f"{KEY}\n")
    assert_bad_row(shard, match="truncated|column")


# ---------------------------------------------------------------------------- hw column
@pytest.mark.parametrize(
    "text",
    [
        '[{"height": Infinity, "width": 80}]',
        '[{"height": NaN, "width": 80}]',
        '[{"height": "60", "width": 80}]',
        '[{"height": 60.5, "width": 80}]',
        '[{"height": -60, "width": 80}]',
        '[{"height": 60}]',
        "[]",
        "1e3 80",
        "60 80 3",
        "[" * 100_000,
        '[{"height": 80, "width": 60}]',  # swapped: disagrees with the image
    ],
)
def test_bad_hw_is_a_bad_row(shard, text):
    shard.set_hw(text)
    assert_bad_row(shard, file="s.hw.tsv")


@pytest.mark.parametrize("text", ['[{"height": 60, "width": 80}]', "60 80", '[{"height": 60.0, "width": 80.0}]'])
def test_hw_spellings_are_accepted(shard, text):
    shard.set_hw(text)
    assert_good_row(shard)


# ---------------------------------------------------------------------------- property-based
def json_values():
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=4)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(st.sampled_from(["height", "width", "fx", "fy", "cx", "cy", "x"]), inner, max_size=4)
        ),
        max_leaves=16,
    )


FIELDS = [
    "center",
    "scale",
    "2d_joints",
    "has_2d_joints",
    "3d_joints",
    "has_3d_joints",
    "pose",
    "betas",
    "has_smpl",
    "has_vertices",
    "vertices_row",
    "joints_format",
    "camera",
    "gender",
]


@given(st.dictionaries(st.sampled_from(FIELDS), json_values(), min_size=1, max_size=4))
def test_any_label_field_values_give_a_bad_row_or_a_finite_sample(shard, fields):
    shard.set_fields(**fields)
    status, report = expect_clean(check_dataset, shard.yaml, num_joints=14, num_vertices=8)
    assert status == "ok", f"[message] data check stopped: {report}"
    loaded = expect_clean(load_sample, shard)
    if KEY in report.bad_rows:
        assert loaded[0] == "error", "[silent] data check refused the row but training accepted it"
    elif loaded[0] == "ok":
        assert_finite_sample(loaded[1])


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6))
def test_flipped_bytes_in_a_label_row_give_a_bad_row_or_a_finite_sample(shard, flips):
    text = bytearray(json.dumps([label(0)], default=lambda a: a.tolist()).encode())
    for position, xor in flips:
        index = position % len(text)
        text[index] = (text[index] ^ xor) or 1
        if text[index] in (ord("\n"), ord("\r")):
            text[index] = ord(" ")
    shard.set_label(bytes(text))
    status, report = expect_clean(check_dataset, shard.yaml, num_joints=14, num_vertices=8)
    assert status == "ok", f"[message] data check stopped: {report}"
    loaded = expect_clean(load_sample, shard)
    if loaded[0] == "ok":
        assert_finite_sample(loaded[1])


@given(json_values())
def test_any_hw_value_is_clean(shard, value):
    shard.set_hw(json.dumps([value]))
    status, report = expect_clean(check_dataset, shard.yaml, num_joints=14, num_vertices=8)
    assert status == "ok", f"[message] data check stopped: {report}"
    loaded = expect_clean(lambda: TSVDataset(shard.yaml)[0])
    assert (loaded[0] == "error") == (KEY in report.bad_rows), "[silent] data check and the reader disagree"
    if loaded[0] == "ok":  # accepted: must be the image's true size
        assert loaded[1].hw in (None, (60, 80)), f"[silent] hw {loaded[1].hw} accepted"


def test_labels_of_a_good_shard_are_accepted(shard):
    shard.restore()
    assert_good_row(shard)
    np.testing.assert_equal(len(MeshDataset(shard.yaml, TOPOLOGY)), 2)

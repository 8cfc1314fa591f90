"""``fastmetro bench`` on a tiny setting, and the measuring helpers it is built from."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fastmetro.bench import measure
from fastmetro.bench.runner import BenchConfig, summary_ratios
from fastmetro.bench.topologies import synthetic_topology
from fastmetro.cli import main
from fastmetro.errors import FastMetroError
from fastmetro.model.presets import count_parameters


def test_flop_count_of_known_operators():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert measure.count_flops(lambda: a @ b) == 2 * 64 * 32 * 16
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 12, 8), torch.randn(2, 4, 12, 8)
    # q k^T and (weights) v: 2 matmuls of 2*4*10*12*8 multiply-adds.
    flops = measure.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * 2 * (2 * 4 * 10 * 12 * 8)


def test_peak_memory_of_a_known_sequence():
    def work():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # 8 MiB live
        del a
        c = b + 1  # 8 MiB live again
        del b
        return c.sum()

    peak = measure.peak_memory_bytes(work, torch.device("cpu"))
    assert 8 * 2**20 <= peak < 9 * 2**20


def test_synthetic_topologies_have_the_real_sizes():
    body, hand = synthetic_topology("body"), synthetic_topology("hand")
    assert body.level_vertex_counts == (6890, 1723, 431) and body.num_joints == 14
    assert hand.level_vertex_counts == (778, 195) and hand.num_joints == 21
    assert all(u.getnnz(axis=1).max() == 3 for u in body.upsample)


def test_bench_cli_on_a_tiny_setting(capsys):
    code = main(["bench", "--models", "FastMETRO-S-R18", "--batch", "1", "2", "--size", "64",
                 "--warmup", "0", "--repeats", "2", "--gemm-size", "256", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [(r["path"], r["batch"]) for r in rows] == [("plain", 1), ("fast", 1), ("plain", 2), ("fast", 2)]
    counts = count_parameters("FastMETRO-S-R18")
    for row in rows:
        assert row["total_params"] == counts["total_params"]
        for part in ("backbone", "transformer", "whole"):
            assert 0 < row[f"{part}_ms_min"] <= row[f"{part}_ms"]
            assert row[f"{part}_speedup"] > 0
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["whole_ms"])
        assert row["peak_mb_per_image"] > 0
    plain, fast = rows[0], rows[1]
    assert plain["whole_speedup"] == 1.0
    assert fast["whole_speedup"] == pytest.approx(plain["whole_ms"] / fast["whole_ms"])
    # Same backbone work; the fast transformer part skips the image-independent first decoder layer.
    assert fast["backbone_gflop"] == pytest.approx(plain["backbone_gflop"], rel=1e-6)
    assert 0.3 * plain["transformer_gflop"] < fast["transformer_gflop"] < 0.8 * plain["transformer_gflop"]
    assert result["gemm_gflops"]["fp32"] > 1
    assert set(summary_ratios(rows)) == {"fast/backbone", "fast/transformer", "fast/whole"}


def test_bench_table_output(capsys):
    code = main(["bench", "--models", "FastMETRO-S-R18", "--tasks", "hand", "--batch", "1", "--size", "64",
                 "--warmup", "0", "--repeats", "1", "--gemm-size", "256", "--no-flops", "--no-memory"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "Table 2 (batch 1)" in text and "FastMETRO-S-R18  hand  fast" in text
    assert "GFLOP/s" in text.splitlines()[1]  # the GEMM rate heads the report


def test_bad_settings_are_clear_errors():
    with pytest.raises(FastMetroError, match="unknown path"):
        BenchConfig(paths=("plain", "tensorrt"))
    with pytest.raises(FastMetroError, match="batch sizes"):
        BenchConfig(batches=(0,))
    with pytest.raises(FastMetroError, match="onnx path runs in fp32"):
        from fastmetro.bench.runner import run_bench

        run_bench(BenchConfig(models=("FastMETRO-S-R18",), paths=("onnx",), dtype="bf16", image_size=64))


@pytest.mark.slow  # ONNX export and int8 quantisation of a whole model
def test_lossy_paths_report_differences_in_millimetres():
    pytest.importorskip("onnxruntime")
    from fastmetro.bench.lossy import format_lossy, run_lossy

    config = BenchConfig(models=("FastMETRO-S-R18",), batches=(1,), image_size=64, warmup=0, repeats=1)
    lossy = run_lossy(config, num_images=2)
    rows = {row["path"]: row for row in lossy["rows"]}
    assert {"fast", "fast-int8", "fast-int8-static", "onnx", "onnx-int8", "onnx-int8-static"} <= set(rows)
    assert rows["fast"]["vertices_max_mm"] == 0.0 and rows["fast"]["speedup_vs_fast"] == 1.0
    # fp32 export: the same function, compared in the same (root-centred) frame
    assert rows["onnx"]["vertices_max_mm"] < 1e-4 * rows["onnx"]["scale_mm"]
    for path in ("fast-int8", "fast-int8-static", "onnx-int8", "onnx-int8-static"):
        assert 0 < rows[path]["vertices_mean_mm"] < rows[path]["scale_mm"]
        assert math.isfinite(rows[path]["joints_max_mm"])
    assert "x fast" in format_lossy(lossy)

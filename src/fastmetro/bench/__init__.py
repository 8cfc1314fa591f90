"""``fastmetro bench``: the paper's Table 2 (parameters, time per part, FPS) and more, for the
plain (released-equivalent), fast and ONNX Runtime paths side by side in one run.

Modules: :mod:`~fastmetro.bench.topologies` (data-free topologies with the real sizes and
sparsity), :mod:`~fastmetro.bench.measure` (timing, FLOPs, peak memory, GEMM throughput),
:mod:`~fastmetro.bench.runner` (variants x paths x batches), :mod:`~fastmetro.bench.lossy`
(int8 and bf16 paths with their output differences), :mod:`~fastmetro.bench.report` (tables),
:mod:`~fastmetro.bench.commands` (the CLI).
"""

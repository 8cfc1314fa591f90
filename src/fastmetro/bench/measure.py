"""Measuring: wall time (interleaved across paths), FLOPs, peak activation memory, GEMM rate.

- Times: each repetition calls every path once in turn (plain, fast, ...), so load changes on a
  shared machine hit all paths alike and their ratios stay meaningful. CPU: ``perf_counter``
  (or the process's CPU time, see :data:`CLOCKS`); CUDA: CUDA events around the call, after a
  synchronisation, read after synchronising again.
- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention
  kernels; element-wise ops are not counted). One multiply-add = 2 FLOPs.
- Peak memory: CUDA: ``max_memory_allocated`` above what was allocated before the call. CPU: the
  largest sum of live tensor bytes during the call, from the PyTorch profiler's allocation and
  free events at operator granularity (weights and caches made earlier are not included).
- GEMM rate: the best of ten 2048 x 2048 ``torch.mm`` in the benchmark's dtype, at the start and
  at the end of the run (the higher is kept).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Milliseconds of every repetition; ``median`` and ``minimum`` summarise them."""

    times_ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def minimum(self) -> float:
        return min(self.times_ms)


#: "wall": elapsed time (what a user waits for). "process": CPU time of this process (all its
#: threads) - on a busy machine, with ``--threads 1``, a proxy that descheduling does not inflate
#: (cache and memory-bandwidth contention still do). CPU only.
CLOCKS = ("wall", "process")


def _time_once(function, device: torch.device, clock: str = "wall") -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end))
    timer = time.process_time if clock == "process" else time.perf_counter
    begin = timer()
    function()
    return (timer() - begin) * 1000.0


def time_interleaved(
    functions: dict, device: torch.device, warmup: int, repeats: int, clock: str = "wall"
) -> dict[str, Timing]:
    """Time every function of ``functions`` (name -> callable) ``repeats`` times, interleaved,
    after ``warmup`` untimed calls of each (``clock``: see :data:`CLOCKS`)."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    synchronize(device)
    timings = {name: Timing() for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            timings[name].times_ms.append(_time_once(function, device, clock))
    return timings


def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


class _FlopCount(TorchDispatchMode):
    """Sums torch's FLOP formulas over every operator run (no module tracking, which fails on
    parameters passed to a submodule under ``no_grad``)."""

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import flop_registry, shape_wrapper

        self.total = 0
        self.registry = dict(flop_registry)
        self.registry[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = shape_wrapper(_cpu_sdpa_flops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._overloadpacket is torch.ops.mkldnn._convolution_pointwise:
            # The fast backbone's fused oneDNN convolution: input, [residual,] weight, ...
            from torch.utils.flop_counter import conv_flop_count

            weight = args[2] if func is torch.ops.mkldnn._convolution_pointwise.binary else args[1]
            self.total += int(conv_flop_count(list(args[0].shape), list(weight.shape), list(out.shape), False))
            return out
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(function) -> int:
    """FLOPs of one call of ``function`` (see the module docstring for what is counted).

    ``nn.MultiheadAttention``'s fused inference kernel is switched off while counting (it is one
    opaque operator; its unfused form has the same FLOPs and is counted), and the CPU fused
    attention kernel gets the same formula as the CUDA ones.
    """
    counter = _FlopCount()
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter:
            function()
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    return counter.total


def peak_memory_bytes(function, device: torch.device) -> int | None:
    """Peak bytes of tensors allocated during one call of ``function`` (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        function()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    changes = []
    for event in profiler.events():
        # Allocations are attributed to the operator that made them (its own, not its children's);
        # frees appear as "[memory]" events.
        amount = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if amount:
            changes.append((event.time_range.start, amount))
    live = peak = 0
    for _, amount in sorted(changes, key=lambda change: change[0]):
        live += amount
        peak = max(peak, live)
    return int(peak)


def gemm_gflops(
    device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 10, clock: str = "wall"
) -> float:
    """Best GFLOP/s of a (size x size) @ (size x size) ``torch.mm`` (``clock``: see :data:`CLOCKS`)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    timing = time_interleaved({"mm": lambda: torch.mm(a, b)}, device, warmup=2, repeats=repeats, clock=clock)["mm"]
    return 2.0 * size**3 / (timing.minimum / 1000.0) / 1e9


def describe_machine(device: torch.device) -> dict:
    """Device, threads, torch version and (CPU) capability, for the report's header."""
    import platform

    info = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        try:
            with open("/proc/cpuinfo") as handle:
                names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
            if names:
                info["processor"] = names[0]
        except OSError:
            pass
        try:
            import os

            info["load_average"] = [round(x, 2) for x in os.getloadavg()]
        except (AttributeError, OSError):
            pass
    return info


def profile_operators(function, device: torch.device, calls: int = 3, top: int = 12) -> list[dict]:
    """Where one call's time goes: the ``top`` operators by self time (PyTorch profiler), each with
    its calls, self milliseconds, share of the total, GFLOP and MB allocated, per call of ``function``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    function()  # warm caches outside the profile
    with profile(activities=activities, profile_memory=True, with_flops=True) as profiler:
        for _ in range(calls):
            function()
        synchronize(device)
    device_time = device.type == "cuda"
    rows = []
    for event in profiler.key_averages():
        self_us = event.self_device_time_total if device_time else event.self_cpu_time_total
        if self_us <= 0:
            continue
        rows.append({
            "operator": event.key,
            "calls": event.count / calls,
            "self_ms": self_us / 1000.0 / calls,
            "gflop": (event.flops or 0) / 1e9 / calls,
            "mb_allocated": max(event.self_device_memory_usage if device_time else event.self_cpu_memory_usage, 0)
            / 2**20 / calls,
        })  # fmt: skip
    total = sum(row["self_ms"] for row in rows) or 1.0
    for row in rows:
        row["share"] = row["self_ms"] / total
    return sorted(rows, key=lambda row: row["self_ms"], reverse=True)[:top]

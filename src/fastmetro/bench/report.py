"""Plain-text tables of ``fastmetro bench`` results (the JSON output carries every number)."""

from __future__ import annotations


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned."""
    cells = [header] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _millions(value) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}M"


def _ms(row: dict, part: str) -> str:
    median = row.get(f"{part}_ms")
    return "-" if median is None else f"{median:.1f} ({row[f'{part}_ms_min']:.1f})"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def header_lines(result: dict) -> list[str]:
    machine, config = result["machine"], result["config"]
    load = f", load average {machine['load_average']}" if "load_average" in machine else ""
    where = machine.get("gpu") or f"{machine['processor']} ({machine.get('cpu_capability', '?')})"
    gemm = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in result["gemm_gflops"].items())
    return [
        f"# {where}, torch {machine['torch']}, {machine['threads']} threads{load}",
        f"# GEMM ({machine['device']}, {config['gemm_size']}^3 torch.mm, best of 10 at start and end): {gemm}",
        f"# {config['image_size']}x{config['image_size']} images, {config['dtype']}, random weights; times are the "
        f"median (min) ms of {config['repeats']} runs after {config['warmup']} warm-up, paths interleaved"
        + ("" if config.get("clock", "wall") == "wall" else f"; clock: {config['clock']} CPU time"),
    ]


def table2(rows: list[dict]) -> str:
    """The paper's Table 2 columns at batch 1 (+ speed-ups over the plain path)."""
    body = [
        [r["model"], r["task"], r["path"], _millions(r["backbone_params"]), _ms(r, "backbone"),
         _millions(r["transformer_params"]), _ms(r, "transformer"), _millions(r["total_params"]), _ms(r, "whole"),
         _number(r["images_per_s"]),
         "/".join(_ratio(r.get(f"{p}_speedup")) for p in ("backbone", "transformer", "whole"))]
        for r in rows if r["batch"] == 1
    ]  # fmt: skip
    header = ["model", "task", "path", "backbone", "ms", "transformer", "ms", "overall", "ms", "FPS",
              "x plain (bb/tr/all)"]  # fmt: skip
    return table(header, body, left=3)


def throughput(rows: list[dict]) -> str:
    body = [
        [
            r["model"],
            r["task"],
            r["path"],
            str(r["batch"]),
            _number(r["images_per_s"]),
            _number(r["images_per_s_best"]),
            _ratio(r.get("whole_speedup")),
            _number(r.get("peak_mb_per_image")),
        ]
        for r in rows
    ]
    header = ["model", "task", "path", "batch", "images/s", "best", "x plain", "peak MB/image"]
    return table(header, body, left=3)


def flops(rows: list[dict], gemm: float) -> str:
    body = []
    for r in rows:
        if r.get("backbone_gflop") is None:
            continue
        cells = [r["model"], r["task"], r["path"], str(r["batch"])]
        for part in ("backbone", "transformer"):
            rate = r.get(f"{part}_gflops")
            share = "-" if rate is None else f"{100 * rate / gemm:.0f}%"
            cells += [_number(r[f"{part}_gflop"], 2), _number(rate, 0), share]
        body.append(cells)
    header = ["model", "task", "path", "batch", "backbone GFLOP", "GFLOP/s", "of GEMM", "transformer GFLOP",
              "GFLOP/s", "of GEMM"]  # fmt: skip
    return table(header, body, left=3) if body else ""


def format_result(result: dict) -> str:
    rows = result["rows"]
    gemm = result["gemm_gflops"].get(result["config"]["dtype"], result["gemm_gflops"]["fp32"])
    parts = header_lines(result)
    if any(r["batch"] == 1 for r in rows):
        parts += ["", "Table 2 (batch 1): parameters, median (min) ms per part, FPS", table2(rows)]
    parts += ["", "Throughput and peak activation memory", throughput(rows)]
    flop_table = flops(rows, gemm)
    if flop_table:
        parts += ["", "FLOPs (counted) and achieved rate (FLOPs / min time) against the GEMM rate", flop_table]
    return "\n".join(parts)


def profile_table(profiles: dict) -> str:
    """``profiles``: "model task path part" -> operator rows of :func:`~fastmetro.bench.measure.profile_operators`."""
    parts = []
    for title, rows in profiles.items():
        body = [[r["operator"], f"{r['calls']:.0f}", f"{r['self_ms']:.2f}", f"{100 * r['share']:.0f}%",
                 f"{r['gflop']:.3f}" if r["gflop"] else "-", f"{r['mb_allocated']:.1f}"] for r in rows]  # fmt: skip
        parts += [
            f"Profile: {title} (per forward; self time of the top operators)",
            table(["operator", "calls", "self ms", "share", "GFLOP", "MB allocated"], body),
            "",
        ]
    return "\n".join(parts)

"""Tables and convergence plots of ``benchmarks/paper_claims.py`` (from the runs' files only).

Reads ``runs/<configuration>/seed<k>/result.json`` and ``metrics.jsonl`` under a study folder and
writes ``table.csv`` / ``table.md`` (one row per configuration: mean and min/max over seeds),
``runs.csv`` (one row per run), ``curves.csv`` (one row per evaluation) and ``convergence.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

METRICS = ("pa_mpjpe", "mpjpe", "mpvpe", "pa_mpvpe")
LABELS = {"pa_mpjpe": "PA-MPJPE", "mpjpe": "MPJPE", "mpvpe": "MPVPE", "pa_mpvpe": "PA-MPVPE"}
# Points of the held-out curve reported in the table, as fractions of the budget.
CURVE_POINTS = (0.25, 0.5)


def read_metrics(path: Path) -> list[dict]:
    """The evaluations a run logged, one per step (an evaluation logged again after a resume
    replaces the earlier one), in step order."""
    if not Path(path).is_file():
        return []
    by_step = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[entry["step"]] = entry
    return [by_step[step] for step in sorted(by_step)]


def collect(out: Path, configurations) -> dict[str, list[dict]]:
    """Finished runs per configuration label: result.json plus the run's held-out curve."""
    results: dict[str, list[dict]] = {}
    for configuration in configurations:
        folder = Path(out) / "runs" / configuration.slug
        for result_path in sorted(folder.glob("seed*/result.json")):
            result = json.loads(result_path.read_text())
            result["curve"] = read_metrics(result_path.parent / "metrics.jsonl")
            results.setdefault(configuration.label, []).append(result)
    return results


def paper_scale_counts(configurations) -> dict[str, dict | None]:
    """Our parameter counts at the paper's scale (R50, full widths, SMPL sizes), as ``fastmetro
    models`` prints them (None where a preset is not available)."""
    from fastmetro.errors import FastMetroError
    from fastmetro.model.presets import count_parameters

    counts = {}
    for configuration in configurations:
        try:
            counts[configuration.label] = count_parameters(configuration.preset("R50"))
        except FastMetroError:
            counts[configuration.label] = None
    return counts


# ---------------------------------------------------------------------- numbers
def _spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def curve_value(curve: list[dict], fraction: float, key: str) -> float | None:
    """The metric at the evaluation closest to ``fraction`` of the run's last step."""
    if not curve:
        return None
    target = fraction * curve[-1]["step"]
    entry = min(curve, key=lambda item: abs(item["step"] - target))
    return entry.get(key)


def summarise(configurations, results: dict, paper_scale: dict) -> list[dict]:
    """One row per configuration with finished runs (mean / min / max over its seeds)."""
    rows = []
    for configuration in configurations:
        runs = results.get(configuration.label)
        if not runs:
            continue
        row = {
            "label": configuration.label,
            "model": runs[0]["model"],
            "seeds": [r["seed"] for r in runs],
            "transformer_params": runs[0]["transformer_params"],
            "total_params": runs[0]["total_params"],
            "paper": configuration.paper,
            "paper_scale": paper_scale.get(configuration.label),
        }
        for key in METRICS:
            row[key] = _spread([r["final"].get(key) for r in runs])
            row[f"gen_{key}"] = _spread([r.get("generalisation", {}).get(key) for r in runs])
        for fraction in CURVE_POINTS:
            for key in ("pa_mpjpe", "mpvpe"):
                row[f"{key}@{fraction:g}"] = _spread([curve_value(r["curve"], fraction, key) for r in runs])
        row["train_minutes"] = _spread([r["train_seconds"] / 60 for r in runs])
        row["images_per_second"] = _spread([r["final"]["images_seen"] / r["train_seconds"] for r in runs])
        rows.append(row)
    return rows


def _fmt(spread: dict, digits: int = 1) -> str:
    if spread["mean"] is None:
        return "-"
    text = f"{spread['mean']:.{digits}f}"
    if spread["max"] - spread["min"] > 0:
        text += f" ({spread['min']:.{digits}f}-{spread['max']:.{digits}f})"
    return text


def _millions(count) -> str:
    return "-" if count is None else f"{count / 1e6:.2f}M"


# ---------------------------------------------------------------------- tables
def markdown_table(rows: list[dict], reference: dict, settings) -> str:
    half, quarter = "pa_mpjpe@0.5", "pa_mpjpe@0.25"
    budget = f"{settings.images:,}"
    lines = [
        f"| configuration | runs | transformer params (here) | total (here) | total at paper scale (ours) | "
        f"total (paper) | PA-MPJPE @ 1/4 | PA-MPJPE @ 1/2 | PA-MPJPE @ {budget} | MPJPE | MPVPE | PA-MPVPE | "
        f"general. PA-MPJPE | general. MPVPE | train min/run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        paper_scale = row["paper_scale"]["total_params"] if row["paper_scale"] else None
        paper = row["paper"].get("params_m")
        lines.append(
            f"| {row['label']} | {len(row['seeds'])} | {_millions(row['transformer_params'])} | "
            f"{_millions(row['total_params'])} | {_millions(paper_scale)} | "
            f"{'-' if paper is None else f'{paper:.1f}M'} | {_fmt(row[quarter])} | {_fmt(row[half])} | "
            f"{_fmt(row['pa_mpjpe'])} | {_fmt(row['mpjpe'])} | {_fmt(row['mpvpe'])} | {_fmt(row['pa_mpvpe'])} | "
            f"{_fmt(row['gen_pa_mpjpe'])} | {_fmt(row['gen_mpvpe'])} | {_fmt(row['train_minutes'])} |"
        )
    test, general = reference.get("test", {}), reference.get("generalisation", {})

    def value(values, key):
        return f"{values[key]:.1f}" if key in values else "-"

    lines.append(
        f"| mean-mesh baseline | - | - | - | - | - | - | - | {value(test, 'pa_mpjpe')} | {value(test, 'mpjpe')} | "
        f"{value(test, 'mpvpe')} | {value(test, 'pa_mpvpe')} | {value(general, 'pa_mpjpe')} | "
        f"{value(general, 'mpvpe')} | - |"
    )
    return "\n".join(lines)


CSV_COLUMNS = [
    "label",
    "model",
    "runs",
    "seeds",
    "transformer_params",
    "total_params",
    "paper_scale_total_params",
    "paper_total_params_m",
    "paper_pa_mpjpe",
    "paper_mpjpe",
]


def csv_table(rows: list[dict]) -> str:
    """table.csv: one row per configuration; every metric as mean, min and max (mm)."""
    metric_keys = [key for key in rows[0] if isinstance(rows[0][key], dict) and "mean" in rows[0][key]] if rows else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + [f"{key}_{stat}" for key in metric_keys for stat in ("mean", "min", "max")])
    for row in rows:
        paper = row["paper"]
        writer.writerow(
            [
                row["label"],
                row["model"],
                len(row["seeds"]),
                " ".join(map(str, row["seeds"])),
                row["transformer_params"],
                row["total_params"],
                row["paper_scale"]["total_params"] if row["paper_scale"] else "",
                paper.get("params_m", ""),
                paper.get("pa_mpjpe", ""),
                paper.get("mpjpe", ""),
            ]
            + [_csv_number(row[key][stat]) for key in metric_keys for stat in ("mean", "min", "max")]
        )
    return buffer.getvalue()


def _csv_number(value) -> str:
    return "" if value is None else f"{value:.4f}"


def runs_csv(results: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["label", "seed", "model", "total_params", "train_seconds", "images_seen"]
        + list(METRICS)
        + [f"gen_{key}" for key in METRICS]
    )
    for label, runs in results.items():
        for run in runs:
            general = run.get("generalisation", {})
            writer.writerow(
                [
                    label,
                    run["seed"],
                    run["model"],
                    run["total_params"],
                    f"{run['train_seconds']:.1f}",
                    run["final"]["images_seen"],
                ]
                + [_csv_number(run["final"].get(k)) for k in METRICS]
                + [_csv_number(general.get(k)) for k in METRICS]
            )
    return buffer.getvalue()


def curves_csv(results: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "seed", "step", "images_seen", "wall_seconds"] + list(METRICS))
    for label, runs in results.items():
        for run in runs:
            for entry in run["curve"]:
                writer.writerow(
                    [
                        label,
                        run["seed"],
                        entry["step"],
                        entry.get("images_seen", ""),
                        f"{entry.get('wall_seconds', float('nan')):.1f}",
                    ]
                    + [_csv_number(entry.get(k)) for k in METRICS]
                )
    return buffer.getvalue()


# ---------------------------------------------------------------------- plot
STYLES = {
    "FastMETRO": dict(color="black", linewidth=2.4),
    "+no-mask": dict(color="tab:orange"),
    "+half-head-mask": dict(color="tab:green"),
    "+graph-conv": dict(color="tab:purple"),
    "+learnable-upsampling": dict(color="tab:brown"),
    "+no-dim-reduction": dict(color="tab:blue"),
    "METRO": dict(color="tab:red", linewidth=2.4, linestyle="--"),
}


def plot(path: Path, results: dict, reference: dict, title: str) -> None:
    """convergence.png: held-out PA-MPJPE and MPVPE (mm) against images seen, one line per
    configuration (mean over seeds; the band spans the seeds' min and max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastmetro.io import atomic_save

    figure, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    for axis, key in zip(axes, ("pa_mpjpe", "mpvpe")):
        for label, runs in results.items():
            curves = [{e["images_seen"]: e[key] for e in run["curve"] if key in e} for run in runs]
            seen = sorted(set.intersection(*(set(c) for c in curves)))
            if not seen:
                continue
            values = [[c[x] for c in curves] for x in seen]
            x = [s / 1000 for s in seen]
            mean = [sum(v) / len(v) for v in values]
            name = label + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")
            axis.plot(x, mean, marker="o", markersize=3, label=name, **STYLES.get(label, {}))
            if len(runs) > 1:
                axis.fill_between(
                    x,
                    [min(v) for v in values],
                    [max(v) for v in values],
                    alpha=0.15,
                    color=STYLES.get(label, {}).get("color"),
                )
        if key in reference.get("test", {}):
            axis.axhline(reference["test"][key], color="grey", linestyle=":", label="mean-mesh baseline")
        axis.set_xlabel("images seen (thousands)")
        axis.set_ylabel(f"held-out {LABELS[key]} (mm)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    atomic_save(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)


def write_all(out: Path, configurations, results: dict, reference: dict, paper_scale: dict, settings) -> dict:
    """Write every table and the plot; returns the markdown table and the files written."""
    from fastmetro.io import atomic_write

    out = Path(out)
    rows = summarise(configurations, results, paper_scale)
    markdown = markdown_table(rows, reference, settings)
    files = {
        "table.md": markdown + "\n",
        "table.csv": csv_table(rows),
        "runs.csv": runs_csv(results),
        "curves.csv": curves_csv(results),
    }
    for name, text in files.items():
        with atomic_write(out / name, "w") as handle:
            handle.write(text)
    d1, d2 = settings.widths
    title = (
        f"Anny synthetic data, {settings.image_size} px, {settings.backbone} from scratch, widths {d1}/{d2}, "
        f"batch {settings.batch_size}, lr {settings.lr:g} ({settings.schedule}), "
        f"{settings.images:,} images per run"
    )
    written = [out / name for name in files]
    if results:
        plot(out / "convergence.png", results, reference, title)
        written.append(out / "convergence.png")
    return {"markdown": markdown, "rows": rows, "files": written}

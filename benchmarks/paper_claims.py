"""The paper's training claims on free synthetic data: FastMETRO vs a METRO-style encoder (Fig. 4)
and the Table 4 ablations, trained the same way and compared on the same held-out split.

Usage::

    python benchmarks/paper_claims.py --train DATA/train.yaml --test DATA/test.yaml \\
        [--generalisation GEN/test.yaml] --out runs/paper_claims [--quick] [--only LABEL ...] \\
        [--set images=20000 --set widths=[128,32] ...] [--jobs 2] [--threads 1] [--report-only]

Every configuration (:data:`CONFIGURATIONS`) is trained with the same budget (images seen), batch
size, schedule, learning rate and seed set, at the same input size and backbone, with the
project's trainer (:class:`fastmetro.engine.train.Trainer`), and evaluated on the same held-out
rows at fixed intervals of images seen. Then the final weights are evaluated on the
generalisation set. Writes into ``--out``::

    study.json                        the settings (a folder made with other settings is refused)
    runs/<configuration>/seed<k>/     the trainer's folder (metrics.jsonl, last.safetensors...) + result.json
    baseline.json                     the mean-mesh baseline (training set's mean mesh for every image)
    table.csv, table.md               one row per configuration: mean and min/max over seeds
    runs.csv, curves.csv              one row per run / per evaluation
    convergence.png                   held-out PA-MPJPE and MPVPE against images seen

Resumable: a run with ``result.json`` is reused, a run with a training state resumes from its last
evaluation (:class:`~fastmetro.engine.train.Trainer` resumes exactly), so rerunning the same
command after an interruption finishes the study. ``--quick`` is a tiny setting for the test
suite (seconds per run); the default settings are the study's scale (see :class:`Settings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # paper_claims_report beside this file

import paper_claims_report as report  # noqa: E402

STUDY_FORMAT = 1


@dataclass(frozen=True)
class Settings:
    """What every run of the study shares.

    Widths: FastMETRO's paper widths are (512, 128) with FFNs 4x wider and 8 heads; ``widths``
    scales them keeping those ratios (D1 = 4 D2, FFN = 4 D). ``+no-dim-reduction`` uses (D1, D1).
    The METRO-style encoder is scaled by the same factor D1 / 512: hidden (1024, 256, 128) ->
    (2 D1, D1 / 2, D1 / 4), block outputs (512, 128) -> (D1, D1 / 4), FFN 3072 -> 6 D1, with
    METRO's 4 heads and 4 layers per block.
    """

    image_size: int = 64  # input crop (px): a 2 x 2 grid of image tokens from ResNet-18 (the images are 128 px)
    backbone: str = "R18"  # preset backbone (R18 / R34 / R50 / H64), the same for every configuration
    widths: tuple[int, int] = (128, 32)  # FastMETRO transformer widths D1, D2 (paper: 512, 128)
    heads: int = 4  # FastMETRO attention heads (paper: 8 at widths 8x these)
    dropout: float = 0.0  # every run sees each image at most about once: no regulariser needed
    batch_size: int = 16
    images: int = 4_800  # images seen per run (the budget: ~3 min per FastMETRO run, ~16 per METRO run)
    evaluations: int = 6  # held-out evaluations per run, evenly spaced in images seen
    lr: float = 1e-3
    schedule: str = "cosine"  # constant | cosine | step (the trainer's optim.schedule)
    warmup_images: int = 800  # linear warm-up
    val_samples: int = 0  # held-out rows per evaluation (0 = all)
    seeds: tuple[int, ...] = (0, 1)  # seeds of the multi-seed configurations; the others use the first
    num_workers: int = 0  # data-loading processes per run (0: in the run's process; see run_study)
    val_batch_size: int = 32
    device: str = "cpu"

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        d1, d2 = self.widths
        problems = []
        if d1 % self.heads or d2 % self.heads or d2 % 2:
            problems.append(f"widths {self.widths} must be even and divisible by heads={self.heads}")
        if d1 % 16:  # METRO's narrowest block is D1 / 4 wide with 4 heads
            problems.append(
                f"widths[0] = {d1} must be a multiple of 16 (the METRO-style encoder's D1 / 4 over 4 heads)"
            )
        if not self.seeds:
            problems.append("seeds must not be empty")
        if self.images % self.batch_size or self.steps % self.evaluations or not self.steps:
            step = self.batch_size * self.evaluations
            problems.append(
                f"images must be a positive multiple of batch_size x evaluations = {step} "
                f"(evaluations evenly spaced; got {self.images})"
            )
        if problems:
            from fastmetro.errors import FastMetroError

            raise FastMetroError("paper_claims settings: " + "; ".join(problems))

    @property
    def steps(self) -> int:
        return self.images // self.batch_size

    @property
    def eval_every(self) -> int:
        return self.steps // self.evaluations

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


QUICK = dict(
    image_size=32,
    widths=(32, 8),
    heads=4,
    batch_size=2,
    images=8,
    evaluations=2,
    lr=1e-3,
    warmup_images=0,
    val_samples=4,
    val_batch_size=4,
    num_workers=0,
)


@dataclass(frozen=True)
class Configuration:
    """One row of the study: ``kind`` is a Table 4 suffix, ``""`` (FastMETRO) or ``"metro"``."""

    label: str
    kind: str
    multi_seed: bool = False
    paper: dict = field(default_factory=dict)  # the paper's numbers for this row (Human3.6M, R50)

    @property
    def slug(self) -> str:
        return {"": "fastmetro", "metro": "metro"}.get(self.kind, self.kind)

    def preset(self, backbone: str) -> str:
        if self.kind == "metro":
            return f"METRO-{backbone}"
        return f"FastMETRO-S-{backbone}" + (f"+{self.kind}" if self.kind else "")

    def overrides(self, settings: Settings) -> dict:
        d1, d2 = settings.widths
        if self.kind == "metro":
            return {
                "hidden_dims": [2 * d1, d1 // 2, d1 // 4],
                "output_dims": [d1, d1 // 4],
                "intermediate_size": 6 * d1,
                "dropout": settings.dropout,
            }
        dims = [d1, d1] if self.kind == "no-dim-reduction" else [d1, d2]
        return {
            "model_dims": dims,
            "feedforward_dims": [4 * d for d in dims],
            "num_heads": settings.heads,
            "dropout": settings.dropout,
        }


# Paper numbers: Table 4 (FastMETRO-S-R50 and its ablations) and Table 2 (METRO-R50), Human3.6M.
CONFIGURATIONS = (
    Configuration("FastMETRO", "", True, {"params_m": 32.7, "transformer_m": 9.2, "mpjpe": 55.7, "pa_mpjpe": 39.4}),
    Configuration("+no-mask", "no-mask", True, {"params_m": 32.7, "mpjpe": 58.0, "pa_mpjpe": 40.7}),
    Configuration("+half-head-mask", "half-head-mask", False, {"params_m": 32.7, "mpjpe": 55.8, "pa_mpjpe": 39.4}),
    Configuration("+graph-conv", "graph-conv", False, {"params_m": 33.1, "mpjpe": 56.6, "pa_mpjpe": 39.4}),
    Configuration(
        "+learnable-upsampling", "learnable-upsampling", False, {"params_m": 45.4, "mpjpe": 58.1, "pa_mpjpe": 41.1}
    ),
    Configuration("+no-dim-reduction", "no-dim-reduction", False, {"params_m": 39.5, "mpjpe": 55.5, "pa_mpjpe": 39.6}),
    Configuration("METRO", "metro", True, {"params_m": 125.8, "transformer_m": 102.3, "pa_mpjpe": 40.6}),
)


def seeds_of(configuration: Configuration, settings: Settings) -> tuple[int, ...]:
    return settings.seeds if configuration.multi_seed else settings.seeds[:1]


# ---------------------------------------------------------------------- one run
def experiment_config(configuration: Configuration, seed: int, settings: Settings, data: dict, run_dir: Path):
    """The trainer's :class:`~fastmetro.engine.config.ExperimentConfig` of one run (validated)."""
    from fastmetro.engine.config import ExperimentConfig, from_dict, to_dict, validate

    values = to_dict(ExperimentConfig())
    values["model"].update(
        name=configuration.preset(settings.backbone), topology="anny", overrides=configuration.overrides(settings)
    )
    values["data"].update(
        train=str(data["train"]),
        val=str(data["test"]),
        image_size=settings.image_size,
        augment=False,
        batch_size=settings.batch_size,
        val_batch_size=settings.val_batch_size,
        num_workers=settings.num_workers,
        max_val_samples=settings.val_samples or None,
    )
    values["optim"].update(
        lr=settings.lr, schedule=settings.schedule, warmup_steps=settings.warmup_images // settings.batch_size
    )
    values["train"].update(
        output_dir=str(run_dir),
        steps=settings.steps,
        seed=seed,
        device=settings.device,
        eval_every=settings.eval_every,
        log_every=max(settings.eval_every // 4, 1),
        progress=False,
        tensorboard=False,
    )
    config = from_dict(ExperimentConfig, values)
    validate(config, f"{configuration.label} seed {seed}")
    return config


def _trainer_class():
    from fastmetro.engine.train import Trainer

    class StudyTrainer(Trainer):
        """The project's trainer; each evaluation also logs images seen and seconds spent so far
        (training and evaluation), carried over a resume from the last logged evaluation. No
        ``best`` checkpoint: the study reports the final weights (the best on the held-out split
        would be chosen on the test data)."""

        def save(self, name: str = "last") -> None:
            if name != "best":
                super().save(name)

        def fit(self):
            self._wall0, self._eval0 = self._logged_times()
            self._segment_start, self._segment_eval = time.perf_counter(), 0.0
            return super().fit()

        def _logged_times(self) -> tuple[float, float]:
            if self.step == 0:
                return 0.0, 0.0
            for entry in report.read_metrics(self.output_dir / "metrics.jsonl"):
                if entry["step"] == self.step:
                    return entry.get("wall_seconds", 0.0), entry.get("eval_seconds", 0.0)
            return 0.0, 0.0

        def run_evaluation(self) -> dict:
            start = time.perf_counter()
            values = super().run_evaluation()
            self._segment_eval += time.perf_counter() - start
            values["images_seen"] = self.step * self.config.data.batch_size * self.dist.world_size
            values["wall_seconds"] = self._wall0 + time.perf_counter() - self._segment_start
            values["eval_seconds"] = self._eval0 + self._segment_eval
            return values

    return StudyTrainer


def run_one(configuration: Configuration, seed: int, settings: Settings, data: dict, out: Path, topology) -> dict:
    """Train and evaluate one (configuration, seed), or reuse / resume it; returns its result."""
    from fastmetro.errors import FastMetroError
    from fastmetro.model.fastmetro import parameter_counts

    run_dir = out / "runs" / configuration.slug / f"seed{seed}"
    result_path = run_dir / "result.json"
    if result_path.is_file():
        logging.info("%s seed %d: finished earlier, reused (%s)", configuration.label, seed, result_path)
        return json.loads(result_path.read_text())
    config = experiment_config(configuration, seed, settings, data, run_dir)
    resume = (run_dir / "last.state.pt").is_file()
    logging.info(
        "%s seed %d: %s %s in %s",
        configuration.label,
        seed,
        "resuming" if resume else "training",
        config.model.name,
        run_dir,
    )
    trainer = _trainer_class()(config, topology=topology, resume=resume)
    counts = parameter_counts(trainer.model)  # backbone / transformer / total, as the paper counts
    trainer.fit()
    curve = report.read_metrics(run_dir / "metrics.jsonl")
    if not curve or curve[-1]["step"] != settings.steps:
        raise FastMetroError(f"{run_dir / 'metrics.jsonl'}: no evaluation at the last step {settings.steps}")
    result = {
        "label": configuration.label,
        "slug": configuration.slug,
        "seed": seed,
        "model": config.model.name,
        "overrides": config.model.overrides,
        **counts,
        "final": curve[-1],
        "train_seconds": curve[-1]["wall_seconds"] - curve[-1]["eval_seconds"],
    }
    if data.get("generalisation"):
        result["generalisation"] = evaluate_on(trainer, data["generalisation"])
    from fastmetro.io import atomic_write

    with atomic_write(result_path, "w") as handle:
        json.dump(result, handle, indent=1)
    (run_dir / "last.state.pt").unlink(missing_ok=True)  # finished: the optimizer state is not needed
    logging.info(
        "%s seed %d: done, held-out PA-MPJPE %.1f mm, MPVPE %.1f mm",
        configuration.label,
        seed,
        curve[-1]["pa_mpjpe"],
        curve[-1]["mpvpe"],
    )
    return result


def evaluate_on(trainer, yaml_path) -> dict:
    """Metrics of the trainer's current (final) weights on another split (all of its rows)."""
    from fastmetro.engine.evaluate import EvalSetup, eval_loader, evaluate
    from fastmetro.engine.train import build_dataset

    dataset = build_dataset(trainer.config, str(yaml_path), trainer.topology, train=False)
    loader = eval_loader(dataset, trainer.config.data.val_batch_size, trainer.config.data.num_workers, trainer.dist)
    setup = EvalSetup(topology=trainer.topology, device=trainer.device, progress=False, dist=trainer.dist)
    return evaluate(trainer.model, loader, setup)


# ---------------------------------------------------------------------- the study
def check_study_file(out: Path, settings: Settings, data: dict) -> None:
    """Write ``study.json``, or check that the folder was made with these settings and data."""
    from fastmetro.errors import FastMetroError
    from fastmetro.io import atomic_write

    wanted = {
        "format": STUDY_FORMAT,
        "settings": settings.to_dict(),
        "data": {key: str(value) if value else None for key, value in data.items()},
    }
    wanted = json.loads(json.dumps(wanted))  # tuples -> lists, as read back
    path = out / "study.json"
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise FastMetroError(f"{path}: not a study file ({error})") from None
        if found != wanted:
            changed = sorted(
                key
                for key in set(found.get("settings", {})) | set(wanted["settings"])
                if found.get("settings", {}).get(key) != wanted["settings"].get(key)
            )
            changed += [
                f"data.{key}" for key in wanted["data"] if found.get("data", {}).get(key) != wanted["data"][key]
            ]
            raise FastMetroError(
                f"{out}: made with other settings ({', '.join(changed) or 'format'}); "
                "use another --out, or the same settings to resume"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        json.dump(wanted, handle, indent=1)


MEAN_MESH_ROWS = 2_000  # training rows averaged for the mean-mesh baseline (evenly spaced)


def baseline(out: Path, data: dict, topology, num_workers: int) -> dict:
    """The mean-mesh baseline on the held-out (and generalisation) split, cached in ``baseline.json``."""
    from fastmetro.engine.demo import baseline_metrics, mean_mesh
    from fastmetro.io import atomic_write

    path = out / "baseline.json"
    if path.is_file():
        return json.loads(path.read_text())
    logging.info("mean-mesh baseline: mean mesh of %s", data["train"])
    mean_vertices = mean_mesh(Path(data["train"]), topology, num_workers, rows=MEAN_MESH_ROWS)
    values = {"test": baseline_metrics(Path(data["test"]), topology, mean_vertices, num_workers)}
    if data.get("generalisation"):
        values["generalisation"] = baseline_metrics(Path(data["generalisation"]), topology, mean_vertices, num_workers)
    values = json.loads(json.dumps(values, default=float))
    with atomic_write(path, "w") as handle:
        json.dump(values, handle, indent=1)
    return values


def selected(only: list[str] | None) -> tuple[Configuration, ...]:
    from fastmetro.errors import FastMetroError

    if not only:
        return CONFIGURATIONS
    known = {c.label.lower(): c for c in CONFIGURATIONS} | {c.slug: c for c in CONFIGURATIONS}
    unknown = [name for name in only if name.lower() not in known]
    if unknown:
        raise FastMetroError(
            f"--only: unknown configuration(s) {unknown}; known: {', '.join(c.label for c in CONFIGURATIONS)}"
        )
    wanted = {known[name.lower()].label for name in only}
    return tuple(c for c in CONFIGURATIONS if c.label in wanted)


def tasks_of(configurations, settings: Settings) -> list[tuple[Configuration, int]]:
    """Every (configuration, seed) run, the slowest kinds first (balances parallel jobs)."""
    first = {"metro": 0, "learnable-upsampling": 1}
    ordered = sorted(configurations, key=lambda c: first.get(c.kind, 2))
    return [(c, seed) for c in ordered for seed in seeds_of(c, settings)]


_WORKER: dict = {}


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")


def _run_in_worker(label: str, seed: int, settings: Settings, data: dict, out: Path) -> dict:
    """One run in a pool process: its step lines and log go to ``train.log`` in the run folder."""
    import contextlib

    from fastmetro import topology as topology_module

    if "topology" not in _WORKER:
        _WORKER["topology"] = topology_module.load("anny")
    configuration = next(c for c in CONFIGURATIONS if c.label == label)
    run_dir = out / "runs" / configuration.slug / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    try:
        with open(run_dir / "train.log", "a") as log, contextlib.redirect_stdout(log):
            return run_one(configuration, seed, settings, data, out, _WORKER["topology"])
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def run_all(tasks, settings: Settings, data: dict, out: Path, jobs: int, threads: int, while_running) -> list[str]:
    """Run every task (``jobs`` processes of ``threads`` threads each, or in this process when
    ``jobs`` is 1); ``while_running()`` is called once the runs have started. Returns failures."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from fastmetro.errors import FastMetroError

    failures = []
    if jobs <= 1 or len(tasks) <= 1:
        topology = while_running()
        for configuration, seed in tasks:
            run_one(configuration, seed, settings, data, out, topology)
        return failures
    with ProcessPoolExecutor(
        jobs, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(threads,)
    ) as pool:
        futures = {
            pool.submit(_run_in_worker, c.label, seed, settings, data, out): (c.label, seed) for c, seed in tasks
        }
        while_running()
        for future in as_completed(futures):
            label, seed = futures[future]
            try:
                future.result()
            except FastMetroError as error:  # the other runs go on; the study reports it
                failures.append(f"{label} seed {seed}: {error}")
                logging.error("%s seed %d failed: %s", label, seed, error)
    return failures


def run_study(
    settings: Settings,
    data: dict,
    out: Path,
    only: list[str] | None = None,
    report_only: bool = False,
    jobs: int = 1,
    threads: int = 1,
) -> dict:
    """Run (or reuse) every selected run, then write the table and the plot from all finished runs.

    Runs that are not finished yet go to ``jobs`` processes of ``threads`` torch threads each
    (on a shared CPU, one thread per process avoids oversubscription, which costs up to 10x).
    The mean-mesh baseline is computed meanwhile in this process.
    """
    import torch

    from fastmetro import topology as topology_module

    torch.set_num_threads(threads)
    check_study_file(out, settings, data)
    tasks = [] if report_only else tasks_of(selected(only), settings)
    finished = [(c, seed) for c, seed in tasks if (out / "runs" / c.slug / f"seed{seed}" / "result.json").is_file()]
    for configuration, seed in finished:
        logging.info("%s seed %d: finished earlier, reused", configuration.label, seed)
    tasks = [task for task in tasks if task not in finished]
    reference = {}

    def while_running():
        if not tasks and (out / "baseline.json").is_file():
            reference.update(json.loads((out / "baseline.json").read_text()))
            return None  # nothing to train or compute: no topology needed
        topology = topology_module.load("anny")
        reference.update(baseline(out, data, topology, settings.num_workers))
        return topology

    failures = run_all(tasks, settings, data, out, jobs, threads, while_running)
    results = report.collect(out, CONFIGURATIONS)
    paper_scale = report.paper_scale_counts(CONFIGURATIONS)
    summary = report.write_all(out, CONFIGURATIONS, results, reference, paper_scale, settings)
    summary["failures"] = failures
    return summary


def parse_settings(quick: bool, assignments: list[str]) -> Settings:
    """Defaults (or the ``--quick`` ones), then ``--set key=value`` (values read as YAML)."""
    from fastmetro.engine.config import from_dict, parse_override
    from fastmetro.errors import FastMetroError

    values = Settings().to_dict() | (QUICK if quick else {})
    for text in assignments:
        path, value = parse_override(text)
        if len(path) != 1 or path[0] not in values:
            raise FastMetroError(f"--set {text}: unknown setting; known: {', '.join(values)}")
        values[path[0]] = value
    return from_dict(
        Settings, {key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}, where="settings"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=Path, required=True, help="training set yaml")
    parser.add_argument("--test", type=Path, required=True, help="held-out set yaml (evaluated during training)")
    parser.add_argument("--generalisation", type=Path, help="generalisation set yaml (final weights only)")
    parser.add_argument("--out", type=Path, required=True, help="study folder (resumable)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for the test suite")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="assignments",
        help="change a setting (see Settings), e.g. --set images=20000",
    )
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="run only these configurations")
    parser.add_argument("--report-only", action="store_true", help="write table and plot from finished runs")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from fastmetro.errors import FastMetroError

    try:
        settings = parse_settings(args.quick, args.assignments)
        data = {"train": args.train, "test": args.test, "generalisation": args.generalisation}
        for key, path in data.items():
            if path is not None and not path.is_file():
                raise FastMetroError(f"{path}: no such file (--{key})")
        if args.jobs < 1 or args.threads < 1:
            raise FastMetroError("--jobs and --threads must be >= 1")
        summary = run_study(settings, data, args.out, args.only, args.report_only, args.jobs, args.threads)
    except FastMetroError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary["markdown"])
    print(f"wrote {', '.join(str(p) for p in summary['files'])}")
    for failure in summary["failures"]:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

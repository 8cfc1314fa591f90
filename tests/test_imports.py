"""No import cycle, counting imports inside functions; the layers only import downwards
(base / weights -> topology / render / metrics / mediapipe -> model / data -> inference -> engine ->
app / bench -> cli), read from the source by ``import_graph``; and every module imports on its own.

Checked in a child interpreter, which imports each module with every ``fastmetro`` module
forgotten first (third-party modules stay cached: this is about our own cycles), so the test
process's own modules are never replaced.
"""

from __future__ import annotations

import json
import subprocess
import sys

import import_graph

# The layers, lowest first: which areas a module of each area may import, at module level or
# inside a function (an import inside a function that goes upwards is a cycle in disguise).
BASE = {"errors", "io", "conventions", "devices", "model_files"}
ALLOWED = {
    "base": BASE,
    "weights": BASE,
    "topology": BASE | {"topology"},
    "render": BASE | {"render"},
    "metrics": BASE | {"metrics"},
    "mediapipe": BASE | {"mediapipe"},
    "model": BASE | {"model", "topology", "mediapipe", "weights"},
    "data": BASE | {"data", "topology", "render", "metrics"},
}
ALLOWED["rig"] = ALLOWED["data"] | {"rig"}  # body-model fits and rigged files: above the body models
ALLOWED["inference"] = ALLOWED["model"] | ALLOWED["rig"] | {"inference"}
ALLOWED["engine"] = ALLOWED["inference"] | {"engine"}
ALLOWED["app"] = ALLOWED["engine"] | {"app"}
ALLOWED["bench"] = ALLOWED["engine"] | {"bench"}
TOP = {"cli", "api", "__main__"}  # the command line and `import fastmetro`'s lazy API: above all


def _layer(area: str) -> str:
    return "base" if area in BASE else area


# Modules whose imports inside functions exist for start-up time by design: the command line
# imports every `*commands` module to list its sub-commands, and each loads its work only when run.
def _lazy_by_design(module: str) -> bool:
    return module.split(".")[-1] in ("commands", "video_commands", "cli") or module == "fastmetro"


def test_no_import_cycle_counting_imports_inside_functions():
    edges = import_graph.edges()
    assert len({e.source for e in edges}) > 80  # every package was read, weights and cli included
    assert {"fastmetro.weights", "fastmetro.cli", "fastmetro"} <= {e.source for e in edges}
    assert any(e.in_function for e in edges)  # the walk sees imports inside functions
    assert import_graph.cycles(import_graph.module_graph(edges)) == []
    assert import_graph.cycles(import_graph.area_graph(edges)) == []


def test_layers_only_import_downwards_even_inside_functions():
    known = set(ALLOWED) | BASE | TOP
    wrong = []
    for edge in import_graph.edges():
        source, target = import_graph.area(edge.source), import_graph.area(edge.target)
        assert source in known, f"{edge.source}: area {source!r} has no place in the layers of this test"
        if source in TOP or target == source:
            continue
        if target not in ALLOWED[_layer(source)]:
            wrong.append(f"{edge.source}:{edge.line} -> {edge.target}")
    assert not wrong, wrong


def test_every_import_inside_a_function_says_why():
    missing = [
        f"{e.source}:{e.line} -> {e.target}"
        for e in import_graph.edges()
        if e.in_function and not _lazy_by_design(e.source) and not e.reason
    ]
    assert not missing, f"imports inside functions without a reason comment: {missing}"


def test_the_cycle_finder_finds_cycles():
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_graph.cycles({"a": {"b"}, "b": set()}) == []


CHILD = r"""
import importlib, json, pkgutil, sys
import fastmetro
names = sorted(i.name for i in pkgutil.walk_packages(fastmetro.__path__, "fastmetro.")
               if not i.name.endswith("__main__"))
def forget():
    for m in [m for m in sys.modules if m == "fastmetro" or m.startswith("fastmetro.")]:
        del sys.modules[m]
report = {}
for name in names:
    forget()
    try:
        importlib.import_module(name)
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    areas = sorted({m.split(".")[1] for m in sys.modules if m.startswith("fastmetro.")})
    report[name] = {"error": error, "areas": areas}
print(json.dumps(report))
"""


def test_every_module_imports_alone():
    """Each module imported first, alone, in a fresh interpreter: no cycle hidden by import order."""
    completed = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(report) > 60  # every module was tried
    failures = {name: entry["error"] for name, entry in report.items() if entry["error"]}
    assert not failures, failures

"""Every module imports on its own (no import cycle hidden by import order), and the layers only
import downwards: topology / mediapipe -> model / data -> inference -> engine -> app / bench / cli.

Checked in a child interpreter, which imports each module with every ``fastmetro`` module
forgotten first (third-party modules stay cached: this is about our own cycles), so the test
process's own modules are never replaced.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Which areas a module of each area may import at module level (besides the base modules).
BASE = {"fastmetro", "errors", "io", "conventions"}
ALLOWED = {
    "topology": {"topology"},
    "render": {"render"},
    "metrics": {"metrics"},
    "mediapipe": {"mediapipe"},
    "model": {"model", "topology", "mediapipe"},
    "data": {"data", "topology", "render", "metrics"},
    "inference": {"inference", "model", "mediapipe", "data", "topology", "render", "metrics"},
    "engine": {"engine", "inference", "model", "mediapipe", "data", "topology", "render", "metrics"},
    "app": {"app", "inference", "model", "mediapipe", "data", "topology", "render", "metrics", "engine"},
    "bench": {"bench", "inference", "model", "mediapipe", "data", "topology", "render", "metrics", "engine"},
}

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


def test_every_module_imports_alone_and_only_downwards():
    completed = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(report) > 60  # every module was tried
    failures = {name: entry["error"] for name, entry in report.items() if entry["error"]}
    assert not failures, failures
    wrong = {}
    for name, entry in report.items():
        own = name.split(".")[1]
        if own in ALLOWED:
            forbidden = set(entry["areas"]) - BASE - ALLOWED[own]
            if forbidden:
                wrong[name] = sorted(forbidden)
    assert not wrong, f"modules importing upwards at module level: {wrong}"

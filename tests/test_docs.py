"""The documentation cannot rot: README.md and docs/*.md are checked against the code.

- every ``fastmetro ...`` command in a shell block or inline code is a real command: its
  sub-command chain exists and every ``--option`` it uses is one of that sub-command's options
  (the parser is built in-process, as ``fastmetro.cli`` builds it);
- a packaged config named to ``fastmetro train`` exists;
- every repository path the pages name (``src/...``, ``tests/...``, ``benchmarks/...``,
  ``docs/...``, ``Makefile``...) exists, and relative Markdown links and images resolve,
  anchors included;
- every ``python`` block parses, and every ``fastmetro`` import in it resolves;
- every ``yaml`` block made of training-config sections loads as a config.

The checkers are also run on a small made-up page full of mistakes, so that a checker which
finds nothing cannot pass silently.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", ""}
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"!?\[(?:[^\]\n]|\n(?!\n))*?\]\(([^)\s]+)\)")
# Repository paths as the pages write them: a known top-level folder, or a top-level file.
REPO_PATH = re.compile(
    r"(?<![\w/.~$-])((?:src|tests|benchmarks|docs|examples|\.ci)/[\w./*{}-]*[\w/*}]"
    r"|(?:Makefile|pyproject\.toml|constraints\.txt|LICENSE)(?![\w.-]))"
)
# Package-relative module paths such as `fastmetro/model/graph_conv.py`.
PACKAGE_PATH = re.compile(r"(?<![\w/.-])(fastmetro/[\w./-]*[\w/])")
OPTION = re.compile(r"(?<![\w-])--[a-z][\w-]*")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Command:
    source: str  # "file:line"
    words: list[str]  # after "fastmetro"
    extra_options: list[str]  # options named in `#   --option ...` comment lines below it


def strip_fences(text: str) -> str:
    """The text with every fenced block blanked out (line count kept)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, first line number of the body, body) for each fenced block."""
    return [(m.group(1).lower(), text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text)]


def shell_lines(body: str, first_line: int) -> list[tuple[int, str]]:
    """Logical lines of a shell block: backslash continuations joined, numbered by their first line."""
    out: list[tuple[int, str]] = []
    pending, start = "", first_line
    for number, line in enumerate(body.split("\n"), first_line):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def fastmetro_words(line: str) -> list[str] | None:
    """The words after `fastmetro` when the line runs the fastmetro command, else None."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split("#")[0].split()
    for index, word in enumerate(words):
        if word != "fastmetro":
            continue
        before = words[:index]
        if (before and before[-1] == "-m") or all(ENV_ASSIGNMENT.match(w) for w in before):
            return words[index + 1 :]
    return None


def extract_commands(text: str, name: str) -> list[Command]:
    commands: list[Command] = []
    for language, first_line, body in fenced_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        last: Command | None = None
        for number, line in shell_lines(body, first_line):
            stripped = line.strip()
            if stripped.startswith("#"):
                # `#   --detector none   # or ...`: more options of the command above
                if last is not None and re.match(r"#\s+--", stripped):
                    last.extra_options += OPTION.findall(stripped.split("#")[1])
                continue
            words = fastmetro_words(line)
            last = None
            if words is not None:
                last = Command(f"{name}:{number}", words, [])
                commands.append(last)
    prose = strip_fences(text)
    for match in INLINE.finditer(prose):
        code = match.group(1).strip()
        if code.startswith("fastmetro "):
            number = prose.count("\n", 0, match.start()) + 1
            commands.append(Command(f"{name}:{number}", fastmetro_words(code) or [], []))
    return commands


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_command(command: Command, root: argparse.ArgumentParser) -> list[str]:
    parser, chain, words = root, ["fastmetro"], list(command.words)
    while words and subcommands(parser) and not words[0].startswith("-"):
        choices = subcommands(parser)
        if words[0] not in choices:
            return [f"{command.source}: `{' '.join(chain)}` has no sub-command {words[0]!r}"]
        chain.append(words.pop(0))
        parser = choices[chain[-1]]
    if len(chain) == 1 and not any(w in ("--help", "-h", "--version") for w in words):
        return [f"{command.source}: `fastmetro` without a sub-command"]
    problems = []
    known = parser._option_string_actions
    for option in [*OPTION.findall(" ".join(words)), *command.extra_options]:
        if option not in known:
            problems.append(f"{command.source}: `{' '.join(chain)}` has no option {option}")
    if chain[1:] == ["train"] and words and not words[0].startswith("-"):
        config = words[0]
        if re.fullmatch(r"[a-z][a-z0-9_]*", config):
            if not (ROOT / "src/fastmetro/configs" / f"{config}.yaml").is_file():
                problems.append(f"{command.source}: no packaged config {config!r} (src/fastmetro/configs/)")
        elif "/" in config and not (ROOT / config).exists():
            problems.append(f"{command.source}: config file {config} is not in the repository")
    return problems


def github_anchor(heading: str) -> str:
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose = strip_fences(path.read_text(encoding="utf-8"))
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.M)}


def check_paths(text: str, path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    name = path.name
    for match in REPO_PATH.finditer(text):
        target = match.group(1).rstrip(".")
        number = text.count("\n", 0, match.start()) + 1
        pattern = re.sub(r"\{[^}]*\}", "*", target)
        if not (list(root.glob(pattern.rstrip("/"))) if "*" in pattern else (root / target).exists()):
            problems.append(f"{name}:{number}: {target} does not exist")
    for match in PACKAGE_PATH.finditer(text):
        target = match.group(1).rstrip(".")
        if not (root / "src" / target).exists():
            number = text.count("\n", 0, match.start()) + 1
            problems.append(f"{name}:{number}: src/{target} does not exist")
    for match in LINK.finditer(strip_fences(text)):
        target = match.group(1)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        number = text.count("\n", 0, match.start()) + 1
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{name}:{number}: link target {target} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{name}:{number}: {linked.name} has no heading for #{anchor}")
    return problems


def check_python(text: str, name: str) -> list[str]:
    problems = []
    for language, first_line, body in fenced_blocks(text):
        if language not in ("python", "py"):
            continue
        try:
            tree = ast.parse(body)
        except SyntaxError as error:
            problems.append(f"{name}:{first_line + (error.lineno or 1) - 1}: python block does not parse: {error.msg}")
            continue
        for node in ast.walk(tree):
            where = f"{name}:{first_line + getattr(node, 'lineno', 1) - 1}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "fastmetro":
                        problems += import_problems(alias.name, None, where)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fastmetro":
                for alias in node.names:
                    problems += import_problems(node.module or "", alias.name, where)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "fastmetro":
                problems += import_problems("fastmetro", node.attr, where)
    return problems


def import_problems(module_name: str, attribute: str | None, where: str) -> list[str]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        return [f"{where}: import {module_name} fails: {error}"]
    if attribute is None or hasattr(module, attribute):
        return []
    try:
        importlib.import_module(f"{module_name}.{attribute}")
    except ImportError:
        return [f"{where}: {module_name} has no {attribute}"]
    return []


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    from fastmetro.cli import build_parser

    return build_parser()


@pytest.fixture(scope="module")
def pages() -> dict[Path, str]:
    return {path: path.read_text(encoding="utf-8") for path in doc_files()}


def test_commands_are_real(parser, pages):
    commands = [c for path, text in pages.items() for c in extract_commands(text, path.name)]
    # The pages show far more commands than this; fewer found means the extractor broke.
    assert len(commands) >= 60, f"only {len(commands)} fastmetro commands found"
    used = {c.words[0] for c in commands if c.words}
    assert {"infer", "train", "eval", "synth", "convert", "bench", "app", "topology", "data"} <= used
    problems = [p for c in commands for p in check_command(c, parser)]
    assert not problems, "\n".join(problems)


def test_paths_and_links_exist(pages):
    problems = [p for path, text in pages.items() for p in check_paths(text, path)]
    assert not problems, "\n".join(problems)
    links = sum(len(LINK.findall(strip_fences(text))) for text in pages.values())
    paths = sum(len(REPO_PATH.findall(text)) for text in pages.values())
    assert links >= 20 and paths >= 30, (links, paths)


def test_python_blocks_parse_and_import(pages):
    blocks = sum(1 for text in pages.values() for lang, _, _ in fenced_blocks(text) if lang == "python")
    assert blocks >= 6, blocks
    problems = [p for path, text in pages.items() for p in check_python(text, path.name)]
    assert not problems, "\n".join(problems)


CONFIG_SECTIONS = {"model", "data", "optim", "loss", "train"}


def check_configs(text: str, name: str, folder: Path) -> tuple[list[str], int]:
    """(problems, blocks checked): each ```yaml block made of config sections must load."""
    from fastmetro.engine.config import load_config

    problems, checked = [], 0
    for language, first_line, body in fenced_blocks(text):
        keys = set(re.findall(r"^([a-z_]+):", body, re.M))
        if language not in ("yaml", "yml") or not keys or not keys <= CONFIG_SECTIONS:
            continue
        config = folder / f"{name}-{first_line}.yaml"
        config.write_text(body)
        checked += 1
        try:
            load_config(config)
        except Exception as error:
            problems.append(f"{name}:{first_line}: the config does not load: {error}")
    return problems, checked


def test_config_blocks_load(pages, tmp_path):
    results = [check_configs(text, path.name, tmp_path) for path, text in pages.items()]
    assert sum(checked for _, checked in results) >= 1
    problems = [p for found, _ in results for p in found]
    assert not problems, "\n".join(problems)


def test_the_readme_is_a_front_door(pages):
    readme = pages[ROOT / "README.md"]
    assert len(readme.splitlines()) <= 320
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    missing = {p.name for p in (ROOT / "docs").glob("*.md")} - linked
    assert not missing, f"docs pages the README does not link: {sorted(missing)}"


BAD_PAGE = """\
# A page

See [the speed page](speed.md), [a missing page](docs/nowhere.md), [an anchor](#a-page),
[a missing anchor](#nowhere) and `tests/test_nothing_here.py`, `src/fastmetro/cli.py`.

```bash
make demo
fastmetro infer photo.jpg --out results/ \\
    --no-such-option 3
OMP_WAIT_POLICY=PASSIVE fastmetro train configs/demo.yaml
torchrun --nproc_per_node 2 -m fastmetro train no_such_config
fastmetro trian demo
fastmetro app --port 8080
#   --colour red   # an option of the command above
```

Inline: `fastmetro eval --checkpoint x --data y --jsn`.

```python
import fastmetro
from fastmetro.inference import load_image, no_such_name
from fastmetro.no_such_module import thing
model = fastmetro.not_a_function()
```

```python
def broken(:
```

```yaml
model:
  nmae: FastMETRO-S-R50
```
"""


def test_the_checkers_catch_mistakes(parser, tmp_path):
    (tmp_path / "speed.md").write_text("# Speed\n")
    page = tmp_path / "page.md"
    page.write_text(BAD_PAGE)
    commands = extract_commands(BAD_PAGE, "page.md")
    assert [c.words[0] for c in commands] == ["infer", "train", "train", "trian", "app", "eval"]
    problems = "\n".join(p for c in commands for p in check_command(c, parser))
    assert "page.md:8: `fastmetro infer` has no option --no-such-option" in problems  # continuation joined
    assert "config file configs/demo.yaml is not in the repository" in problems
    assert "no packaged config 'no_such_config'" in problems
    assert "has no sub-command 'trian'" in problems
    assert "`fastmetro app` has no option --colour" in problems  # the comment line's option
    assert "`fastmetro eval` has no option --jsn" in problems
    assert "--out" not in problems and "--port" not in problems
    path_problems = "\n".join(check_paths(BAD_PAGE, page, root=ROOT))
    assert "docs/nowhere.md does not exist" in path_problems
    assert "tests/test_nothing_here.py does not exist" in path_problems
    assert "has no heading for #nowhere" in path_problems
    assert "speed.md" not in path_problems and "#a-page" not in path_problems and "cli.py" not in path_problems
    python_problems = "\n".join(check_python(BAD_PAGE, "page.md"))
    assert "fastmetro.inference has no no_such_name" in python_problems
    assert "import fastmetro.no_such_module fails" in python_problems
    assert "fastmetro has no not_a_function" in python_problems
    assert "does not parse" in python_problems
    assert "load_image" not in python_problems
    config_problems, checked = check_configs(BAD_PAGE, "page.md", tmp_path)
    assert checked == 1 and "unknown key" in "\n".join(config_problems)


def test_one_documented_command_runs():
    """One real `fastmetro ... --help` in a subprocess: the entry point the pages call works."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "fastmetro", "infer", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--checkpoint" in result.stdout and "--bbox" in result.stdout

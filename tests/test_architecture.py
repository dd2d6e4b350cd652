"""pipeline/ARCHITECTURE.md stays current: every module named, no stale name, each stage's inputs and outputs."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from tests.project_graph import (
    PACKAGES,
    REPO,
    command_roots,
    dvc_files,
    is_code,
    load_stages,
    needed_files,
    project_modules,
)

DOC = REPO / "pipeline" / "ARCHITECTURE.md"
TOKEN = re.compile(r"`([^`]+)`")


def _lines() -> list[str]:
    return DOC.read_text().splitlines()


def _tokens(line: str) -> set[str]:
    return set(TOKEN.findall(line))


def _named(path: str, lines: list[str]) -> bool:
    """Whether the doc names the module at repo-relative ``path`` (a package by ``pkg/``)."""
    parts = PurePosixPath(path).parts
    rel = parts[1:] if parts[0] == "pipeline" else parts
    if rel[-1] == "__init__.py":
        wanted = "/".join(rel[:-1]) + "/" if len(rel) > 1 else f"{parts[0]}/"
        return any(wanted in _tokens(line) for line in lines)
    full = "/".join(rel)
    if any(full in _tokens(line) for line in lines):
        return True
    package = "/".join(rel[:-1]) + "/"
    return len(rel) > 1 and any({package, rel[-1]} <= _tokens(line) for line in lines)


def test_every_module_is_named():
    lines = _lines()
    paths = [m.path for m in project_modules().values() if m.path != "pipeline/__init__.py"]
    assert [p for p in paths if not _named(p, lines)] == []


def test_every_module_or_package_named_exists():
    paths = {m.path for m in project_modules().values()}
    stale = []
    for token in TOKEN.findall(DOC.read_text()):
        known = (REPO / token).is_file() or any(p == token or p.endswith("/" + token) for p in paths)
        if token.endswith(".py") and not known:
            stale.append(token)
        if re.fullmatch(r"[a-z_]+/", token) and not any((root / token).is_dir() for root in (REPO, REPO / "pipeline")):
            stale.append(token)
    assert stale == []


def _stage_rows() -> list[list[str]]:
    lines = _lines()
    start = lines.index("## Stages (dvc.yaml order)")
    rows = []
    for line in lines[start + 3 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _mentions(cell: str, path: str) -> bool:
    table = re.fullmatch(r"tables/(\w+)\.parquet", path)
    return f"`{path}`" in cell or bool(table and f"`{table.group(1)}`" in cell)


def _outputs(stage: dict) -> list[str]:
    out = []
    for kind in ("outs", "metrics", "plots"):
        for item in stage.get(kind, []):
            out.extend(item if isinstance(item, dict) else [item])
    return out


def test_the_stage_table_follows_dvc_yaml_with_each_stage_inputs_and_outputs():
    stages = load_stages(dvc_files()[0])
    rows = _stage_rows()
    assert [r[0] for r in rows] == list(stages)
    modules = project_modules()
    problems = []
    for (name, module_cell, reads, writes), stage in zip(rows, stages.values(), strict=True):
        root = command_roots(stage["cmd"], PurePosixPath("."))[-1]
        path = PurePosixPath(modules[root].path).relative_to("pipeline")
        module = f"{path.parent}/" if path.name == "__init__.py" else str(path)
        if f"`{module}`" not in module_cell:
            problems.append(f"{name}: module should be `{module}`")
        code = needed_files([stage["cmd"]], PurePosixPath("."))
        # data inputs: not code (a catalog data file named by params, such as the deny list, is data)
        inputs = [d for d in stage["deps"] if d not in code and not (d.split("/")[0] in PACKAGES and is_code(REPO / d))]
        problems += [f"{name}: reads does not name {d}" for d in inputs if not _mentions(reads, d)]
        problems += [f"{name}: writes does not name {o}" for o in _outputs(stage) if not _mentions(writes, o)]
    assert problems == []


def test_a_missing_module_is_noticed():
    lines = ["| `flickr/` | `client.py`, `plan.py` |", "| `cli.py` | ... |"]
    assert _named("pipeline/flickr/client.py", lines) and _named("pipeline/cli.py", lines)
    assert not _named("pipeline/flickr/state.py", lines) and not _named("pipeline/store.py", lines)
    assert _named("pipeline/flickr/__init__.py", lines) and not _named("filters/__init__.py", lines)

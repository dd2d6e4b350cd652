"""The module layering, read from the import graph: no cycles, stages import only shared modules.

The rule (checked on every project import, lazy ones included):
- a *stage* module (what a dvc.yaml stage's ``crossview`` command runs) imports no other command
  module, stage or tool;
- a *tool* module (the other ``crossview`` commands: review, inspect, heatmap, picture, catalog)
  imports no other tool; it may compose stage cores (``inspect`` runs the download, classify and
  relevance stages' code on files);
- a *shared* module (everything else, including a command package's private modules) imports no
  command module at all.
Also: no module is named like a standard-library module, and no two modules share a name.
"""

from __future__ import annotations

import sys
from pathlib import PurePosixPath

from tests.project_graph import (
    command_roots,
    commands,
    dvc_files,
    find_cycles,
    import_edges,
    load_stages,
    project_modules,
)


def _stage_modules() -> set[str]:
    out = set()
    for path in dvc_files():
        for stage in load_stages(path).values():
            for cmd in stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]:
                if cmd.split()[0] == "crossview":
                    out.update(r for r in command_roots(cmd, PurePosixPath(".")) if r != "pipeline.cli")
    return out


def layering_problems(edges: dict[str, set[str]], stages: set[str], tools: set[str]) -> list[str]:
    """Imports that break the rule in the module docstring."""
    problems = []
    for module, targets in sorted(edges.items()):
        if module == "pipeline.cli":
            continue  # the CLI names every command (by string, imported on demand)
        for target in sorted(targets):
            if module in stages and target in stages | tools:
                problems.append(f"stage {module} imports {'stage' if target in stages else 'tool'} {target}")
            elif module in tools and target in tools:
                problems.append(f"tool {module} imports tool {target}")
            elif module not in stages | tools and target in stages | tools:
                problems.append(f"shared module {module} imports command module {target}")
    return problems


def test_there_is_no_import_cycle():
    assert find_cycles(import_edges()) == []


def test_a_cycle_through_a_package_init_is_found():
    edges = {"filters": {"filters.chip", "pipeline.schemas"}, "filters.chip": {"filters"}, "pipeline.schemas": set()}
    assert find_cycles(edges) == [["filters", "filters.chip"]]


def test_stages_import_shared_modules_only_and_shared_modules_no_command():
    stages = _stage_modules()
    tools = set(commands().values()) - stages
    assert {"pipeline.tiles", "pipeline.train.stage", "pipeline.demo"} <= stages
    assert {"pipeline.heatmap", "pipeline.review", "pipeline.inspect_photos"} <= tools
    assert layering_problems(import_edges(), stages, tools) == []


def test_layering_problems_name_the_import():
    edges = {
        "pipeline.relevance": {"pipeline.classify", "pipeline.store"},
        "pipeline.heatmap": {"pipeline.review"},
        "pipeline.store": {"pipeline.tiles"},
        "pipeline.inspect_photos": {"pipeline.download"},
    }
    stages = {"pipeline.relevance", "pipeline.classify", "pipeline.tiles", "pipeline.download"}
    tools = {"pipeline.heatmap", "pipeline.review", "pipeline.inspect_photos"}
    assert layering_problems(edges, stages, tools) == [
        "tool pipeline.heatmap imports tool pipeline.review",
        "stage pipeline.relevance imports stage pipeline.classify",
        "shared module pipeline.store imports command module pipeline.tiles",
    ]


def test_no_module_shadows_the_standard_library_or_shares_a_name():
    names: dict[str, list[str]] = {}
    for name, mod in project_modules().items():
        names.setdefault(name.rsplit(".", 1)[-1], []).append(mod.path)
    assert sorted(n for n in names if n in sys.stdlib_module_names) == []
    assert {n: paths for n, paths in names.items() if len(paths) > 1} == {}

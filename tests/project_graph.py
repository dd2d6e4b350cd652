"""The project's import graph, read from the source (``ast``), and what each dvc.yaml stage runs.

Used by the tests that keep dvc.yaml deps, the module layering and ARCHITECTURE.md true. Imports
inside functions count (the CLI and several stages import lazily). Two views of the graph:

Imports under ``if TYPE_CHECKING:`` do not count: they never run.

- explicit edges (:func:`import_edges`): ``from pipeline import chipgeom`` is an edge to
  ``pipeline.chipgeom``, ``from filters.base import Tables`` to ``filters.base``; used for cycles
  and layering;
- what runs (:func:`runtime_closure`): the explicit edges plus every package ``__init__`` Python
  executes on the way to a module; used for dvc.yaml deps.

Catalog data files (``catalogs/*.csv`` ...) count as run when a module in the closure names the
file in a string, or imports a ``catalogs`` loader function that does.
"""

from __future__ import annotations

import ast
import functools
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

REPO = Path(__file__).resolve().parent.parent
# The project's top-level import packages (pipeline, filters, catalogs, and any added later, such
# as studies/): every folder at the root with an __init__.py, except the tests.
PACKAGES = tuple(sorted(p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name != "tests"))
CODE_ROOTS = PACKAGES  # dvc.yaml deps under these are code deps
PARAM_MODULE = "pipeline.config"  # its strings are params defaults (paths a stage lists as data deps)


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. pipeline.flickr.client
    path: str  # repo-relative POSIX path of the file
    tree: ast.Module


@functools.lru_cache(maxsize=4)
def project_modules(repo: Path = REPO) -> dict[str, Module]:
    """Every module of the project packages, by dotted name."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((repo / pkg).rglob("*.py")):
            rel = path.relative_to(repo)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = Module(".".join(parts), rel.as_posix(), ast.parse(path.read_text(), str(rel)))
    return out


def _is_package(mod: Module) -> bool:
    return mod.path.endswith("/__init__.py")


def _absolute(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".") if _is_package(mod) else mod.name.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"
    )


def _walk(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for type hints never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _type_checking(child))


def imported_names(mod: Module, modules: dict[str, Module]) -> set[tuple[str, str | None]]:
    """``(module, name)`` for each project import in ``mod`` (name None for ``import x`` or a module)."""
    found: set[tuple[str, str | None]] = set()
    for node in _walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES and alias.name in modules:
                    found.add((alias.name, None))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(mod, node)
            if base.split(".")[0] not in PACKAGES or base not in modules:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add((sub, None) if sub in modules else (base, alias.name))
    return found


def import_edges(modules: dict[str, Module] | None = None) -> dict[str, set[str]]:
    """``{module: modules it names in an import}`` (explicit edges, lazy imports included)."""
    modules = modules if modules is not None else project_modules()
    return {name: {m for m, _ in imported_names(mod, modules)} - {name} for name, mod in modules.items()}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def runtime_closure(roots: Iterable[str], modules: dict[str, Module] | None = None) -> set[str]:
    """Every project module that importing ``roots`` (and calling into them) can execute."""
    modules = modules if modules is not None else project_modules()
    edges = import_edges(modules)
    seen: set[str] = set()
    todo = [r for r in roots if r in modules]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for m in (*edges[name], *_parents(name)) if m in modules and m not in seen)
    return seen


# ---------------------------------------------------------------- catalog data files


def catalog_files(repo: Path = REPO) -> set[str]:
    """The data files beside the catalog loader (``catalogs/*`` that code may read)."""
    return {p.name for p in (repo / "catalogs").iterdir() if p.is_file() and p.suffix in (".csv", ".yaml", ".txt")}


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _named_files(strings: set[str], files: set[str]) -> set[str]:
    return {f for f in files for s in strings if s == f or s.endswith("/" + f)}


def _loader_files(modules: dict[str, Module], files: set[str]) -> dict[str, set[str]]:
    """``{catalogs function: data files it reads}``, following calls between its functions."""
    tree = modules["catalogs"].tree
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    direct = {name: _named_files(_strings(fn), files) for name, fn in funcs.items()}
    calls = {
        name: {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)} & set(funcs)
        for name, fn in funcs.items()
    }
    out = {}
    for name in funcs:
        seen, todo, found = set(), [name], set()
        while todo:
            f = todo.pop()
            if f not in seen:
                seen.add(f)
                found |= direct[f]
                todo.extend(calls[f])
        out[name] = found
    return out


def catalog_files_read(closure: set[str], modules: dict[str, Module], repo: Path = REPO) -> set[str]:
    """Catalog data files (repo-relative) that the modules of ``closure`` name or load."""
    files = catalog_files(repo)
    loaders = _loader_files(modules, files)
    found: set[str] = set()
    for name in closure:
        if name in ("catalogs", PARAM_MODULE):
            continue
        found |= _named_files(_strings(modules[name].tree), files)
        for module, attr in imported_names(modules[name], modules):
            if module == "catalogs":
                found |= loaders.get(attr, set()) if attr else set().union(*loaders.values())
    return {f"catalogs/{f}" for f in found}


# ---------------------------------------------------------------- dvc.yaml stages


def dvc_files(repo: Path = REPO) -> list[Path]:
    """``dvc.yaml`` at the root and in any project folder (``studies/dvc.yaml`` ...), data folders skipped."""
    skip = {".git", ".dvc", "data", "tables", "manifests", "reports", "models", "build", ".venv"}
    found = [repo / "dvc.yaml"] if (repo / "dvc.yaml").exists() else []
    for path in sorted(repo.rglob("dvc.yaml")):
        rel = path.relative_to(repo)
        if len(rel.parts) > 1 and not skip & set(rel.parts[:-1]):
            found.append(path)
    return found


def commands() -> dict[str, str]:
    """``{crossview subcommand: module}`` from the CLI's registry (read from its source)."""
    tree = project_modules()["pipeline.cli"].tree
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "COMMANDS":
            registry = ast.literal_eval(node.value)
            return {name: module for name, (module, _help) in registry.items()}
    raise AssertionError("pipeline/cli.py defines no COMMANDS registry")


class UnknownCommand(ValueError):
    """A stage command the deps check cannot follow."""


def _script_module(path: PurePosixPath, modules: dict[str, Module]) -> str:
    name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
    if name not in modules:
        raise UnknownCommand(f"{path} is not a module of {', '.join(PACKAGES)}")
    return name


def command_roots(cmd: str, workdir: PurePosixPath) -> list[str]:
    """The project modules one shell command runs: ``crossview STAGE`` or ``python [-m] module``."""
    modules = project_modules()
    roots: list[str] = []
    for part in cmd.replace("&&", ";").split(";"):
        words = shlex.split(part)
        if not words:
            continue
        if words[0] == "crossview":
            args = iter(words[1:])
            sub = None
            for w in args:
                if w == "--params":
                    next(args, None)
                elif not w.startswith("-"):
                    sub = w
                    break
            if sub not in commands():
                raise UnknownCommand(f"`{part.strip()}`: {sub!r} is not a crossview command")
            roots += ["pipeline.cli", commands()[sub]]
        elif PurePosixPath(words[0]).name.startswith("python") and len(words) > 1:
            if words[1] == "-m" and len(words) > 2:
                if words[2] not in modules:
                    raise UnknownCommand(f"`{part.strip()}`: {words[2]} is not a project module")
                roots.append(words[2])
            else:
                roots.append(_script_module(_normal(workdir / words[1]), modules))
        else:
            raise UnknownCommand(
                f"`{part.strip()}`: use `crossview STAGE` or `python -m MODULE` so its deps can be checked"
            )
    return roots


def _normal(path: PurePosixPath) -> PurePosixPath:
    parts: list[str] = []
    for p in path.parts:
        if p == "..":
            parts.pop()
        elif p != ".":
            parts.append(p)
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _dep_paths(stage: dict, workdir: PurePosixPath) -> list[str]:
    out = []
    for dep in stage.get("deps", []):
        for path in dep if isinstance(dep, dict) else [dep]:
            out.append(_normal(workdir / str(path)).as_posix())
    return out


def needed_files(cmds: list[str], workdir: PurePosixPath, repo: Path = REPO) -> set[str]:
    """Repo-relative files (modules and catalog data) that the stage's commands run or read."""
    modules = project_modules(repo)
    roots = [r for cmd in cmds for r in command_roots(cmd, workdir)]
    closure = runtime_closure(roots, modules)
    return {modules[m].path for m in closure} | catalog_files_read(closure, modules, repo)


def stage_problems(dvc_path: Path, name: str, stage: dict, repo: Path = REPO) -> list[str]:
    """What is wrong with one stage's code deps: modules or catalogs it runs but does not list, and
    code deps that name nothing it runs (or nothing at all). Empty when the deps are right."""
    workdir = _normal(PurePosixPath(dvc_path.parent.relative_to(repo).as_posix()) / stage.get("wdir", "."))
    cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
    try:
        needed = needed_files(cmds, workdir, repo)
    except UnknownCommand as err:
        return [str(err)]
    deps = _dep_paths(stage, workdir)

    def covers(dep: str, path: str) -> bool:
        return path == dep or path.startswith(dep.rstrip("/") + "/")

    problems = [f"runs {p} but deps do not list it" for p in sorted(needed) if not any(covers(d, p) for d in deps)]
    for dep in deps:
        if dep.split("/")[0] not in CODE_ROOTS:
            continue
        if not (repo / dep).exists():
            problems.append(f"lists {dep}, which does not exist")
        elif is_code(repo / dep) and not any(covers(dep, p) for p in needed if p.endswith(".py")):
            problems.append(f"lists {dep}, which its command does not run")
    return problems


def is_code(path: Path) -> bool:
    """A module or a folder of modules (catalog data files may be named by params, so they are not judged)."""
    return path.suffix == ".py" or (path.is_dir() and any(path.rglob("*.py")))


def load_stages(dvc_path: Path) -> dict[str, dict]:
    """The stages of a dvc.yaml; a ``foreach`` stage becomes one stage per item (``name@item``), as DVC expands it.

    Items that are ``${...}`` references (to params) are checked as one placeholder item: the code deps
    of a ``foreach`` stage do not depend on the item.
    """
    stages = (yaml.safe_load(dvc_path.read_text()) or {}).get("stages", {})
    out = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        items = stage["foreach"] if isinstance(stage["foreach"], list) else ["item"]
        for item in items:
            text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
            out[f"{name}@{item}"] = yaml.safe_load(text)
    return out

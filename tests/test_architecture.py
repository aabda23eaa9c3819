"""The architecture, checked from the source (``ast``; nothing is imported except in the last test):

* no module over ``MAX_LINES`` lines (a few known ones are listed until they are split);
* ``import ray`` / ``from ray ...`` only in the Ray layer (launch/, tune/, the CLI's job client), also inside
  functions;
* no import cycle between raylit modules, function-level imports included (known ones are listed until they
  are broken);
* ``import raylit`` loads neither Ray nor Lightning.

The allow-lists only shrink: an entry that no longer applies fails the test, saying to remove it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raylit"

MAX_LINES = 450
# Longer than MAX_LINES until they are split (remove an entry once its file is short enough). None are left.
_STILL_TOO_LONG: set[str] = set()

# Where Ray may be imported: the launch layer, the Tune integration, and the CLI's job client.
RAY_LAYER = ("raylit/launch/", "raylit/tune/", "raylit/jobs.py")

# Import cycles that exist today, each given by its modules (a strongly connected component of the import
# graph). Remove an entry once its cycle is broken. None are left; keep it that way.
_KNOWN_CYCLES: set[frozenset[str]] = set()


# --------------------------------------------------------------------------------------------------------------
# reading the source
# --------------------------------------------------------------------------------------------------------------
def _module_files() -> dict[str, Path]:
    """``{"raylit.launch.ray": path, "raylit.launch": path of its __init__.py, ...}``"""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth (functions included), except under ``if TYPE_CHECKING``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if _is_type_checking(node):
            for other in node.orelse:
                yield from _runtime_imports(ast.Module(body=[other], type_ignores=[]))
            continue
        yield from _runtime_imports(node)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module name a (possibly relative) ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported raylit module: line of the first such import}}``.

    ``from raylit.x import name`` is an edge to ``raylit.x.name`` when that is a module, else to ``raylit.x``;
    ``import raylit.x.y`` is an edge to ``raylit.x.y``. Importing a submodule is not counted as importing its
    package's ``__init__``.
    """
    files = _module_files()
    graph: dict[str, dict[str, int]] = {name: {} for name in files}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _runtime_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _absolute(module, node, path.name == "__init__.py")
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in files else base)
            for target in targets:
                if target.split(".")[0] != "raylit":
                    continue
                found = known(target)
                if found is not None and found != module:
                    graph[module].setdefault(found, node.lineno)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _describe(component: set[str], graph: dict[str, dict[str, int]]) -> str:
    """One cycle through ``component`` with the line of each import, plus every import inside the component."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    cycle: list[str] = []
    while queue and not cycle:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                cycle = [*paths[v], start]
                break
            if w in component and w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    files = _module_files()
    steps = " -> ".join(f"{a} ({_rel(files[a])}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
    edges = "\n".join(
        f"      {a} -> {b}  ({_rel(files[a])}:{line})"
        for a in sorted(component)
        for b, line in sorted(graph[a].items())
        if b in component
    )
    return f"  cycle: {steps} -> {start}\n    imports inside {sorted(component)}:\n{edges}"


# --------------------------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------------------------
def test_no_module_is_too_long() -> None:
    lengths = {_rel(path): len(path.read_text().splitlines()) for path in _module_files().values()}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in _STILL_TOO_LONG}
    assert not too_long, f"modules over {MAX_LINES} lines (split them): {too_long}"
    fixed = sorted(name for name in _STILL_TOO_LONG if lengths.get(name, 0) <= MAX_LINES)
    assert not fixed, f"now at most {MAX_LINES} lines (or gone): remove from _STILL_TOO_LONG: {fixed}"


def test_ray_is_imported_only_in_the_ray_layer() -> None:
    found = []
    for path in _module_files().values():
        name = _rel(path)
        if name.startswith(RAY_LAYER):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules = [node.module or ""]
            else:
                continue
            if any(m == "ray" or m.startswith("ray.") for m in modules):
                found.append(f"{name}:{node.lineno}")
    assert not found, f"Ray imported outside {RAY_LAYER}: {found}"


def test_no_import_cycles() -> None:
    graph = _import_graph()
    cycles = _cycles(graph)
    new = [c for c in cycles if not any(c <= known for known in _KNOWN_CYCLES)]
    assert not new, "import cycles between raylit modules (function-level imports count):\n" + "\n".join(
        _describe(c, graph) for c in new
    )
    gone = [sorted(known) for known in _KNOWN_CYCLES if not any(c & known for c in cycles)]
    assert not gone, f"these cycles are broken: remove them from _KNOWN_CYCLES: {gone}"


def test_the_import_graph_sees_function_level_imports() -> None:
    """The graph is what the cycle check relies on: a lazy import inside a function is an edge, and ``from raylit
    import fs`` is an edge to the module ``raylit.fs``."""
    graph = _import_graph()
    assert "raylit.launch.ray_data" in graph["raylit.ray_data"]  # imported inside RayDataLoader's methods
    assert "raylit.fs" in graph["raylit.launch.fault"]  # `from raylit import fs`


def test_import_raylit_loads_neither_ray_nor_lightning() -> None:
    code = (
        "import sys, raylit\n"
        "print(sorted(m for m in ('ray', 'pytorch_lightning', 'lightning', 'lightning_fabric') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"`import raylit` loaded {out.stdout.strip()}"


def test_the_ray_setup_hook_imports_no_torch() -> None:
    """Ray runs ``worker_process_setup_hook`` in every worker process of a job (Train's controller and helper
    actors, the console relay): importing it must not import torch or the rest of raylit (an eager
    ``raylit/__init__`` cost each of those processes ~1-1.5 s of CPU at a run's start)."""
    code = (
        "import sys, raylit.launch.session as s\n"
        "s.quiet_ray_workers()\n"
        "print(sorted(m for m in ('torch', 'raylit.trainer', 'raylit.module') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"the setup hook loaded {out.stdout.strip()}"


def test_lazy_top_level_names() -> None:
    import raylit

    assert raylit.Trainer.__module__ == "raylit.trainer"
    assert raylit.callbacks.ModelCheckpoint is not None and raylit.loggers.CSVLogger is not None
    assert {"Trainer", "LightningModule", "callbacks", "tuner"} <= set(dir(raylit))
    with pytest.raises(AttributeError):
        raylit.no_such_name  # noqa: B018

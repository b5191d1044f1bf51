"""Layers import downward only (docs/architecture.md): library code below orchestration, no package importing another
that imports it back, no import cycle between modules. Every import counts, also the ones inside functions:
a lazy import hides a cycle from Python, not from this test."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "evaluation", "export")
# entry points and the work that strings library calls together; everything else in the packages is library
ORCHESTRATION = {
    "training.__main__",
    "training.sweep",
    "evaluation.__main__",
    "evaluation.predict",
    "evaluation.publish",
    "evaluation.run",
    "evaluation.model_selection",
    "evaluation.full_report",
    "evaluation.notebook",
    "export.__main__",
    "export.run",
    "export.benchmark",
}
# library packages a library package may import besides itself (the order of the layers)
LIBRARY_MAY_IMPORT = {"training": set(), "evaluation": {"training"}, "export": {"training", "evaluation"}}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body), parents of dotted names resolved."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r and r != mod:
                    graph[mod].add(r)
    return graph


def test_orchestration_modules_exist():
    assert set(_modules()) >= ORCHESTRATION, ORCHESTRATION - set(_modules())


def _library_imports():
    """(importer, imported) for every import made by a library module."""
    return [(m, t) for m, targets in import_graph().items() if m not in ORCHESTRATION for t in targets]


def test_library_never_imports_orchestration():
    bad = [f"{m} -> {t}" for m, t in _library_imports() if t in ORCHESTRATION]
    assert not bad, bad


def test_library_packages_import_downward_only():
    def pkg(name: str) -> str:
        return name.split(".")[0]

    bad = [
        f"{m} -> {t}"
        for m, t in _library_imports()
        if pkg(t) != pkg(m) and pkg(t) not in LIBRARY_MAY_IMPORT[pkg(m)]
    ]
    assert not bad, bad


def test_no_import_cycles():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_test_sees_lazy_imports(tmp_path):
    """The graph includes imports inside functions (what would hide a cycle)."""
    graph = import_graph()
    assert "evaluation.run" in graph["training.__main__"]  # imported inside main()


def test_the_public_api_is_a_facade_on_top():
    """``sigdet`` (the Python API and the command) sits above the three layers: nothing in them imports it, and it
    holds no model, data or metric code of its own (a few small modules)."""
    up = []
    for mod, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            up += [f"{mod} -> {n}" for n in names if n == "sigdet" or n.startswith("sigdet.")]
    assert up == []
    files = sorted(p.name for p in (ROOT / "sigdet").glob("*.py"))
    assert files == ["__init__.py", "__main__.py", "cli.py"], files

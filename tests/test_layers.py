"""Layers import downward only (docs/architecture.md): an ordered list of layers, each importing only itself and
the layers below it; only entry points (``__main__`` modules) compose across layers; no import cycle between
modules. Every import counts, also the ones inside functions: a lazy import hides a cycle from Python, not from
this test."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bottom to top: data, models, backends, inference runtimes, run files, CLI plumbing < metrics, evaluator, error
# analysis, prediction, latency < conversion, quantization, parity, the latency benchmark
LAYERS = ("training", "evaluation", "export")
PACKAGES = LAYERS


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


def is_entry_point(module: str) -> bool:
    return module.rpartition(".")[2] == "__main__"


def test_layers_import_downward_only():
    """A module of a layer imports only its own layer and the ones below, lazily or not (entry points aside)."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    bad = [
        f"{m} -> {t}"
        for m, targets in import_graph().items()
        if not is_entry_point(m)
        for t in targets
        if rank[t.split(".")[0]] > rank[m.split(".")[0]]
    ]
    assert not bad, bad


def test_nothing_imports_an_entry_point():
    bad = [f"{m} -> {t}" for m, targets in import_graph().items() for t in targets if is_entry_point(t)]
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
    assert is_entry_point("training.sweep.__main__") and not is_entry_point("training.sweep")


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

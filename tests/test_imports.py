"""Imports run one way: no circle among medsr's modules, and the config module stays a torch-free leaf."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """medsr module -> the medsr modules it imports anywhere in its file (lazy imports in functions too)."""
    files = {_module_name(p): p for p in (ROOT / "medsr").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1 packages
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                while t and t not in files:  # a name imported from a module: that module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_among_medsr_modules():
    graph = _import_graph()
    assert "medsr.config" in graph and graph["medsr.training.trainer"]  # the graph is the real one
    # A package importing its own submodules (medsr.training -> medsr.training.trainer) is no circle:
    # edges from a package to its children are dropped before the search.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_config_is_a_leaf_that_loads_no_torch():
    # Only what lies below it: its value checks and YAML reading, the value sets, the atomic file writer
    # and the subject ID checks.
    graph = _import_graph()
    below = {"medsr", "medsr.choices", "medsr.utils.atomic", "medsr.utils.paths"}
    assert graph["medsr.config"] <= below | {"medsr.config_values", "medsr.config_yaml"}
    assert graph["medsr.config_yaml"] <= below | {"medsr.config_values"}
    assert graph["medsr.config_values"] <= below
    assert _import_graph()["medsr.utils.paths"] <= {"medsr"}
    code = ("import sys, medsr.config as c; c.load_config({'train': {'mode': 'paired'}}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

"""No import cycles under src/: every module's imports, read from its source (function-level ones
too), form a graph without cycles (docs/architecture.md)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tracemortem"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:` (never imported at run time)."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        nodes.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The project modules `path` imports at run time: `from x import y` is an import of the
    module `x.y` when there is one, else of `x`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    return {name: _imports(path, name, set(files)) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "a.x": {"a"}}) is None
    assert _cycle({"pkg": {"pkg.sub"}, "pkg.sub": {"pkg"}}) == ["pkg", "pkg.sub", "pkg"]


def test_no_import_cycles_under_src():
    graph = import_graph()
    assert len(graph) > 50 and "tracemortem.analysis" in graph  # the whole package was read
    assert "tracemortem.load.discover" in graph["tracemortem.analysis"]  # imports were resolved
    cycle = _cycle(graph)
    if cycle:
        pytest.fail("import cycle: " + " → ".join(cycle))


def test_the_analyzer_process_alone_returns_freed_pages():
    # Set for this process as polars loads, and gone from the environment its workers inherit.
    probe = (
        "import os, sys; from tracemortem.allocator import return_freed_pages; return_freed_pages(); "
        "print('polars' in sys.modules, os.environ.get('_RJEM_MALLOC_CONF'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "None"]


def _worker_env(name: str) -> str | None:
    return os.environ.get(name)


@pytest.mark.parametrize("user", [None, "dirty_decay_ms:500"])
def test_workers_run_polars_with_one_arena_and_the_users_options_last(user, monkeypatch):
    from tracemortem.pool import process_pool

    if user is None:
        monkeypatch.delenv("_RJEM_MALLOC_CONF", raising=False)
    else:
        monkeypatch.setenv("_RJEM_MALLOC_CONF", user)
    with process_pool(1) as pool:
        seen = pool.submit(_worker_env, "_RJEM_MALLOC_CONF").result()
    assert seen == ",".join(filter(None, ["narenas:1,tcache:false", user]))
    assert os.environ.get("_RJEM_MALLOC_CONF") == user  # this process keeps its own

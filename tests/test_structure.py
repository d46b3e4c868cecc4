"""The package's shape: no import cycles, and a client process loads no worker-side module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, worker_env

PACKAGE = ROOT / "aiworker"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every aiworker module ``name`` imports, wherever the import statement is (functions and
    TYPE_CHECKING blocks included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in modules else base for t in targets]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` names module a.b.c
                target = target.rpartition(".")[0]
            if target.startswith("aiworker") and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    modules = all_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


WORKER_SIDE = ("aiworker.worker", "aiworker.execution", "prometheus_client")


def test_client_import_loads_no_worker_side_module() -> None:
    code = (
        "import sys, aiworker\n"
        "c = aiworker.Client(port=1)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=worker_env(), capture_output=True, text=True, check=True
    ).stdout.split()
    loaded = [m for m in out if m.startswith(WORKER_SIDE)]
    assert loaded == []
    backends = [
        m for m in out if m.startswith("aiworker.backends.") and m != "aiworker.backends.base"
    ]
    assert backends == []
    assert "aiworker.client" in out  # the check looks at the right process


# Layers (import-linter's "layers" contract, written out): what each package may not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "aiworker.protocol": ("*",),  # the ground floor: nothing else of aiworker
    "aiworker.parser": ("aiworker.backends", "aiworker.storage"),
    "aiworker.storage": ("aiworker.execution", "aiworker.worker"),
    "aiworker.backends": ("aiworker.storage", "aiworker.execution", "aiworker.worker"),
    "aiworker.execution": ("aiworker.worker",),
    # requesters: the worker side is never loaded by a client (see also the import test above)
    "aiworker.client": ("aiworker.worker", "aiworker.execution"),
    "aiworker.asyncio": ("aiworker.worker", "aiworker.execution"),
    "aiworker.gateway": ("aiworker.worker", "aiworker.execution"),
}


def package_of(module: str) -> str:
    """``aiworker.<x>``: the package (or top-level module) a module belongs to."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        mine = package_of(name)
        for target in imports_of(name, path, modules):
            theirs = package_of(target)
            if theirs != mine and theirs != "aiworker":
                graph.setdefault(mine, set()).add(theirs)
    return graph


def test_layers() -> None:
    graph = package_graph()
    broken = []
    for package, forbidden in FORBIDDEN.items():
        for target in sorted(graph.get(package, ())):
            if "*" in forbidden or target in forbidden:
                broken.append(f"{package} -> {target}")
    assert broken == []


def test_no_package_cycles() -> None:
    graph = package_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_every_benchmark_imports() -> None:
    """The benchmarks reach into aiworker's modules: a refactoring that moves a name they use
    must fail here, not on the next benchmark run."""
    names = sorted(f"bench.{p.stem}" for p in (ROOT / "bench").glob("*.py"))
    code = f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=worker_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr

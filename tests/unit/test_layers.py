"""The house's floors, read from the imports: only the storage layer reaches the cluster client, the gateway
never reaches anything that does, and no product module imports its way back to itself.

`make lint` refuses a direct redis import outside common/storage (ruff's banned-api); these follow imports
through our own modules, which a linter of one file at a time can't.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("common", "gateway", "profile_svc", "aggregator_svc", "reporting_svc", "profilemesh_cli", "localdev")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, by full name (`from a import b` counts as a.b when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each product module and the modules it imports, first-party ones and redis (by its top-level name)."""
    files = [path for package in PRODUCT for path in (root / package).rglob("*.py")]
    graph = {module_name(path, root): imports_of(path) for path in files}
    return {
        module: {name for name in imported if name in graph} | ({"redis"} if _uses_redis(imported) else set())
        for module, imported in graph.items()
    }


def _uses_redis(imported: set[str]) -> bool:
    return any(name == "redis" or name.startswith("redis.") for name in imported)


def reached(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        for imported in graph.get(module, set()) - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among product modules (each once, from its smallest member)."""
    found = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            module, path = stack.pop()
            for imported in sorted(graph.get(module, set())):
                if imported == start:
                    found.append(path)
                elif imported > start and imported not in path and imported in graph:
                    stack.append((imported, [*path, imported]))
    return found


GRAPH = import_graph()


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if not m.startswith("common.storage")))
def test_only_the_storage_layer_imports_redis(module: str) -> None:
    assert "redis" not in GRAPH[module], f"{module} imports redis: go through common.storage"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("gateway")))
def test_the_gateway_reaches_nothing_that_talks_to_the_cluster(module: str) -> None:
    through = sorted(m for m in reached(GRAPH, module) if "redis" in GRAPH.get(m, set()) or m == "redis")
    assert not through, f"{module} reaches the cluster client through {through}"


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_a_gateway_import_of_the_storage_layer_is_caught(tmp_path: Path) -> None:
    """The check itself, on a copy of the house where the gateway imports the cluster module."""
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            copy = tmp_path / path.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text())
    (tmp_path / "gateway" / "sneaky.py").write_text("from common.storage.cluster import Cluster\n")
    (tmp_path / "common" / "runtime" / "loop.py").write_text("import common.runtime.cycle\n")
    (tmp_path / "common" / "runtime" / "cycle.py").write_text("import common.runtime.loop\n")
    graph = import_graph(tmp_path)
    assert "common.storage.cluster" in reached(graph, "gateway.sneaky")
    assert "redis" in reached(graph, "gateway.sneaky")
    assert ["common.runtime.cycle", "common.runtime.loop"] in cycles(graph)

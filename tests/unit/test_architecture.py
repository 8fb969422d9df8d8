"""The structure the README's "Architecture" section promises, read from the source.

Imports are read with :mod:`ast` (nothing is executed); imports under ``if TYPE_CHECKING:``
are left out, imports inside functions count. A failure names the offending modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "fleet_server", "firmware_bundles", "protocol", "simulator")
MAX_LINES = 650
ROUTER_DB_CALLS = (
    "session.execute(",
    "session.scalar(",
    "session.scalars(",
    ".commit()",
    "session.get(",
    "select(",
)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = getattr(test, "id", None) or getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for sub in node.body:
                    skipped.update(id(n) for n in ast.walk(sub))
    return skipped


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _type_checking_nodes(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        for name in names:
            resolved = _resolve(name)
            if resolved and resolved != module:
                found.add(resolved)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycles() -> None:
    """Layers import downwards only: a cycle means two modules cannot be read apart."""
    assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a two-module loop added to the graph is reported."""
    GRAPH["protocol.topics"].add("protocol.codec")
    GRAPH["protocol.codec"].add("protocol.topics")
    try:
        assert any({"protocol.codec", "protocol.topics"} <= set(c) for c in _cycles())
    finally:
        GRAPH["protocol.topics"] = _imports("protocol.topics", MODULES["protocol.topics"])
        GRAPH["protocol.codec"] = _imports("protocol.codec", MODULES["protocol.codec"])


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("fleet_server", "agent"),
        ("agent", "fleet_server"),
        ("agent", "simulator"),
        ("protocol", "agent"),
        ("protocol", "fleet_server"),
        ("firmware_bundles", "agent"),
        ("firmware_bundles", "fleet_server"),
    ],
)
def test_layers_do_not_import_upwards_or_across(importer: str, forbidden: str) -> None:
    """The device never loads server code and the server never loads device code."""
    offenders = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == importer
        for target in targets
        if target.split(".")[0] == forbidden
    )
    assert offenders == []


def test_routers_never_touch_the_database() -> None:
    """API routes parse, call one service and shape the answer: services own the database."""
    offenders = {}
    for module, path in MODULES.items():
        if module.startswith("fleet_server.api.routers"):
            source = path.read_text(encoding="utf-8")
            calls = [call for call in ROUTER_DB_CALLS if call in source]
            if calls:
                offenders[module] = calls
    assert offenders == {}


def test_no_module_over_the_size_limit() -> None:
    """Small modules named after what they do (tests and migrations aside)."""
    long = {
        module: n
        for module, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


DRIVER_NAMES = {"apply", "TRANSITIONS", "RESTART_TABLE", "on_restart"}
"""What a second update driver would need from the update flow's tables."""


def test_no_update_driver_in_the_simulator() -> None:
    """Simulated devices run the agent's one update driver (``agent.update_driver``); the
    simulator only supplies simulated back-ends (slots, fetcher, outcomes, timing), so no
    simulator module drives the update flow's tables itself."""
    drivers = []
    for module, path in MODULES.items():
        if not module.startswith("simulator"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "agent.core.update_flow":
                used = DRIVER_NAMES & {alias.name for alias in node.names}
                if used:
                    drivers.append(f"{module}: {sorted(used)}")
    assert drivers == []
    assert "agent.update_driver" in GRAPH["simulator.update_backends"]

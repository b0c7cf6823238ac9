"""The package's architecture: three rooms with the CLI on top, imports only downward, no cycle.

Order, bottom to top: the quantizer library (`rqvae.quantizer`), the trainer (`rqvae.trainer`),
the reading side (`rqvae.reports`), the CLI (`rqvae.cli`). A module may import its own room and
the rooms below it; imports inside functions count, and so do those under `if TYPE_CHECKING:`
(a type-only import back up a floor or around a cycle is still a tangle for the reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rqvae"
ROOMS = ("quantizer", "trainer", "reports", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The rqvae modules a file imports, anywhere in it."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rqvae")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rqvae"):
            for alias in node.names:  # `from rqvae.trainer import config` imports a module
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _room(module: str) -> int | None:
    """The room of a module; the modules directly under rqvae/ (cli, sweep) are the CLI's."""
    parts = module.split(".")
    if len(parts) == 2 and parts[1] not in ROOMS and (PACKAGE / f"{parts[1]}.py").is_file():
        return ROOMS.index("cli")
    return ROOMS.index(parts[1]) if len(parts) > 1 and parts[1] in ROOMS else None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room(m) is not None))
def test_imports_only_its_room_and_rooms_below(module):
    upward = sorted(m for m in GRAPH[module] if (_room(m) or 0) > _room(module))
    assert not upward, f"{module} imports {upward}, from a room above it ({' < '.join(ROOMS)})"


def test_no_import_cycle():
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target in GRAPH and target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_graph_is_read():
    """The checks above see the imports they judge: a known edge is in the graph."""
    assert "rqvae.quantizer.losses" in GRAPH["rqvae.trainer.step"]
    assert "rqvae.trainer.config" in GRAPH["rqvae.reports.runs"]

"""The package's import graph: no cycles, and every import goes down the layer order of docs/architecture.md.

The graph is read with ``ast`` from the source, every import counted (module level and inside functions, since a
function-level import is still a dependency: it only hides a cycle until the function runs).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minisd"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name, for its ``__init__.py``)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (``from a import b`` counts as the
    module ``a.b`` when that is a module, else as ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {target for target in found if target in modules and target != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a set of modules that import
    each other round a loop; a module importing itself is not counted (it cannot)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def documented_layers(text: str) -> dict[str, int]:
    """The layer of each top-level module or sub-package, from the numbered list under "## Layers" in
    docs/architecture.md (``   3. data: data``: layer 3 holds ``minisd.data`` and everything inside it)."""
    section = text.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for number, members in re.findall(r"^\s+(\d+)\. [\w -]+: (.+)$", section, flags=re.M):
        for member in members.split(","):
            layers[member.strip()] = int(number)
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int:
    """``minisd.train.loop`` belongs to the entry ``train``; the package itself to the entry ``minisd``."""
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    if key not in layers:
        raise AssertionError(f"{module}: docs/architecture.md's layer list names no layer for {key!r}")
    return layers[key]


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return sorted(f"{source} (layer {layer_of(source, layers)}) imports {target} (layer {layer_of(target, layers)})"
                  for source, targets in graph.items() for target in targets
                  if layer_of(target, layers) > layer_of(source, layers))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_package_has_no_import_cycles(graph):
    assert cycles(graph) == []


def test_every_import_goes_down_the_documented_layers(graph):
    layers = documented_layers(ARCHITECTURE.read_text())
    assert upward_imports(graph, layers) == []


def test_every_module_has_a_documented_layer(graph):
    layers = documented_layers(ARCHITECTURE.read_text())
    for module in graph:
        layer_of(module, layers)


# The checks themselves, on small packages with a known answer.

def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "pkg"


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from pkg.high import g\n    return g\n",
        "high.py": "from pkg import low\n",
        "alone.py": "import os\n",
    })
    assert cycles(import_graph(package)) == [["pkg.high", "pkg.low"]]


def test_a_relative_import_and_an_import_of_a_module_by_from_are_read(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "",
        "sub/__init__.py": "from .leaf import x\n",
        "sub/leaf.py": "x = 1\n",
        "top.py": "from pkg.sub import leaf\nfrom pkg import sub\n",
    })
    graph = import_graph(package)
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.top"] == {"pkg.sub.leaf", "pkg.sub"}


def test_an_import_up_the_layers_is_reported():
    layers = documented_layers("# x\n\n## Layers\n\n   1. base: errors, data\n   2. top: cli\n\n## Next\n")
    assert layers == {"errors": 1, "data": 1, "cli": 2}
    graph = {"minisd.data.io": {"minisd.cli", "minisd.errors"}, "minisd.cli": {"minisd.data.io"}, "minisd.errors": set()}
    assert upward_imports(graph, layers) == ["minisd.data.io (layer 1) imports minisd.cli (layer 2)"]

"""The project's layers, read from the source with ``ast``: the SDK is the bottom, the CLI the top, no cycles.

    imagegen_cli  ->  imagegen_server (only lazily, for serve/emulator/demo)  ->  imagegen
                  ->  imagegen

Every import counts, including those inside functions and under ``TYPE_CHECKING``:
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Source folder -> the top-level package it holds.
PACKAGES = {"sdk": "imagegen", "server": "imagegen_server", "cli": "imagegen_cli"}
SDK, SERVER, CLI = "imagegen", "imagegen_server", "imagegen_cli"
#: Third-party modules only the server extra installs: the CLI's client commands must not need them.
SERVER_EXTRA = ("aiohttp", "PIL", "prometheus_client", "grpc_reflection", "redis")


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement of a project module."""

    importer: str
    imported: str
    line: int
    #: Executed when the module is imported (not inside a function, not under TYPE_CHECKING).
    eager: bool


def _module_name(path: Path, source_root: Path) -> str:
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        source_root = ROOT / folder
        for path in sorted((source_root / package).rglob("*.py")):
            found[_module_name(path, source_root)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports_of(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, eager: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, eager)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            for alias in node.names:
                # `from pkg import mod` depends on pkg.mod when that is a module of ours, else on pkg.
                candidate = f"{base}.{alias.name}"
                yield Import(module, candidate if candidate in MODULES else base, node.lineno, eager)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, eager=False)
            for child in node.orelse:
                yield from visit(child, eager)
            return
        lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, eager and not lazy)

    yield from visit(tree, eager=True)


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports_of(module, path)]


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _show(imports: list[Import]) -> str:
    return "\n".join(f"  {i.importer} (line {i.line}) imports {i.imported}" for i in imports)


def test_all_three_packages_are_found() -> None:
    tops = {_top(m) for m in MODULES}
    assert tops == {SDK, SERVER, CLI}
    assert {"imagegen.client", "imagegen_server.app", "imagegen_cli.main"} <= MODULES.keys()
    relative = [i for i in IMPORTS if i.importer == "imagegen_server.emulator"]
    assert "imagegen_server.emulator.app" in {i.imported for i in relative}, "relative imports resolve"


def test_the_sdk_imports_neither_the_server_nor_the_cli() -> None:
    bad = [i for i in IMPORTS if _top(i.importer) == SDK and _top(i.imported) in {SERVER, CLI}]
    assert not bad, "the SDK is the bottom layer:\n" + _show(bad)


def test_the_server_never_imports_the_cli() -> None:
    bad = [i for i in IMPORTS if _top(i.importer) == SERVER and _top(i.imported) == CLI]
    assert not bad, "the CLI is the top layer:\n" + _show(bad)


def _eager_closure(start: str) -> set[str]:
    """Every module (ours and third-party) executed by importing ``start``."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        # Importing a.b.c runs a and a.b first.
        parents = [".".join(module.split(".")[:n]) for n in range(1, module.count(".") + 1)]
        todo += [p for p in parents if p in MODULES]
        todo += [i.imported for i in IMPORTS if i.importer == module and i.eager]
    return seen


def test_the_cli_loads_the_server_only_for_serve_emulator_and_demo() -> None:
    loaded = _eager_closure("imagegen_cli.main")
    assert not {m for m in loaded if _top(m) == SERVER}, "imagegen_cli.main must import the server lazily"
    assert not {m for m in loaded if _top(m) in SERVER_EXTRA}
    lazy = sorted({i.imported for i in IMPORTS if i.importer == "imagegen_cli.main" and _top(i.imported) == SERVER})
    assert lazy == ["imagegen_server.cli", "imagegen_server.emulator"]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _project_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.imported in MODULES and i.imported != i.importer:
            edges[i.importer].add(i.imported)
    return edges


@pytest.mark.parametrize("package", [SDK, SERVER, CLI])
def test_no_import_cycle(package: str) -> None:
    cycles = [c for c in _cycles(_project_edges()) if _top(c[0]) == package]
    assert not cycles, "import cycles (each line is one group of modules importing each other):\n" + "\n".join(
        "  " + " <-> ".join(c) for c in cycles
    )

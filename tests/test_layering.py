"""The package's layers, as docs/architecture.md declares them: no module imports from a layer above its
own, no import cycles, no file over 400 lines, no docstring that points outside the repository.

The order is read from the ``layers`` block of docs/architecture.md, so the document and the code cannot
drift apart. Every import counts, also those inside functions (a lazy import is still a dependency), except
those under ``if TYPE_CHECKING:`` (annotations only, never executed).
"""

from __future__ import annotations

import ast
import os
import re
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "batchllm")
ARCHITECTURE = os.path.join(ROOT, "docs", "architecture.md")
MAX_LINES = 400


def declared_layers(text: str) -> list[list[str]]:
    """The ``layers`` block of the document: one layer a line, bottom first; names of packages/modules."""
    match = re.search(r"```layers\n(.*?)```", text, re.S)
    if match is None:
        raise AssertionError("docs/architecture.md has no ```layers block")
    return [line.split("#")[0].split() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def layer_index(layers: list[list[str]]) -> dict[str, int]:
    index = {}
    for level, names in enumerate(layers):
        for name in names:
            assert name not in index, f"{name} is declared in two layers"
            index[name] = level
    return index


def unit_of(module: str) -> str:
    """The layer unit of a dotted module name: its package under batchllm, or the top-level module's name."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_of(module: str, source: str, is_package: bool = False) -> set[str]:
    """Dotted names of the batchllm modules (or packages) that ``source`` imports."""
    tree = ast.parse(source)
    skipped = _type_checking_blocks(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "batchllm" or name.startswith("batchllm.")}


def package_modules(root: str = PACKAGE) -> dict[str, tuple[str, bool]]:
    """module name -> (source, is_package) for every .py file under the package."""
    modules = {}
    for folder, _, files in os.walk(root):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            rel = os.path.relpath(path, os.path.dirname(root))[:-3].replace(os.sep, ".")
            is_package = rel.endswith(".__init__")
            name = rel[: -len(".__init__")] if is_package else rel
            with open(path, encoding="utf-8") as f:
                modules[name] = (f.read(), is_package)
    return modules


def upward_imports(modules: dict[str, tuple[str, bool]], layers: list[list[str]]) -> list[str]:
    index = layer_index(layers)
    problems = []
    for module, (source, is_package) in sorted(modules.items()):
        unit = unit_of(module)
        if unit not in index:
            problems.append(f"{module}: its layer {unit!r} is not declared in docs/architecture.md")
            continue
        for target in sorted(imports_of(module, source, is_package)):
            if target not in modules:
                continue  # a name imported from a module (from x import Name): x is checked
            target_unit = unit_of(target)
            if target_unit != unit and index.get(target_unit, -1) > index[unit]:
                problems.append(f"{module} (layer {unit}) imports {target} (layer {target_unit}, above)")
    return problems


def import_cycles(modules: dict[str, tuple[str, bool]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), in the module import graph."""
    graph = {m: sorted(t for t in imports_of(m, src, pkg) if t in modules and t != m)
             for m, (src, pkg) in modules.items()}
    index_of, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index_of[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index_of:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index_of[nxt])
        if low[node] == index_of[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index_of:
            visit(node)
    return cycles


def long_files(root: str = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    out = []
    for folder, _, files in os.walk(root):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                with open(path, encoding="utf-8") as f:
                    n = sum(1 for _ in f)
                if n > limit:
                    out.append(f"{os.path.relpath(path, ROOT)}: {n} lines")
    return out


def outside_references(modules: dict[str, tuple[str, bool]]) -> list[str]:
    pattern = re.compile(r"DESIGN\.md|BatchLLM section|\.\./shared")
    return [m for m, (src, _) in sorted(modules.items()) if pattern.search(src)]


# ----------------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def layers() -> list[list[str]]:
    with open(ARCHITECTURE, encoding="utf-8") as f:
        return declared_layers(f.read())


def test_no_module_imports_from_a_layer_above_its_own(layers):
    assert upward_imports(package_modules(), layers) == []


def test_no_import_cycles():
    assert import_cycles(package_modules()) == []


def test_no_file_over_400_lines():
    assert long_files() == []


def test_no_docstring_points_outside_the_repository():
    assert outside_references(package_modules()) == []


def test_every_declared_layer_exists(layers):
    units = {unit_of(m) for m in package_modules()}
    assert [name for level in layers for name in level if name not in units] == []


# A deliberately bad package: the checks above must reject it, or they could not fail.
BAD_PACKAGE = {
    "batchllm": ("", True),
    "batchllm.core.request": ("from batchllm.scheduler.groups import Group\n", False),  # upward
    "batchllm.scheduler.groups": ("from batchllm.core.request import Request\n", False),  # back down: a cycle
    "batchllm.runner.inputs": ("def f():\n    from batchllm.engine import step  # lazy, still upward\n", False),
    "batchllm.engine": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from batchllm.llm import LLM\n",
                        True),  # annotation-only: allowed
    "batchllm.llm": ("", False),
    "batchllm.extra.thing": ("from ..core import request\n", False),  # an undeclared layer
}
BAD_LAYERS = [["core"], ["scheduler"], ["runner"], ["engine"], ["llm", "__init__"]]


def test_the_checks_reject_a_deliberately_bad_package():
    problems = upward_imports(BAD_PACKAGE, BAD_LAYERS)
    assert problems == [
        "batchllm.core.request (layer core) imports batchllm.scheduler.groups (layer scheduler, above)",
        "batchllm.extra.thing: its layer 'extra' is not declared in docs/architecture.md",
        "batchllm.runner.inputs (layer runner) imports batchllm.engine (layer engine, above)",
    ]
    assert import_cycles(BAD_PACKAGE) == [["batchllm.core.request", "batchllm.scheduler.groups"]]
    assert outside_references({"m": ('"""See DESIGN.md section 2."""', False)}) == ["m"]

"""The shape of the library, computed from its source: the import graph has no cycle, the lab sits on top of
the library (only the command line imports it), imports sit at module top unless the module is optional, and
no file or function outgrows what a reader takes in at once."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "cmitm_lib"
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 80
IMPORT_NAMES = {"scikit-learn": "sklearn", "pillow": "PIL"}  # distribution name -> import name, where they differ


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def imported_modules(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> list[str]:
    """The modules an import statement of module ``name`` loads (``from pkg import sub`` names pkg.sub)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def parsed():
    for name, path in MODULES.items():
        yield name, path, ast.parse(path.read_text(), filename=str(path))


def import_graph() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for name, path, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= {m for m in imported_modules(node, name, path.name == "__init__.py")
                                if m in MODULES and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first == last), or None."""
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        state[v] = "done"
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


def required_imports() -> set[str]:
    """Import names of the dependencies every install has (pyproject's [project].dependencies)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].strip().lower() for d in deps}
    return {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names}


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_command_line_imports_the_lab():
    lab = {m for m in MODULES if m.startswith("cmitm_lib.lab")}
    graph = import_graph()
    offenders = {m: sorted(graph[m] & lab) for m in MODULES
                 if m not in lab and m != "cmitm_lib.cli" and graph[m] & lab}
    assert not offenders, f"library modules importing the lab: {offenders}"


def test_imports_inside_functions_are_of_optional_modules_only():
    allowed_at_top_only = required_imports() | set(sys.stdlib_module_names) | {"cmitm_lib"}
    found = []
    for name, path, tree in parsed():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    top = "cmitm_lib" if getattr(node, "level", 0) else \
                        imported_modules(node, name, path.name == "__init__.py")[0].split(".")[0]
                    if top in allowed_at_top_only:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} in {fn.name}()")
    assert not found, "imports of required modules inside functions (move them to the module top): " + ", ".join(found)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_and_functions_stay_short(name):
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_FILE_LINES})"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"

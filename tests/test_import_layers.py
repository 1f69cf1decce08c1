"""The package imports in one direction: a module imports only what sits below it, never in a circle.

Imports are read with `ast` from every module under deploysparse/, at any depth in the module
(a function-level import is still a dependency); imports under `if TYPE_CHECKING:` are annotations
only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import deploysparse

PACKAGE = Path(deploysparse.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str], package: str) -> set[str]:
    """deploysparse modules that `tree` imports (a `from a import b` of a submodule counts as a.b)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif base in modules:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = _imports(ast.parse(path.read_text(encoding="utf-8")), modules, package)
        # A module importing its own package's __init__ (or a parent package) is not a layer edge.
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = dfs(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_find_cycle_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert "deploysparse.graph.rules" in graph and graph["deploysparse.graph.analysis"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_graph_layer_does_not_import_what_sits_above_it() -> None:
    above = ("deploysparse.criteria", "deploysparse.budget", "deploysparse.api", "deploysparse.cli")
    for name, deps in import_graph().items():
        if name.startswith("deploysparse.graph"):
            assert not [d for d in deps if d.startswith(above)], name


RUNTIMES = ("onnxruntime", "tensorrt", "polygraphy")  # the runtimes only deploysparse/backends/ may load


def runtime_imports(tree: ast.AST) -> set[str]:
    """The runtimes `tree` imports: `import x`, `from x... import y` and `importlib.import_module("x...")`,
    at any depth (a function-level import loads the runtime all the same)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in RUNTIMES)
    return found


def test_runtime_imports_are_found() -> None:
    source = (
        "import os\nimport onnxruntime as ort\ndef f():\n    from tensorrt import Builder\n"
        "    import importlib\n    importlib.import_module('polygraphy.backend.trt')\n"
        "from deploysparse.backends import onnxruntime\n"
    )
    assert runtime_imports(ast.parse(source)) == {"onnxruntime", "tensorrt", "polygraphy"}


def test_only_the_backends_package_imports_a_runtime() -> None:
    """deploysparse/backends/ is the only code that opens a runtime session (docs/design.md)."""
    backends = PACKAGE / "backends"
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(found)
        for path in PACKAGE.rglob("*.py")
        if not path.is_relative_to(backends)
        and (found := runtime_imports(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert not offenders, f"runtimes imported outside deploysparse/backends/: {offenders}"
    assert any(runtime_imports(ast.parse(p.read_text(encoding="utf-8"))) for p in backends.rglob("*.py"))

"""The package's import graph, read from the source with `ast` (nothing is imported).

No cycles: every import of one of alexnet's modules is an edge, wherever it is written (at module level, under
TYPE_CHECKING, inside a function): an import moved into a function still ties the two modules together; it
only hides the cycle until a call runs it.

Imports inside functions say why: one of an optional or heavy third-party package (OPTIONAL_ROOTS) needs no
word; any other (the standard library, a core dependency, alexnet's own modules) carries a `# lazy: <reason>`
comment on its line or on the line above. That comment also covers the imports written right below it, one
per line with no blank line between (a group imported for one reason).
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections import deque
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "alexnet"

# Third-party packages a function may import without a comment: optional extras (export, serve, tensorboard, the
# config file formats) and heavy imports that one feature alone needs (matplotlib: the lr-find plot).
OPTIONAL_ROOTS = (
    "onnx", "onnxscript", "onnxruntime",  # export
    "fastapi", "uvicorn", "multipart", "starlette",  # serve
    "torch.utils.tensorboard", "tensorboard",  # --tensorboard
    "yaml", "tomli",  # --config FILE.yaml; TOML on Python 3.10
    "matplotlib", "optuna", "selenium",
)
LAZY_COMMENT = re.compile(r"#.*\blazy:\s*\S")


# ---------------------------------------------------------------------------------------------- the graph
def package_modules(src: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of `package` under `src` (a package's is its __init__.py)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
                     modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that an import statement in `module` names.

    `import a.b.c`: the deepest of a.b.c, a.b, a that is a module. `from X import y`: X.y when that is a module
    (a submodule), else X itself (its __init__ for a package). Relative imports resolve against `module`'s
    package; other modules (the standard library, third parties) are left out."""
    if isinstance(node, ast.Import):
        found = set()
        for alias in node.names:
            parts = alias.name.split(".")
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in modules:
                    found.add(".".join(parts[:n]))
                    break
        return found
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level - 1 > len(base) - 1:
            return set()  # beyond the top-level package: not ours
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    found = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        if alias.name != "*" and sub in modules:
            found.add(sub)
        elif source in modules:
            found.add(source)
    return found


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, counting every import statement in the file."""
    modules = package_modules(src, package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= imported_modules(node, module, is_package, modules)
        edges.discard(module)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return sorted(components)


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """The shortest cycle inside a strongly connected component, as [a, b, ..., a] (the first by name on ties)."""
    members = set(component)
    best: list[str] | None = None
    for start in component:
        parent = {start: start}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if best is not None and len(best) - 1 <= len(path_to(parent, node)):
                break  # no shorter cycle through `start`
            for target in sorted(graph[node] & members):
                if target == start:
                    cycle = path_to(parent, node) + [start]
                    if best is None or len(cycle) < len(best):
                        best = cycle
                    queue.clear()
                    break
                if target not in parent:
                    parent[target] = node
                    queue.append(target)
    assert best is not None
    return best


def path_to(parent: dict[str, str], node: str) -> list[str]:
    path = [node]
    while parent[path[-1]] != path[-1]:
        path.append(parent[path[-1]])
    return path[::-1]


def find_cycles(src: Path, package: str) -> list[str]:
    """One line per strongly connected component: its shortest cycle, then the modules caught in it."""
    graph = import_graph(src, package)
    lines = []
    for component in strongly_connected(graph):
        cycle = " -> ".join(shortest_cycle(graph, component))
        lines.append(cycle if len(component) == 2 else f"{cycle}  (with {', '.join(component)})")
    return lines


# ---------------------------------------------------------------------------------------------- lazy imports
def function_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements inside a function body, at any depth."""
    def visit(node: ast.AST, in_function: bool) -> Iterator[ast.Import | ast.ImportFrom]:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            yield from visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    yield from visit(tree, False)


def is_optional(node: ast.Import | ast.ImportFrom, package: str) -> bool:
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return False
        names = [node.module or ""]
    else:
        names = [alias.name for alias in node.names]
    return all(name.split(".")[0] != package and any(name == root or name.startswith(root + ".")
                                                     for root in OPTIONAL_ROOTS) for name in names)


def unexplained_imports(src: Path, package: str) -> list[str]:
    """`file:line: statement` for each import inside a function that is not optional and gives no reason."""
    found = []
    for path in package_modules(src, package).values():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text, str(path))
        starts = {}  # an import statement's last line -> its first line, to walk up a group
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                starts[node.end_lineno] = node.lineno
        for node in function_imports(tree):
            if not is_optional(node, package) and not explained(node, lines, starts):
                found.append(f"{path.relative_to(src.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def explained(node: ast.stmt, lines: list[str], starts: dict[int, int]) -> bool:
    """A `# lazy:` comment on the statement's lines, in the comment lines right above it, or on (or above) the
    imports right above it that it is grouped with."""
    first, last = node.lineno, node.end_lineno or node.lineno
    while True:
        if any(LAZY_COMMENT.search(line) for line in lines[first - 1:last]):
            return True
        above = first - 1  # 1-based: the line right above the statement
        while above >= 1 and lines[above - 1].strip().startswith("#"):
            if LAZY_COMMENT.search(lines[above - 1]):
                return True
            above -= 1
        if above != first - 1 or above not in starts:
            return False
        first, last = starts[above], above  # the import right above, of the same group


# ---------------------------------------------------------------------------------------------- the tests
def test_the_package_has_no_import_cycles():
    cycles = find_cycles(SRC, PACKAGE)
    assert not cycles, ("import cycles (imports inside functions and under TYPE_CHECKING count):\n  "
                        + "\n  ".join(cycles))


def test_imports_inside_functions_say_why():
    found = unexplained_imports(SRC, PACKAGE)
    assert not found, (f"imports inside a function with no `# lazy: <reason>` comment (on the line or the line above; "
                       f"third parties allowed without one: {', '.join(OPTIONAL_ROOTS)}):\n  " + "\n  ".join(found))


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_cycle_finder_sees_cycles_in_functions_type_checking_and_package_inits(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": """
            from .version import __version__

            def __getattr__(name):
                from . import api
                return getattr(api, name)
            """,
        "pkg/version.py": "__version__ = '1'\n",
        "pkg/api.py": "from .engine import fine\n",
        "pkg/engine/__init__.py": "",
        "pkg/engine/trainer.py": "from .callbacks import Callback\n",
        "pkg/engine/callbacks.py": """
            from typing import TYPE_CHECKING

            if TYPE_CHECKING:
                from .trainer import Run

            class Callback:
                pass
            """,
        "pkg/engine/device.py": """
            import os

            def info():
                from .. import __version__
                return __version__
            """,
        "pkg/engine/fine.py": "from ..version import __version__\nimport pkg.engine.device\n",
    })
    graph = import_graph(src, "pkg")
    assert graph["pkg"] == {"pkg.version", "pkg.api"}
    assert graph["pkg.api"] == {"pkg.engine.fine"}
    assert graph["pkg.engine.device"] == {"pkg"}
    assert graph["pkg.engine.fine"] == {"pkg.version", "pkg.engine.device"}
    assert find_cycles(src, "pkg") == [
        "pkg -> pkg.api -> pkg.engine.fine -> pkg.engine.device -> pkg  "
        "(with pkg, pkg.api, pkg.engine.device, pkg.engine.fine)",
        "pkg.engine.callbacks -> pkg.engine.trainer -> pkg.engine.callbacks",
    ]

    (src / "pkg/engine/callbacks.py").write_text("class Callback:\n    pass\n")
    (src / "pkg/engine/device.py").write_text("from ..version import __version__\n")
    assert find_cycles(src, "pkg") == []


def test_the_lazy_import_check_names_unexplained_imports(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": """
            import json

            def f():
                import onnxruntime
                from torch.utils.tensorboard import SummaryWriter
                import torch.utils.data
                from . import b
                # lazy: a reason
                from . import c
                from .c import d

                from .c import e
                import yaml, csv
                import csv  # lazy: a reason on the line
            """,
    })
    assert unexplained_imports(src, "pkg") == [
        f"{Path(tmp_path.name) / 'pkg/a.py'}:7: import torch.utils.data",
        f"{Path(tmp_path.name) / 'pkg/a.py'}:8: from . import b",
        f"{Path(tmp_path.name) / 'pkg/a.py'}:13: from .c import e",
        f"{Path(tmp_path.name) / 'pkg/a.py'}:14: import yaml, csv",
    ]

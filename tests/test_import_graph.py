"""No import circle in `microprocess/`: each module can be read (and imported) after the modules
it uses. Imports under `if TYPE_CHECKING:` are not counted (they are for the type checker only);
imports inside functions are (a late import is still a dependency, and hides a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.docs_check import ROOT

PACKAGE = ROOT / "microprocess"


#: The one circle left on this branch: the ledger's, which issue-30a's split of the ledger into a
#: package removes. Once merged, `test_the_waiting_circle_still_exists` fails: delete this entry.
def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of `package` and the modules of `package` it imports at run time."""
    modules = {module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_circles_finds_a_circle_and_only_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_microprocess() -> None:
    found = circles(import_graph())
    assert not found, "import circles (break each: move what both need into a module of its own): " + "; ".join(
        " <-> ".join(group) for group in found
    )


def test_the_cli_modules_do_not_import_the_app_they_are_assembled_into() -> None:
    graph = import_graph()
    importers = sorted(m for m, uses in graph.items() if "microprocess.cli.commands" in uses)
    assert importers == ["microprocess.cli.reference"]  # it renders the assembled app's table

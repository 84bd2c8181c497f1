"""The hub's packages depend on each other in one direction only, and the product never
loads the simulator except when one of its commands runs.

The graph is read from the source (every import statement, at any depth, including those
only for type checking), so an arrow cannot hide behind a late import.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("hub", "alerts", "devices")


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Every module `path` imports, and whether the import sits at the module's top level."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks count as top level
        if isinstance(node, ast.If | ast.Try):
            top.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, id(node) in top))
            out += [(f"{node.module}.{alias.name}", id(node) in top) for alias in node.names]
    return out


def _component(module: str) -> str:
    """The unit of the graph: a package under hub/ (hub.alarms), else the module itself."""
    parts = module.split(".")
    if parts[0] == "hub" and len(parts) >= 2:
        candidate = ROOT / "hub" / parts[1]
        if candidate.is_dir():
            return f"hub.{parts[1]}"
    return module


def _graph() -> dict[str, set[str]]:
    hub_modules = _modules("hub")
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in hub_modules.items():
        src = _component(name)
        graph[src]  # every component is a node, even one that imports nothing
        for target, _top in _imports(path):
            if target in hub_modules:
                dst = _component(target)
                if dst != src:
                    graph[src].add(dst)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_hubs_packages_import_each_other_in_one_direction_only():
    graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import circles between the hub's packages:\n" + "\n".join(
        " ⇄ ".join(c)
        + "\n    "
        + "\n    ".join(f"{a} → {b}" for a in c for b in sorted(graph[a]) if b in c)
        for c in cycles
    )
    # The wiring depends on the web, never the other way round.
    assert "hub.app" not in graph["hub.web"], "hub.web imports hub.app: routes reach into the Hub"


def test_the_domain_packages_are_the_ones_the_architecture_page_names():
    packages = sorted(p.name for p in (ROOT / "hub").iterdir() if (p / "__init__.py").exists())
    page = (ROOT / "docs" / "architecture.md").read_text()
    for name in packages:
        assert f" {name}/ " in page, f"docs/architecture.md does not describe hub/{name}/"
        doc = ast.get_docstring(ast.parse((ROOT / "hub" / name / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 12, f"hub/{name}/__init__.py says what it owns"


def test_the_product_loads_the_simulator_only_inside_a_command():
    for package in PRODUCT:
        for name, path in _modules(package).items():
            for target, top in _imports(path):
                if target.split(".")[0] in ("simulator", "tests"):
                    assert not top, f"{name} imports {target} when it is loaded"
                    assert name.endswith("cli"), f"{name} imports {target} outside a command"


def test_the_alarm_path_crosses_at_most_eight_files():
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("## The path of an alarm", 1)[1].split("\n## ", 1)[0]
    files = [
        line.split("`")[1]
        for line in section.splitlines()
        if line.startswith(("1", "2", "3", "4", "5", "6", "7", "8", "9")) and "`" in line
    ]
    assert 2 <= len(files) <= 8, files
    for f in files:
        assert (ROOT / f).is_file(), f"docs/architecture.md names {f}, which does not exist"

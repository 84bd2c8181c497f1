"""The web layer gets the hub's parts as typed dependencies, never the hub that wires them.

`hub/app.py` imports `hub.web`; were any web module to import `hub.app` (even only for
type checking), the two would import each other in a circle and `Hub` would again be a
service locator the routes reach into.
"""

from __future__ import annotations

import ast
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "hub" / "web"


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, wherever in the file the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from hub import app` imports the module hub.app as well.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_web_module_imports_the_wiring():
    sources = sorted(WEB.rglob("*.py"))
    assert len(sources) > 10, "the web package was not found where expected"
    offenders = {
        str(path.relative_to(WEB.parent.parent)): sorted(
            m for m in imported_modules(path) if m == "hub.app" or m.startswith("hub.app.")
        )
        for path in sources
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_the_check_sees_an_import_of_the_wiring(tmp_path: Path):
    """The check above would notice the import it forbids, in each of its spellings."""
    for line in (
        "from hub.app import Hub",
        "import hub.app",
        "from hub import app",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hub.app import Hub",
    ):
        module = tmp_path / "module.py"
        module.write_text(line + "\n", encoding="utf-8")
        assert "hub.app" in imported_modules(module), line

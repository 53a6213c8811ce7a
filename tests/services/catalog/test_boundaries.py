"""The catalog service is written as a separate team would: no module of it imports the
monolith, another service or the proxy (the toolkit's `datasync` is allowed)."""

from __future__ import annotations

import ast
from pathlib import Path

import services.catalog

FORBIDDEN = ("legacy_monolith", "services.payment", "proxy")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_imports_the_monolith_or_another_service() -> None:
    root = Path(services.catalog.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 10
    bad = [
        (str(path.relative_to(root)), name)
        for path in modules
        for name in imported(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert bad == []

"""Who may import whom: factory is the library, downstream uses it, demo drives both; inside
factory, shards uses data (the member format, samples), never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(folder: Path) -> set[str]:
    """Every module imported anywhere in ``folder``'s files, lazy imports inside functions too."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("factory", ("downstream", "demo")),
        ("downstream", ("demo",)),
        ("factory/data", ("factory.shards",)),
    ],
)
def test_package_does_not_import(package, forbidden):
    bad = sorted(
        m for m in imported_modules(REPO / package) if any(m == f or m.startswith(f + ".") for f in forbidden)
    )
    assert not bad, f"{package}/ imports {bad}"

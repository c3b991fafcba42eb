"""README's layout table lists every Python package of the tree once, and names every
module of the packages this checks file by file (issue 13: a newcomer reads the tree
from that table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("runtime", "gateway", "knative")


def layout_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout") :]
    rows: dict[str, list[str]] = {}
    for line in table.splitlines():
        match = re.match(r"\| `([^`]+)` \| (.*) \|$", line)
        if match:
            rows.setdefault(match.group(1), []).append(match.group(2))
    return rows


def packages() -> list[str]:
    return sorted(
        f"{p.parent.relative_to(ROOT)}/" for top in TOP for p in (ROOT / top).rglob("__init__.py")
    )


def test_every_package_has_exactly_one_row() -> None:
    rows = layout_rows()
    for package in packages():
        assert len(rows.get(package, [])) == 1, f"{package}: {len(rows.get(package, []))} rows"


def test_no_row_names_a_package_that_is_not_there() -> None:
    for path in layout_rows():
        if path.startswith(TOP):
            assert (ROOT / path).exists(), path


@pytest.mark.parametrize("package", packages())
def test_each_row_names_its_packages_modules(package: str) -> None:
    (row,) = layout_rows()[package]
    for module in sorted((ROOT / package).glob("*.py")):
        if module.name != "__init__.py":
            assert f"`{module.name}`" in row, f"{package}{module.name} is not in its row"

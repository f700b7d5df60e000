"""The root `dev` group is the developer's one environment: it holds every package and whatever
any package's `test` group adds, so each package's tests also run outside nox."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(ROOT.glob("packages/*/pyproject.toml"))


def names(requirements: list) -> set[str]:
    """Normalised project names of a dependency group's requirements (include-group tables are
    not requirements and are passed over)."""
    found = set()
    for r in requirements:
        if isinstance(r, str):
            name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip())
            assert name, f"unreadable requirement {r!r}"
            found.add(re.sub(r"[-_.]+", "-", name.group()).lower())
    return found


def groups(pyproject: Path) -> dict[str, list]:
    return tomllib.loads(pyproject.read_text()).get("dependency-groups", {})


def test_every_member_is_found():
    assert len(MEMBERS) >= 6


@pytest.mark.parametrize("pyproject", MEMBERS, ids=lambda p: p.parent.name)
def test_dev_group_holds_the_package_and_its_test_group(pyproject):
    dev = names(groups(ROOT / "pyproject.toml")["dev"])
    name = tomllib.loads(pyproject.read_text())["project"]["name"]
    missing = ({name} | names(groups(pyproject).get("test", []))) - dev
    assert not missing, f"{pyproject.relative_to(ROOT)}: the root dev group lacks {sorted(missing)}"

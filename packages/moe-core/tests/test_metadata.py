"""What the README says moe-core depends on is what its metadata declares."""

import re
from importlib.metadata import requires
from pathlib import Path


def test_readme_names_exactly_the_declared_dependencies():
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    said = re.search(r"Depends on (.+?) only", readme)
    assert said, "the README says what moe-core depends on"
    named = set(re.findall(r"[A-Za-z0-9][\w.-]*", said.group(1))) - {"and"}
    declared = {
        re.match(r"[A-Za-z0-9][\w.-]*", spec).group(0)
        for spec in requires("moe-core")
        if "extra ==" not in spec
    }
    assert named == declared

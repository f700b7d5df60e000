"""Test sessions: one per package in an environment holding only what that package declares,
one with every package for the root integration tests, the layering contract, lint, the type
checker, and the packages as they would be published (built without workspace sources, metadata
checked)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True

PACKAGES = ["moe-core", "moe-profiles", "moe-runtime", "moe-server", "moe-cli"]


def _sync(session: nox.Session, *args: str) -> None:
    """Install into the session's own environment from the workspace lock file."""
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--no-default-groups",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


@nox.session(python="3.11")
@nox.parametrize("package", PACKAGES, ids=[p.removeprefix("moe-") for p in PACKAGES])
def package(session: nox.Session, package: str) -> None:
    """A package's own tests, with only that package, its declared dependencies and test group."""
    _sync(session, "--package", package, "--group", "test")
    session.run("pytest", f"packages/{package}/tests", *session.posargs)


@nox.session(python="3.11")
def integration(session: nox.Session) -> None:
    """Root tests, with every package installed."""
    _sync(session, "--all-packages", "--group", "dev")
    session.run("pytest", "tests", *session.posargs)


@nox.session(python="3.11")
def layers(session: nox.Session) -> None:
    """The layering contract: cli > server > runtime > profiles > core, no web/CLI frameworks below."""
    _sync(session, "--all-packages", "--group", "dev")
    session.run("lint-imports")


@nox.session(python="3.11")
def types(session: nox.Session) -> None:
    """mypy over every package's source (`[tool.mypy]` in pyproject.toml), with all installed."""
    _sync(session, "--all-packages", "--group", "dev")
    session.run("mypy")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def dist(session: nox.Session) -> None:
    """Each published package builds on its own, without workspace sources; its metadata passes
    `twine check --strict`; its siblings are pinned to the same version (`moe-core==X`)."""
    session.install("twine>=6.1")
    out = Path(session.create_tmp()) / "dist"
    for old in out.glob("*"):
        old.unlink()  # a dist of an earlier run would be checked as if built now
    for package in PACKAGES:
        session.run(
            "uv", "build", "--no-sources", "--quiet", "--out-dir", str(out),
            f"packages/{package}", external=True,
        )  # fmt: skip
    dists = sorted(str(p) for p in (*out.glob("*.whl"), *out.glob("*.tar.gz")))
    session.run("twine", "check", "--strict", *dists)
    for wheel in sorted(out.glob("*.whl")):
        _check_pins(session, wheel)


def _check_pins(session: nox.Session, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = z.read(name).decode()
    version = re.search(r"^Version: (\S+)$", metadata, re.M).group(1)
    for requirement in re.findall(r"^Requires-Dist: (moe-[\w-]+.*)$", metadata, re.M):
        if not re.fullmatch(rf"moe-[\w-]+\s*==\s*{re.escape(version)}", requirement):
            session.error(f"{wheel.name}: {requirement!r} is not pinned to =={version}")

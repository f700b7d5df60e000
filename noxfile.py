"""Test sessions: one per package in an environment holding only what that package declares,
one with every package for the root integration tests, the layering contract, and lint."""

from __future__ import annotations

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
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")

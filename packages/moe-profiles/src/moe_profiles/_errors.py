"""Errors of moe-profiles: each names the file or field at fault."""

from __future__ import annotations

from moe_core import MoEError


class ProfileError(MoEError):
    """A profile that cannot be used: wrong model, wrong version, corrupt or incomplete file."""


class TraceError(MoEError):
    """A routing trace that cannot be used: corrupt file, inconsistent shapes, unknown layer."""

"""`verify(model)`: check a checkpoint's files against the hashes recorded when it was downloaded,
its safetensors headers against the files, and its packed experts against their checksums.

The Hugging Face cache names each file's blob by its hash (`blobs/<sha256>` for LFS files such as
shards, `blobs/<git blob sha1>` for small ones), and `hf download --local-dir` keeps the same hash
as the etag in `.cache/huggingface/download/<file>.metadata`: nothing else needs to be fetched.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import moe_core

from ._resolve import resolve_model

_HEX = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
_CHUNK = 8 << 20


@dataclass(frozen=True, slots=True)
class FileCheck:
    """What `verify` found for one file: `ok`, `bad` (`detail` says why) or `unchecked` (no hash
    was recorded for it)."""

    file: Path
    status: str
    detail: str = ""


def verify(
    model: str | Path | None, *, progress: Callable[[int, int], None] | None = None
) -> list[FileCheck]:
    """Check every file of a model (a directory, a Hub name already downloaded, or the demo);
    `progress(done_bytes, total_bytes)` is called as files are read."""
    _, path = resolve_model(model)
    files = sorted(
        f for f in path.rglob("*") if f.is_file() and ".cache" not in f.relative_to(path).parts
    )
    pack = path / moe_core.PACK_NAME
    hashes = {f: recorded_hash(path, f) for f in files if f != pack}
    total = sum(f.stat().st_size for f, h in hashes.items() if h) + (
        pack.stat().st_size if pack.is_file() else 0
    )
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    checks = []
    for file, expected in hashes.items():
        if expected is None:
            checks.append(FileCheck(file, "unchecked", "no hash recorded for it"))
            continue
        got = file_hash(file, len(expected), advance)
        if got == expected:
            checks.append(FileCheck(file, "ok", f"{'sha256' if len(expected) == 64 else 'sha1'}"))
        else:
            checks.append(
                FileCheck(file, "bad", f"hash {got[:12]}..., recorded {expected[:12]}...")
            )
    checks = _headers(path, checks)
    if pack.is_file():
        checks.append(_pack(path, pack, advance))
    return checks


def recorded_hash(root: Path, file: Path) -> str | None:
    """The hash the Hugging Face cache or a `--local-dir` download recorded for `file`."""
    if file.is_symlink():
        target = Path(os.path.realpath(file))
        if target.parent.name == "blobs" and _HEX.match(target.name):
            return target.name
    metadata = root / ".cache" / "huggingface" / "download" / f"{file.relative_to(root)}.metadata"
    if metadata.is_file():
        lines = metadata.read_text().splitlines()
        etag = lines[1].strip().strip('"') if len(lines) > 1 else ""
        if _HEX.match(etag):
            return etag
    return None


def file_hash(file: Path, width: int, advance: Callable[[int], None]) -> str:
    """sha256 (64 hex digits) or git's blob sha1 (40), as the Hub names blobs."""
    size = file.stat().st_size
    digest = hashlib.sha256() if width == 64 else hashlib.sha1(f"blob {size}\0".encode())
    with open(file, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def _headers(path: Path, checks: list[FileCheck]) -> list[FileCheck]:
    """Every shard's safetensors header against its file (dtype, shape and size of each tensor)."""
    try:
        moe_core.fingerprint(path)
    except moe_core.CheckpointError as e:
        text = str(e)
        named = [c for c in checks if text.startswith(f"{c.file}:")]
        if named:
            return [
                FileCheck(c.file, "bad", text.split(": ", 1)[1]) if c in named else c
                for c in checks
            ]
        return [*checks, FileCheck(path, "bad", text)]
    return [
        FileCheck(c.file, c.status, f"{c.detail}; its header matches the file")
        if c.status == "unchecked" and c.file.suffix == ".safetensors"
        else c
        for c in checks
    ]


def _pack(path: Path, pack: Path, advance: Callable[[int], None]) -> FileCheck:
    try:
        bad = moe_core.verify_pack(pack, moe_core.fingerprint(path), progress=advance)
    except moe_core.CheckpointError as e:
        return FileCheck(pack, "bad", str(e).removeprefix(f"{pack}: "))
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        return FileCheck(pack, "bad", bad[0].removeprefix(f"{pack}: ") + more)
    return FileCheck(pack, "ok", "every record's CRC-32C")

"""Memory sizes as people write them (`16GB`, `512MiB`) or as byte counts."""

from __future__ import annotations


def parse_size(text: str | int) -> int:
    """Bytes from `12GB`, `512MiB`, `1.5G` or a plain number."""
    if isinstance(text, int):
        return text
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
             "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}  # fmt: skip
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("kmgtib")
    unit = s[len(number) :]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"not a memory size: {text!r} (try e.g. 12GB or 512MiB)") from None
    if value <= 0:
        raise ValueError(f"memory size must be positive: {text!r}")
    return int(value)


def format_size(n: int | float) -> str:
    """`1.23 GB` from a gigabyte up, `12.3 MB` below."""
    return format_sizes(n)[0]


def format_sizes(*values: int | float) -> list[str]:
    """Byte counts shown in one message, all in the unit of the largest, so no line mixes units."""
    scale, unit, digits = (1e9, "GB", 2) if max(values) >= 1e9 else (1e6, "MB", 1)
    return [f"{v / scale:.{digits}f} {unit}" for v in values]

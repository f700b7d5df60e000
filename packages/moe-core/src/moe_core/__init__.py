"""moe-core."""

__all__: list[str] = []

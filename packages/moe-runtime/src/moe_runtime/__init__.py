"""moe-runtime."""

__all__: list[str] = []

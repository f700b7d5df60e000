"""moe-server."""

__all__: list[str] = []

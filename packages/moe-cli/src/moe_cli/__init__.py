"""moe-cli."""

__all__: list[str] = []

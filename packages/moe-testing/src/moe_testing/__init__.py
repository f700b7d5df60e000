"""moe-testing."""

__all__: list[str] = []

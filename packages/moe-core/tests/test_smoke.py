import moe_core


def test_import():
    assert moe_core.__all__ == []

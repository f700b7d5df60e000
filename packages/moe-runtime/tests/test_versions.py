"""Saved files' keys name the same package versions, in one order (a change orphans saved files)."""

from importlib.metadata import version

from moe_runtime import _snapshot_files, _warm
from moe_runtime._versions import package_versions


def test_saved_file_keys_name_the_package_versions():
    expected = {n: version(n) for n in ("moe-core", "moe-runtime", "mlx", "mlx-lm")}
    assert list(package_versions().items()) == list(expected.items())
    warm = _warm.make_key("fp", [2, 3], None)
    assert warm.versions == tuple(expected.items())
    snapshot = _snapshot_files.make_key("fp", kv_bits=None, kv_group_size=64, miss="exact")
    assert list(snapshot["versions"].items()) == list(expected.items())

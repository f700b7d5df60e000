"""pytest plugin: `moe_checkpoint`, a session-wide factory of synthetic MoE checkpoints, and
`moe_hosts`, several "hosts" in network namespaces for multi-host tests.

    def test_loads(moe_checkpoint):
        path = moe_checkpoint("qwen3_moe", precision="f32", num_experts=32)
        model, tokenizer = mlx_lm.load(str(path))

Each distinct set of arguments is built once per session (per xdist worker) and shared by
every test that asks for it, so treat the directory as read-only: copy it to change it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from moe_testing._hosts import Hosts


@pytest.fixture(scope="session")
def moe_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`moe_checkpoint(family, layout="stacked", precision="q4", **overrides) -> Path`.

    `overrides` are the other `CheckpointSpec` fields: seed, skew, num_layers, hidden_size,
    moe_intermediate_size, num_experts, top_k, head_dim and config_overrides (a dict).
    """
    # Imported here so that loading the plugin, in every pytest run, stays cheap.
    from moe_testing import CheckpointSpec, build_checkpoint

    root = tmp_path_factory.mktemp("moe_checkpoints")
    built: dict[CheckpointSpec, Path] = {}

    def checkpoint(
        family: str, layout: str = "stacked", precision: str = "q4", **overrides: Any
    ) -> Path:
        spec = CheckpointSpec(family, layout, precision, **overrides)
        if spec not in built:
            built[spec] = build_checkpoint(spec, root)
        return built[spec]

    return checkpoint


@pytest.fixture
def moe_hosts(tmp_path: Path) -> Iterator[Callable[..., Hosts]]:
    """`moe_hosts(n) -> Hosts`: n "hosts" in network namespaces of this test's own (10.99.0.x),
    removed with everything running in them when the test ends. Skips the test, saying why,
    where namespaces cannot be made (not root, no iproute2, not Linux)."""
    from moe_testing._hosts import Hosts, unavailable

    made: list[Hosts] = []

    def hosts(n: int, **kwargs: Any) -> Hosts:
        reason = unavailable()
        if reason is not None:
            pytest.skip(f"multi-host test needs network namespaces: {reason}")
        workdir = tmp_path / f"hosts{len(made)}"
        workdir.mkdir()
        made.append(Hosts(n, workdir, **kwargs).__enter__())
        return made[-1]

    yield hosts
    for h in made:
        h.close()

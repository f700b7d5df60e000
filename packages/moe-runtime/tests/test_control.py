"""The channel beside MLX's ring that tells rank 0 which ranks are alive: a rank that exits is
gone at once, one that falls silent (frozen, off the network) after the timeout; nobody enters
mx.distributed.init before every rank has connected."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from moe_runtime import LaunchError, Topology
from moe_runtime._control import ControlServer

FOLLOWER = """
import sys, time
from moe_runtime import Topology
from moe_runtime._control import ControlClient
topology = Topology(1, ("127.0.0.1", "127.0.0.1"), int(sys.argv[1]))
client = ControlClient(topology, lambda reason: print("lost:", reason, flush=True),
                       beat_s=0.2, timeout_s=1.0)
client.go.wait()
client.send(state="ready", stats={"hits": 3})
client.ready = True
print("go", flush=True)
time.sleep(60)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(predicate, seconds: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, what
        time.sleep(0.05)
    return time.monotonic() - start


def test_topology_from_mlx_launch_env(tmp_path):
    hostfile = tmp_path / "ring.json"
    hostfile.write_text(json.dumps([["10.99.0.1:32323"], ["10.99.0.2:32324"]]))
    topology = Topology.from_env({"MLX_RANK": "1", "MLX_HOSTFILE": str(hostfile)})
    assert topology == Topology(1, ("10.99.0.1", "10.99.0.2"), 32322)
    env = {"MLX_RANK": "0", "MLX_HOSTFILE": str(hostfile), "MOE_CONTROL_PORT": "4000"}
    assert Topology.from_env(env).control_port == 4000
    with pytest.raises(LaunchError, match=r"started by mlx\.launch"):
        Topology.from_env({})
    with pytest.raises(LaunchError, match="lists 2 hosts"):
        Topology.from_env({"MLX_RANK": "2", "MLX_HOSTFILE": str(hostfile)})
    hostfile.write_text("{}")
    with pytest.raises(LaunchError, match="not an MLX ring hostfile"):
        Topology.from_env({"MLX_RANK": "0", "MLX_HOSTFILE": str(hostfile)})


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_follower_that_dies_or_freezes_is_gone(fault):
    port = free_port()
    server = ControlServer(
        Topology(0, ("127.0.0.1", "127.0.0.1"), port), beat_s=0.2, timeout_s=1.0, join_s=30
    )
    try:
        assert not server.joined.is_set()
        assert "rank 1 (127.0.0.1) has not joined" in server.problem()
        follower = subprocess.Popen(
            [sys.executable, "-c", FOLLOWER, str(port)], stdout=subprocess.PIPE, text=True
        )
        try:
            until(server.joined.is_set, 120, "the follower never connected")
            assert follower.stdout.readline().strip() == "go"
            until(lambda: server.problem() is None, 10, "the follower never became ready")
            assert server.snapshot()[0]["hits"] == 3
            if fault == "killed":
                follower.kill()
                seconds = until(server.problem, 5, "a killed follower still counts")
                assert seconds < 2
                assert "connection closed" in server.problem()
            else:
                os.kill(follower.pid, signal.SIGSTOP)
                seconds = until(server.problem, 10, "a frozen follower still counts")
                assert 0.5 < seconds < 4
                assert "silent" in server.problem()
            assert server.snapshot()[0]["state"] == "gone"
        finally:
            follower.kill()
            follower.wait()
            follower.stdout.close()
    finally:
        server.close()

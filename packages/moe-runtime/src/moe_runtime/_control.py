"""Which ranks of a distributed launch are alive, beside MLX's ring.

MLX's collectives have no timeout: a rank waiting for a peer that is gone waits forever. So each
follower keeps one TCP connection to rank 0, next to the ring, on which both sides send a beat
every `beat_s` and the follower sends its state and statistics. A connection that closes (the
process exited or was killed) or stays silent for `timeout_s` (the host fell off the network or
froze) marks the rank gone (while a rank loads, Python imports may hold its interpreter for
seconds: silence then counts only after `join_s`), which is how rank 0 answers requests with an error instead of
hanging, and how a follower notices that rank 0 is gone. Only health travels here; requests and
tokens go over MLX's ring.

The channel is one JSON object per line. Like the ring, it expects the private network between
the hosts: it has no authentication of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moe_core import MoEError

BEAT_S = 1.0
TIMEOUT_S = 10.0
JOIN_S = 120.0
_TICK_S = 0.1


class LaunchError(MoEError):
    """The process was not started the way a distributed run needs."""


@dataclass(frozen=True, slots=True)
class Topology:
    """This process's rank and every rank's address, as mlx.launch's ring backend gives them."""

    rank: int
    addresses: tuple[str, ...]  # one IP per rank
    control_port: int

    @property
    def size(self) -> int:
        return len(self.addresses)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Topology:
        """From `MLX_RANK` and `MLX_HOSTFILE` (set by `mlx.launch` for the ring backend). The
        control port is `MOE_CONTROL_PORT`, or the port just below rank 0's first ring port."""
        env = os.environ if env is None else env
        rank, hostfile = env.get("MLX_RANK"), env.get("MLX_HOSTFILE")
        if rank is None or not hostfile:
            raise LaunchError(
                "a distributed run is started by mlx.launch with the ring backend and at least "
                "two hosts (MLX_RANK and MLX_HOSTFILE are not set)"
            )
        try:
            hosts = json.loads(Path(hostfile).read_text())
            endpoints = [h[0].rsplit(":", 1) for h in hosts]
            addresses = tuple(ip.strip("[]") for ip, _ in endpoints)
            port = int(env.get("MOE_CONTROL_PORT") or int(endpoints[0][1]) - 1)
        except (OSError, ValueError, IndexError, TypeError, AttributeError) as e:
            raise LaunchError(f"{hostfile}: not an MLX ring hostfile ({e})") from None
        if not 0 <= int(rank) < len(addresses):
            raise LaunchError(f"MLX_RANK={rank} but {hostfile} lists {len(addresses)} hosts")
        return cls(int(rank), addresses, port)


@dataclass(slots=True)
class RankState:
    """What rank 0 knows of one rank."""

    rank: int
    address: str
    state: str = "waiting"  # waiting, loading, ready, failed, gone, stopped
    since: float = 0.0  # time.time() of the last change
    reason: str | None = None
    stats: dict | None = None  # the rank's summary, as of its last request

    def as_dict(self) -> dict:
        return {
            "rank": self.rank,
            "address": self.address,
            "state": self.state,
            "for_s": round(time.time() - self.since, 1),
            "reason": self.reason,
            **(self.stats or {}),
        }


class _Lines:
    """JSON objects over a socket, one per line; `read` waits at most the socket's timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self._buffer = sock, b""

    def send(self, message: dict) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def read(self) -> dict | None:
        """The next message, or None when none came in time; EOFError when the peer closed."""
        while b"\n" not in self._buffer:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                return None
            if not data:
                raise EOFError
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


class ControlServer:
    """Rank 0's side: accepts one connection per follower and keeps their states."""

    def __init__(
        self,
        topology: Topology,
        *,
        beat_s: float = BEAT_S,
        timeout_s: float = TIMEOUT_S,
        join_s: float = JOIN_S,
    ):
        self.beat_s, self.timeout_s, self.join_s = beat_s, timeout_s, join_s
        start = time.time()
        self.ranks = {
            r: RankState(r, topology.addresses[r], since=start) for r in range(1, topology.size)
        }
        self.lock = threading.Lock()
        self.stopping = False
        # Every follower has connected (`joined`), then has been told to start the group
        # (`started`): only then does rank 0 enter mx.distributed.init, which blocks with the
        # interpreter held until every peer is there (so nothing else here runs meanwhile).
        self.joined = threading.Event()
        self.started = threading.Event()
        self._told: set[int] = set()
        if not self.ranks:
            self.joined.set()
            self.started.set()
        self._sockets: list[socket.socket] = []
        try:
            self._listener = socket.create_server((topology.addresses[0], topology.control_port))
        except OSError as e:
            raise LaunchError(
                f"cannot listen on {topology.addresses[0]}:{topology.control_port} for the "
                f"other ranks: {e.strerror or e} (set MOE_CONTROL_PORT to another port)"
            ) from None
        threading.Thread(target=self._accept, name="moe-control", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(self.beat_s)
        lines = _Lines(sock)
        rank = None
        told = False
        last_heard = last_beat = time.monotonic()
        try:
            while True:
                if rank is not None and not told and self.joined.is_set():
                    lines.send({"kind": "go"})
                    told = True
                    with self.lock:
                        self._told.add(rank)
                        if len(self._told) == len(self.ranks):
                            self.started.set()
                message = lines.read()
                now = time.monotonic()
                if message is not None:
                    last_heard = now
                    if rank is None:
                        rank = self._hello(message, sock)
                        if rank is None:
                            return
                    self._update(rank, message)
                elif rank is not None and now - last_heard > self._patience(rank):
                    self._lost(rank, f"silent for {now - last_heard:.0f} s (host unreachable?)")
                    return
                if now - last_beat >= self.beat_s:
                    lines.send({"kind": "beat"})
                    last_beat = now
        except (EOFError, OSError, ValueError):
            if rank is not None:
                self._lost(rank, "its connection closed (the process exited or was killed)")
        finally:
            sock.close()

    def _patience(self, rank: int) -> float:
        return self.timeout_s if self.ranks[rank].state == "ready" else self.join_s

    def _hello(self, message: dict, sock: socket.socket) -> int | None:
        rank = message.get("rank")
        with self.lock:
            if message.get("kind") != "hello" or rank not in self.ranks:
                return None
            self._sockets.append(sock)
            self._set(rank, "loading", None)
            if all(s.state != "waiting" for s in self.ranks.values()):
                self.joined.set()
        return rank

    def _update(self, rank: int, message: dict) -> None:
        with self.lock:
            state = self.ranks[rank]
            if state.state in ("gone", "stopped"):
                return
            if "stats" in message:
                state.stats = message["stats"]
            if "state" in message and message["state"] != state.state:
                self._set(rank, message["state"], message.get("reason"))

    def _lost(self, rank: int, reason: str) -> None:
        with self.lock:
            if self.ranks[rank].state != "gone":
                self._set(rank, "stopped" if self.stopping else "gone", reason)

    def _set(self, rank: int, state: str, reason: str | None) -> None:
        entry = self.ranks[rank]
        entry.state, entry.reason, entry.since = state, reason, time.time()

    def wait_stats(self, seq: int, timeout: float) -> None:
        """Wait until every ready follower has reported its figures after request `seq`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                behind = [
                    s
                    for s in self.ranks.values()
                    if s.state == "ready" and (s.stats or {}).get("seq", -1) < seq
                ]
            if not behind:
                return
            time.sleep(_TICK_S / 2)

    def snapshot(self) -> list[dict]:
        with self.lock:
            return [self.ranks[r].as_dict() for r in sorted(self.ranks)]

    def problem(self) -> str | None:
        """Why the followers cannot serve now (every rank gone, failed or not yet ready, the
        gone ones first), or None."""
        with self.lock:
            states = [self.ranks[r] for r in sorted(self.ranks)]
        order = {"gone": 0, "failed": 1, "waiting": 2, "loading": 3}
        problems = sorted((s for s in states if s.state in order), key=lambda s: order[s.state])
        return "; ".join(_describe(s) for s in problems) or None

    def close(self) -> None:
        """Stop listening and drop every follower's connection (they stop when it closes)."""
        with self.lock:
            self.stopping = True
            sockets = list(self._sockets)
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _describe(s: RankState) -> str:
    waited = f"{time.time() - s.since:.0f} s"
    where = f"rank {s.rank} ({s.address})"
    if s.state == "gone":
        return f"{where} is gone: {s.reason}"
    if s.state == "failed":
        return f"{where} failed: {s.reason}"
    if s.state == "waiting":
        return f"{where} has not joined (waited {waited}): is it running?"
    return f"{where} is still loading the model ({waited})"


class ControlClient:
    """A follower's side: connects to rank 0 (retrying while it starts), beats, reports, and
    calls `on_lost(reason)` once rank 0 is gone."""

    def __init__(
        self,
        topology: Topology,
        on_lost: Callable[[str], None],
        *,
        beat_s: float = BEAT_S,
        timeout_s: float = TIMEOUT_S,
        join_s: float = JOIN_S,
    ) -> None:
        self.topology, self.on_lost = topology, on_lost
        self.beat_s, self.timeout_s, self.join_s = beat_s, timeout_s, join_s
        self._outbox: list[dict] = []
        self._lock = threading.Lock()
        self.closed = threading.Event()
        self.go = threading.Event()  # every rank has connected to rank 0: start the group
        self.ready = False  # this rank has loaded: rank 0 silent past timeout_s is gone
        threading.Thread(target=self._run, name="moe-control", daemon=True).start()

    def send(self, **message) -> None:
        """Queue a message for rank 0 (sent with the next beat)."""
        with self._lock:
            self._outbox.append(message)

    def _run(self) -> None:
        address = (self.topology.addresses[0], self.topology.control_port)
        deadline = time.monotonic() + self.join_s
        while True:
            try:
                sock = socket.create_connection(address, timeout=self.beat_s)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    return self._end(f"could not reach rank 0 at {address[0]}:{address[1]}: {e}")
                time.sleep(self.beat_s / 2)
        lines = _Lines(sock)
        last_heard = last_sent = time.monotonic()
        try:
            lines.send({"kind": "hello", "rank": self.topology.rank, "pid": os.getpid()})
            while True:
                with self._lock:
                    outbox, self._outbox = self._outbox, []
                now = time.monotonic()
                if not outbox and now - last_sent >= self.beat_s:
                    outbox = [{"kind": "beat"}]
                for message in outbox:
                    lines.send(message)
                    last_sent = now
                sock.settimeout(_TICK_S)  # so what is queued leaves within a tick
                if (heard := lines.read()) is not None:
                    last_heard = time.monotonic()
                    if heard.get("kind") == "go":
                        self.go.set()
                silent = time.monotonic() - last_heard
                if silent > (self.timeout_s if self.ready else self.join_s):
                    return self._end(f"rank 0 silent for {silent:.0f} s")
        except (EOFError, OSError, ValueError):
            return self._end("rank 0 closed its connection")
        finally:
            sock.close()

    def _end(self, reason: str) -> None:
        self.closed.set()
        self.on_lost(reason)

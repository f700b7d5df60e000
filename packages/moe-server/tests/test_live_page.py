"""The live page at `/` and its event stream, over HTTP: what it serves, what the frames say about
a real offloaded Session, how often they come, who samples the model, and who may see them.
The same page in a real browser is tested in the repository's tests/test_live_page_browser.py."""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import json
import threading
import time

import httpx
import numpy as np
import pytest
from _providers import ScriptedProvider

import moe_core
from moe_server._events import changed_grid, heat_grid, rates
from moe_server._live import EVICTED, PAD, PINNED, READ, RESIDENT, Sample

CHAT = [{"role": "user", "content": "def add(a, b):"}]


class Events:
    """Reads `/live/events` on a thread of its own, keeping every (name, body, time)."""

    def __init__(self, url: str, headers: dict | None = None):
        self.frames: list[tuple[str, dict, float]] = []
        self.status: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, headers or {}), daemon=True)
        self._thread.start()
        self.wait_for(lambda: self.frames or self.status not in (None, 200))

    def _read(self, url: str, headers: dict) -> None:
        self._client = httpx.Client(timeout=60)
        try:
            with self._client.stream("GET", url + "/live/events", headers=headers) as response:
                self.status = response.status_code
                name = None
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        self.frames.append((name, json.loads(line[6:]), time.monotonic()))
        except (httpx.HTTPError, RuntimeError):  # closed by close()
            pass

    def wait_for(self, condition, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; frames so far: {[f[0] for f in self.frames]}")
            time.sleep(0.02)

    def ticks(self) -> list[dict]:
        return [body for name, body, _ in self.frames if name == "tick"]

    def close(self) -> None:
        """Hang up, as a page that is closed does."""
        self._stop.set()
        self._client.close()
        self._thread.join(5)


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _grid(frame: dict, layers: int, experts: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(frame["heat"]), dtype=np.uint8)
    return raw.reshape(layers, experts)


def test_page_and_its_files_are_served_with_a_strict_policy(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="heatmap"' in page.text
    assert 'name="moe-key-required" content="false"' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "access-control-allow-origin" not in page.headers
    assert httpx.head(server.url + "/").status_code == 200  # agents probe `HEAD /`
    for name, kind in [("page.js", "javascript"), ("page.css", "css"), ("favicon.svg", "svg")]:
        response = httpx.get(f"{server.url}/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    # Only the shipped files: nothing else of the package is reachable.
    for name in ["index.html", "..%2F_app.py", "_app.py"]:
        response = httpx.get(f"{server.url}/static/{name}")
        assert response.status_code == 404, name
        assert response.json()["error"]["type"] == "not_found_error"


def test_hello_describes_the_session(server, provider):
    events = Events(server.url)
    try:
        name, hello, _ = events.frames[0]
    finally:
        events.close()
    assert name == "hello"
    handle = provider.handle
    assert hello["model"] == provider.model_id
    assert hello["layers"] == len(handle.num_experts)
    assert hello["experts"] == max(handle.num_experts)
    assert hello["settings"]["capacity"] == handle.capacity
    assert (
        hello["settings"]["miss"] == "exact"
        and hello["settings"]["policy"] == moe_core.DEFAULT_POLICY
    )
    grid = _grid(hello, hello["layers"], hello["experts"])
    for layer, (resident, pinned) in enumerate(
        zip(handle.resident(), handle.pinned(), strict=True)
    ):
        assert set(np.flatnonzero(grid[layer] & RESIDENT)) == resident
        assert set(np.flatnonzero(grid[layer] == PINNED)) == pinned
    parts = {p["name"]: p["bytes"] for p in hello["budget"]["parts"]}
    budget = handle.plan
    assert parts["expert slots"] == sum(
        c * b for c, b in zip(budget.capacity, budget.expert_bytes, strict=True)
    )
    assert parts["weights"] == budget.dense_bytes and parts["scratch"] == budget.scratch_bytes
    # The KV cache's part is what the session keeps free for it: its size at the full context;
    # the rest of the reserve is the prompt caches of other conversations.
    kv = provider.kv
    prompts = provider.stats()["session"]["prompt_cache"]["memory_limit"]
    assert parts["KV cache"] == kv.reserve_bytes > 0 and parts["prompt caches"] == prompts > 0
    assert parts["KV cache"] + parts["prompt caches"] == budget.reserve_bytes
    assert parts["KV cache"] == kv.bytes_per_token * kv.max_context + kv.fixed_bytes
    assert parts["process"] == budget.base_bytes
    assert hello["budget"]["reason"] == budget.reason
    assert hello["memory"]["process"] > 0


def test_a_request_moves_the_heatmap_and_the_charts(server, provider):
    events = Events(server.url)
    try:
        hello = events.frames[0][1]
        before = len(events.ticks())
        prompts = [
            "class Stack:\n    def push(self, x):",
            "import os\nfor root, dirs, files in os.walk('.'):",
        ]
        for prompt in prompts:  # two prompts, so some expert is surely read
            response = httpx.post(
                server.url + "/v1/chat/completions",
                json={
                    "model": "m",
                    "max_tokens": 24,
                    "messages": [{"role": "user", "content": prompt}],
                },
                timeout=120,
            )
            assert response.status_code == 200
        events.wait_for(lambda: sum(len(t.get("requests", [])) for t in events.ticks()) >= 2)
        ticks = events.ticks()[before:]
    finally:
        events.close()
    heats = [t for t in ticks if "heat" in t]
    assert heats, "no residency frame after two requests"
    layers, experts = hello["layers"], hello["experts"]
    flags = np.zeros((layers, experts), dtype=np.uint8)
    for tick in heats:
        flags |= _grid(tick, layers, experts) & (READ | EVICTED)
    assert flags.any(), "no expert was flagged as read or evicted"
    last = _grid(heats[-1], layers, experts)
    for layer, resident in enumerate(provider.handle.resident()):
        assert set(np.flatnonzero(last[layer] & RESIDENT)) == resident
    done = [r for t in ticks for r in t.get("requests", [])]
    assert len(done) == 2 and all(r["outcome"] in ("stop", "length") for r in done)
    assert all(r["ttft_s"] > 0 and r["tokens"] > 0 for r in done)
    points = [t["point"] for t in ticks]
    assert any(p.get("hit_rate") is not None for p in points)
    assert any((p.get("tok_s") or 0) > 0 for p in points)


def test_frames_are_coalesced(serve_app, provider):
    """A slow generation sampled while a page listens: a few frames per second, never more."""
    scripted = ScriptedProvider(provider, delay=0.01)  # 100 tokens per second
    server = serve_app(scripted)
    events = Events(server.url)
    try:
        start = time.monotonic()
        response = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "m", "max_tokens": 200, "messages": CHAT},
            timeout=60,
        )
        elapsed = time.monotonic() - start
        assert response.status_code == 200
        events.wait_for(lambda: any(t.get("requests") for t in events.ticks()))
        times = [at for name, _, at in events.frames if name == "tick"]
        points = [t["point"] for t in events.ticks()]
    finally:
        events.close()
    assert any(p["running"] == 1 for p in points) and points[-1]["running"] == 0
    assert scripted.yielded == 200
    # 200 tokens in ~2 s: one frame per token would be 200; a frame every 0.25 s is ~8-12.
    assert 3 <= len(times) <= elapsed / 0.25 + 4, (len(times), elapsed)
    gaps = np.diff(times)
    assert np.median(gaps) >= 0.2


def test_the_queue_chart_counts_requests_waiting_behind_the_running_one(serve_app, provider):
    """Three requests at once: the chart's points say 2 then 1 then 0 waiting while one runs,
    and nothing left at the end."""
    server = serve_app(ScriptedProvider(provider, delay=0.01))  # ~1.5 s per request
    events = Events(server.url)
    body = {"model": "m", "max_tokens": 150, "messages": CHAT}
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            replies = list(
                pool.map(
                    lambda _: httpx.post(
                        server.url + "/v1/chat/completions", json=body, timeout=60
                    ),
                    range(3),
                )
            )
        assert all(r.status_code == 200 for r in replies)
        events.wait_for(lambda: sum(len(t.get("requests", [])) for t in events.ticks()) >= 3)
        events.wait_for(lambda: events.ticks()[-1]["point"]["running"] == 0)
        ticks = events.ticks()
    finally:
        events.close()
    queue = [(t["point"]["waiting"], t["point"]["running"]) for t in ticks]
    assert (2, 1) in queue and (1, 1) in queue, queue
    assert all(w <= 2 and r <= 1 for w, r in queue), queue
    assert all(t["waiting"] == t["point"]["waiting"] for t in ticks)
    assert queue[-1] == (0, 0)


def test_the_model_is_sampled_on_the_worker_thread_only_and_not_without_a_page(serve_app, provider):
    """The page's samples between tokens leave out the costly Belady window
    (`stats(window=False)`); the ones at start and after each job, which /metrics shows, don't."""

    class Recording(ScriptedProvider):
        def stats(self, *, window: bool = True) -> dict:
            calls.append((threading.current_thread().name, window))
            return {**super().stats(), "window": window}

    calls: list[tuple[str, bool]] = []
    server = serve_app(Recording(provider, delay=0.01))
    worker = server.app.state.engine.worker
    body = {"model": "m", "max_tokens": 100, "messages": CHAT}
    assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
    # No page open: the worker reads the stats at start and after the job, never per token.
    _until(lambda: len(calls) >= 2)
    time.sleep(0.3)
    assert [window for _, window in calls] == [True, True]
    events = Events(server.url)
    try:
        assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).is_success
        events.wait_for(lambda: any(t.get("requests") for t in events.ticks()))
        _until(lambda: worker.live.owed_in() is None, timeout=30)
    finally:
        events.close()
    # ~1 s of tokens sampled every 0.25 s, then the end of the job
    assert 2 + 3 <= len(calls) <= 2 + 1 / 0.25 + 2, calls
    assert {thread for thread, _ in calls} == {"moe-worker"}
    during, after = calls[2:-1], calls[-1]
    assert during and not any(window for _, window in during) and after[1], calls
    assert worker.last_stats["window"] is True  # /metrics: the full sample after the job


def test_a_slow_sample_stretches_the_interval(serve_app, provider):
    """Sampling takes at most 1% of the worker's time: a sample of 20 ms waits 2 s for the next.
    The sample after each job counts too: short jobs back to back do not each pay one; it is
    owed and taken once the budget allows, while the worker is idle."""

    class Slow(ScriptedProvider):
        def stats(self, *, window: bool = True) -> dict:
            calls.append((time.monotonic(), time.perf_counter()))
            time.sleep(0.02)
            return super().stats()

    calls: list[tuple[float, float]] = []
    server = serve_app(Slow(provider, delay=0.01))
    worker = server.app.state.engine.worker
    events = Events(server.url)
    try:
        body = {"model": "m", "max_tokens": 400, "messages": CHAT}  # ~4 s of tokens
        assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).is_success
        events.wait_for(lambda: any(t.get("requests") for t in events.ticks()))
        # At start, during the job (unless a slow start-up sample's budget outlasts it), then
        # after it: each at least 2 s after the previous (more where a sample took longer).
        _until(lambda: worker.live.owed_in() is None, timeout=30)
        gaps = np.diff([t for t, _ in calls])
        assert len(calls) >= 2 and (gaps >= 2.0).all(), gaps
        # Twelve jobs of ~0.1 s back to back: a sample after each would be 16% of the time.
        before, started = len(calls), time.monotonic()
        short = {**body, "max_tokens": 10}
        for _ in range(12):
            reply = httpx.post(server.url + "/v1/chat/completions", json=short, timeout=60)
            assert reply.is_success
        elapsed = time.monotonic() - started
        taken = calls[before:]
        assert len(taken) <= 1 + elapsed * 0.01 / 0.02, (len(taken), elapsed)
        # The owed sample comes while the worker is idle, and the page shows it.
        _until(lambda: worker.live.owed_in() is None, timeout=30)
        assert len(calls) > before and worker.last_stats
        events.wait_for(lambda: events.ticks()[-1].get("sampling_s", 0) >= 0.02 * len(calls))
    finally:
        events.close()
    starts = [p for _, p in calls]
    assert (np.diff(starts) >= 0.02 / 0.01 - 0.01).all(), np.diff(starts)


def test_an_owed_full_sample_waits_for_the_end_of_a_job_not_between_tokens(serve_app, provider):
    """The sample after a job replays the Belady window (tens of ms on a real model): when the
    budget leaves it owed and the next job starts at once, it is not taken between that job's
    tokens (where it would cost the request's tok/s) but after a job or while the worker idles."""

    class Recording(ScriptedProvider):
        generating = False

        def stream(self, prompt, **options):
            self.generating = True
            try:
                yield from super().stream(prompt, **options)
            finally:
                self.generating = False

        def stats(self, *, window: bool = True) -> dict:
            if window:
                full.append(self.generating)
                time.sleep(0.03)  # a budget of 3 s before the next sample
            return super().stats()

    full: list[bool] = []
    recording = Recording(provider, delay=0.01)
    server = serve_app(recording)
    worker = server.app.state.engine.worker
    body = {"model": "m", "max_tokens": 100, "messages": CHAT}  # ~1 s of tokens each
    for _ in range(5):  # back to back: the sample after each but the first few is owed
        assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).is_success
    _until(lambda: worker.live.owed_in() is None, timeout=30)
    assert len(full) >= 2 and not any(full), full  # at start and after jobs, never during one


class _Watched:
    """The real session, with its handle's observe/unobserve calls recorded (thread names)."""

    def __init__(self, session):
        self.session, self.calls = session, []
        self.model_id, self.tokenizer = session.model_id, session.tokenizer
        outer = self

        class Handle:
            def __getattr__(self, name):
                return getattr(session.handle, name)

            def observe(self, observer):
                outer.calls.append(("observe", threading.current_thread().name))
                return session.handle.observe(observer)

            def unobserve(self, observer):
                outer.calls.append(("unobserve", threading.current_thread().name))
                session.handle.unobserve(observer)

        self.handle = Handle()

    def __getattr__(self, name):  # stream, encode_prompt, stats
        return getattr(self.session, name)


def test_reads_are_observed_only_while_a_page_listens(serve_app, provider):
    watched = _Watched(provider)
    server = serve_app(watched)
    ask = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "import re"}]}
    assert httpx.post(server.url + "/v1/chat/completions", json=ask, timeout=120).is_success
    assert watched.calls == []
    events = Events(server.url)
    try:
        hello = events.frames[0][1]
        for prompt in ("x = [i * i for i in range(10)]", "async def fetch(url):"):
            body = ask | {"messages": [{"role": "user", "content": prompt}]}
            assert httpx.post(
                server.url + "/v1/chat/completions", json=body, timeout=120
            ).is_success
        events.wait_for(lambda: sum(len(t.get("requests", [])) for t in events.ticks()) >= 2)

        def seen() -> np.ndarray:
            flags = np.zeros((hello["layers"], hello["experts"]), dtype=np.uint8)
            for tick in events.ticks():
                if "heat" in tick:
                    flags |= _grid(tick, hello["layers"], hello["experts"])
            return flags

        # The sample after a job may be owed until the 1% sampling budget allows it, so the
        # frame that shows its reads can come after the one that lists the request.
        events.wait_for(lambda: bool((seen() & READ).any()))
        flags = seen()
    finally:
        events.close()
    assert watched.calls == [("observe", "moe-worker")]
    assert flags.any() and (flags & READ).any()
    # The page closed: the next job lets go of the observer.
    _until(lambda: server.app.state.live.sampler.listeners == 0)
    assert httpx.post(server.url + "/v1/chat/completions", json=ask, timeout=120).is_success
    _until(lambda: len(watched.calls) == 2)
    assert watched.calls[1] == ("unobserve", "moe-worker")


def test_key_is_required_on_the_event_stream_not_on_the_page(serve_app, provider):
    server = serve_app(provider, api_key="sekrit")
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'content="true"' in page.text
    assert httpx.get(server.url + "/static/page.js").status_code == 200
    refused = Events(server.url)
    assert refused.status == 401 and not refused.frames
    for headers in ({"Authorization": "Bearer sekrit"}, {"x-api-key": "sekrit"}):
        events = Events(server.url, headers)
        events.close()
        assert events.status == 200 and events.frames[0][0] == "hello"
    # the key travels in a header, never in the URL
    assert httpx.get(server.url + "/live/events?key=sekrit").status_code == 401


def test_other_origins_are_refused(serve_app, provider):
    scripted = ScriptedProvider(provider, ["hello"])
    server = serve_app(scripted)
    body = {"model": "m", "max_tokens": 4, "messages": CHAT}
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
        response = httpx.post(
            server.url + "/v1/chat/completions", json=body, headers={"Origin": origin}
        )
        assert response.status_code == 403, origin
        assert response.json()["error"]["type"] == "permission_error"
        assert "access-control-allow-origin" not in response.headers
    preflight = httpx.options(
        server.url + "/v1/chat/completions",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    assert scripted.calls == 0
    # DNS rebinding: a name of the attacker's that resolves to 127.0.0.1
    rebound = httpx.get(server.url + "/live/events", headers={"Host": "evil.example"})
    assert rebound.status_code == 403
    # The page's own origin, by address or by name
    port = server.port
    for origin, host in [(server.url, f"127.0.0.1:{port}"), (f"http://localhost:{port}", None)]:
        headers = {"Origin": origin} | ({"Host": f"localhost:{port}"} if host is None else {})
        response = httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200, response.text
    assert scripted.calls == 2


def test_with_a_key_any_host_may_ask_but_not_another_origin(serve_app, provider):
    server = serve_app(ScriptedProvider(provider, ["hi"]), api_key="k")
    key = {"Authorization": "Bearer k"}
    assert httpx.get(server.url + "/v1/models", headers=key | {"Host": "box.lan:8080"}).is_success
    response = httpx.get(
        server.url + "/v1/models", headers=key | {"Host": "box.lan:8080", "Origin": "http://x.lan"}
    )
    assert response.status_code == 403


# -- the arithmetic, without a server ---------------------------------------------------------


def _sample(seq, grid=None, activity=None, **counters) -> Sample:
    base = dict(tokens=0, decode_tokens=0, decode_s=0.0, hits=0, misses=0, bytes_read=0)
    base |= counters
    return Sample(
        seq=seq,
        t=0.0,
        read_seconds=base.pop("read_seconds", 0.0),
        process_memory=None,
        peak_memory=None,
        grid=grid,
        stats={},
        sampling_s=0.0,
        activity=activity,
        **base,
    )


def test_rates_between_two_samples():
    a = _sample(1, tokens=10, decode_tokens=9, decode_s=1.0, hits=30, misses=10, bytes_read=0)
    b = _sample(
        2,
        tokens=30,
        decode_tokens=29,
        decode_s=3.0,
        hits=60,
        misses=20,
        bytes_read=40_000_000,
        read_seconds=0.5,
    )
    assert rates(a, b) == {"tok_s": 10.0, "hit_rate": 0.75, "mb_per_token": 2.0, "read_mb_s": 80.0}
    idle = rates(b, b)
    assert idle == {"tok_s": None, "hit_rate": None, "mb_per_token": None, "read_mb_s": None}
    assert rates(b, a)["hit_rate"] is None  # counters reset: no rate rather than a negative one


def test_changed_grid_flags_reads_and_evictions():
    old = np.array([[RESIDENT, 0, PINNED, PAD]], dtype=np.uint8)
    new = np.array([[0, RESIDENT, PINNED, PAD]], dtype=np.uint8)
    out = changed_grid(_sample(1, old), _sample(2, new))
    assert out.tolist() == [[EVICTED, RESIDENT | READ, PINNED, PAD]]
    assert changed_grid(_sample(2, new), _sample(3, new.copy())) is None
    assert changed_grid(None, _sample(1, old)) is old
    assert changed_grid(_sample(1, old), _sample(2, None)) is None


def test_observed_reads_and_evictions_are_flagged_even_when_they_cancel_out():
    grid = np.array([[RESIDENT, 0, PINNED, PAD]], dtype=np.uint8)
    # expert 1 was read and evicted again between the samples; expert 0 evicted and read back
    first = np.array([[0, READ, 0, 0]], dtype=np.uint8)
    second = np.array([[READ | EVICTED, EVICTED, 0, 0]], dtype=np.uint8)
    samples = [_sample(2, grid.copy(), first), _sample(3, grid.copy(), second)]
    out = heat_grid(_sample(1, grid), samples)
    assert out.tolist() == [[RESIDENT | READ | EVICTED, READ | EVICTED, PINNED, PAD]]
    quiet = [_sample(4, grid.copy(), np.zeros_like(grid))]
    assert heat_grid(samples[-1], quiet) is None
    # without an observer, the difference of the grids
    later = np.array([[0, 0, PINNED, PAD]], dtype=np.uint8)
    assert heat_grid(_sample(1, grid), [_sample(2, later)]).tolist() == [[EVICTED, 0, PINNED, PAD]]


@pytest.mark.parametrize("backlog", [1, 3])
def test_a_page_that_falls_behind_is_ended_not_fed_a_torn_grid(backlog):
    import asyncio

    from moe_server import _events

    page: asyncio.Queue = asyncio.Queue(maxsize=backlog)
    for i in range(backlog):
        _events._push(page, f"frame {i}")
    _events._push(page, "one too many")
    assert page.qsize() == 1 and page.get_nowait() is None


def test_rates_span_about_a_second_of_samples():
    """Four frames a second of a few tokens each would make a jagged chart: each point's rates
    reach back to the latest sample at least a second older."""
    from collections import deque
    from types import SimpleNamespace

    from moe_server._events import LiveFeed

    sampler = SimpleNamespace(recent=deque(), requests=deque(), interval=0.25, listeners=0)
    worker = SimpleNamespace(live=sampler, waiting=0, running=1)
    feed = LiveFeed(worker, model="m", limits={})
    points = []
    for i in range(9):  # a sample every 0.25 s; one token in every other interval
        tokens = (i + 1) // 2
        sample = _sample(i + 1, tokens=tokens, decode_tokens=tokens, decode_s=0.25 * i)
        sampler.recent.append(dataclasses.replace(sample, t=0.25 * i))
        frame = feed.step()
        points.append(json.loads(frame.split("data: ", 1)[1])["point"])
    assert "tok_s" not in points[0]  # nothing to compare the first sample with
    # Between consecutive samples the rate would jump between 0 and 4 tok/s; over a second it is 2.
    assert [p["tok_s"] for p in points[4:]] == [2.0] * 5


def test_a_page_that_opens_sees_a_request_that_just_ended():
    """A request recorded by the worker after the last tick is in the next page's hello (and
    in the next tick, for the pages already open; the page skips ids it has)."""
    from collections import deque
    from types import SimpleNamespace

    from moe_server._events import LiveFeed

    sampler = SimpleNamespace(
        recent=deque(), requests=deque(), interval=0.25, listeners=0, latest=None
    )
    feed = LiveFeed(SimpleNamespace(live=sampler, waiting=0, running=0), model="m", limits={})
    sampler.requests.append((1, {"id": 1, "outcome": "cancelled"}))
    hello = json.loads(feed.hello().split("data: ", 1)[1])
    assert [r["id"] for r in hello["requests"]] == [1]
    tick = json.loads(feed.step().split("data: ", 1)[1])
    assert [r["id"] for r in tick["requests"]] == [1]
    hello = json.loads(feed.hello().split("data: ", 1)[1])
    assert [r["id"] for r in hello["requests"]] == [1]  # once, not twice

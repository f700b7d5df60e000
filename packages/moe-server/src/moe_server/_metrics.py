"""Counters for `GET /metrics`, rendered in the Prometheus text format."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._worker import Finish

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/health",
        "/metrics",
        "/",
        "/live/events",
    }
)


class Metrics:
    """Touched only on the event loop, so plain counters need no lock."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.generations = 0
        self.last_tps = 0.0
        self.ttft_counts = [0] * len(TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_count = 0

    def request(self, path: str, status: int) -> None:
        self.requests[(path if path in ENDPOINTS else "other", status)] += 1

    def generation(self, finish: Finish) -> None:
        self.generations += 1
        self.prompt_tokens += finish.prompt_tokens
        self.generated_tokens += finish.completion_tokens
        if finish.generation_tps:
            self.last_tps = finish.generation_tps
        if finish.ttft_s is not None:
            self.ttft_sum += finish.ttft_s
            self.ttft_count += 1
            for i, bound in enumerate(TTFT_BUCKETS):
                if finish.ttft_s <= bound:
                    self.ttft_counts[i] += 1

    def render(
        self, *, waiting: int, running: int, stats: dict, ranks: list[dict] | None = None
    ) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value}" for labels, value in samples)

        metric(
            "moe_requests_total",
            "counter",
            "HTTP requests by endpoint and status.",
            [
                (f'{{endpoint="{path}",status="{status}"}}', n)
                for (path, status), n in sorted(self.requests.items())
            ],
        )
        metric(
            "moe_generations_total", "counter", "Generations finished.", [("", self.generations)]
        )
        metric(
            "moe_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished generations.",
            [("", self.prompt_tokens)],
        )
        metric(
            "moe_generated_tokens_total",
            "counter",
            "Tokens generated.",
            [("", self.generated_tokens)],
        )
        metric(
            "moe_generation_tokens_per_second",
            "gauge",
            "Decode speed of the last generation.",
            [("", self.last_tps)],
        )
        buckets = [
            (f'_bucket{{le="{b}"}}', c) for b, c in zip(TTFT_BUCKETS, self.ttft_counts, strict=True)
        ]
        buckets.append(('_bucket{le="+Inf"}', self.ttft_count))
        lines.append(
            "# HELP moe_time_to_first_token_seconds Queue wait plus prefill, per generation."
        )
        lines.append("# TYPE moe_time_to_first_token_seconds histogram")
        lines.extend(f"moe_time_to_first_token_seconds{s} {v}" for s, v in buckets)
        lines.append(f"moe_time_to_first_token_seconds_sum {self.ttft_sum}")
        lines.append(f"moe_time_to_first_token_seconds_count {self.ttft_count}")
        metric("moe_queue_depth", "gauge", "Requests waiting for the model.", [("", waiting)])
        metric("moe_running", "gauge", "Generations running (0 or 1).", [("", running)])
        if "hit_rate" in stats:
            metric(
                "moe_expert_hit_rate",
                "gauge",
                "Share of expert lookups served from memory.",
                [("", float(stats["hit_rate"]))],
            )
        window = stats.get("window")
        if window:
            metric(
                "moe_expert_window_hit_rate",
                "gauge",
                "Share of the recent expert lookups that needed no read, on demand or ahead.",
                [("", float(window["read_hit_rate"]))],
            )
            metric(
                "moe_expert_window_belady_hit_rate",
                "gauge",
                "Belady's optimum on the same recent lookups: the ceiling of the one above.",
                [("", float(window["belady_hit_rate"]))],
            )
        if "bytes_read" in stats:
            metric(
                "moe_expert_bytes_read_total",
                "counter",
                "Expert bytes read from disk.",
                [("", int(stats["bytes_read"]))],
            )
        if stats.get("host_tier"):
            # CUDA's second tier: GPU misses it served, and those it read from disk.
            for name, key, help_ in (
                ("moe_host_tier_hits_total", "host_hits", "GPU misses served from host RAM."),
                ("moe_host_tier_misses_total", "host_misses", "GPU misses read from disk."),
                ("moe_host_tier_evictions_total", "host_evictions", "Host-tier evictions."),
            ):
                metric(name, "counter", help_, [("", int(stats.get(key, 0)))])
        if stats.get("uploaded_bytes"):
            metric(
                "moe_expert_bytes_uploaded_total",
                "counter",
                "Expert bytes copied from host memory to the GPU.",
                [("", int(stats["uploaded_bytes"]))],
            )
        if ranks:
            for name, kind, help_, key in RANK_METRICS:
                samples = [
                    (f'{{rank="{r["rank"]}",address="{r["address"]}"}}', _number(r, key))
                    for r in ranks
                    if key == "state" or r.get(key) is not None
                ]
                metric(name, kind, help_, samples)
        return "\n".join(lines) + "\n"


# Per rank of a model split across hosts (a follower's figures are as of its last request).
RANK_METRICS = (
    ("moe_rank_up", "gauge", "1 while the rank is ready, 0 otherwise.", "state"),
    ("moe_rank_process_memory_bytes", "gauge", "The rank's process memory.", "process_memory"),
    ("moe_rank_peak_memory_bytes", "gauge", "The rank's peak MLX memory.", "peak_memory"),
    ("moe_rank_expert_hit_rate", "gauge", "The rank's expert hit rate.", "hit_rate"),
    ("moe_rank_expert_bytes_read_total", "counter", "Expert bytes the rank read.", "bytes_read"),
)


def _number(rank: dict, key: str) -> float:
    if key == "state":
        return 1 if rank["state"] == "ready" else 0
    return rank[key]

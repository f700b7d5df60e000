"""/metrics carries the host tier's counters where there is one (CUDA), and nothing of it
where there is not."""

from moe_server._metrics import Metrics


def test_host_tier_counters():
    stats = {
        "hit_rate": 0.5,
        "bytes_read": 10,
        "host_tier": True,
        "host_hits": 7,
        "host_misses": 3,
        "host_evictions": 1,
        "uploaded_bytes": 4096,
    }
    text = Metrics().render(waiting=0, running=0, stats=stats)
    assert "moe_host_tier_hits_total 7" in text
    assert "moe_host_tier_misses_total 3" in text
    assert "moe_host_tier_evictions_total 1" in text
    assert "moe_expert_bytes_uploaded_total 4096" in text


def test_no_tier_no_tier_counters():
    text = Metrics().render(waiting=0, running=0, stats={"hit_rate": 0.5, "host_tier": False})
    assert "moe_host_tier" not in text and "uploaded" not in text

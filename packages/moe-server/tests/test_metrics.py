"""`/metrics` rendering: the expert cache's gauges, from the provider's stats."""

from moe_server._metrics import Metrics


def test_the_window_gauges_sit_next_to_each_other():
    window = {"read_hit_rate": 0.5, "belady_hit_rate": 0.625, "hit_rate": 0.75}
    text = Metrics().render(waiting=0, running=0, stats={"hit_rate": 0.75, "window": window})
    assert "moe_expert_window_hit_rate 0.5\n" in text
    assert "moe_expert_window_belady_hit_rate 0.625\n" in text
    assert "# TYPE moe_expert_window_hit_rate gauge" in text
    # No window yet (no step has gone through a cache): no gauge rather than a made-up zero.
    text = Metrics().render(waiting=0, running=0, stats={"hit_rate": 0.0, "window": None})
    assert "window" not in text

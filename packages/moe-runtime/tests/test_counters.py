"""A session's request counters: what `Session.stats()["session"]` reports of its requests."""

from moe_runtime._stream import Counters


def test_counters_report_what_requests_did():
    counters = Counters()
    assert counters.as_dict() == {
        "requests": 0,
        "prompt_tokens": 0,
        "generated_tokens": 0,
        "prefix_tokens_reused": 0,
        "prefilled_tokens": 0,
        "cancelled": 0,
        "last_ttft_s": None,
    }
    counters.prefilled(10, 4)
    counters.first_token(0.5)
    counters.generated(3)
    counters.prefilled(6, 0)
    counters.cancel()
    counters.generated(2)
    got = counters.as_dict()
    assert list(got) == [
        "requests",
        "prompt_tokens",
        "generated_tokens",
        "prefix_tokens_reused",
        "prefilled_tokens",
        "cancelled",
        "last_ttft_s",
    ]
    assert got == {
        "requests": 2,
        "prompt_tokens": 16,
        "generated_tokens": 5,
        "prefix_tokens_reused": 4,
        "prefilled_tokens": 12,
        "cancelled": 1,
        "last_ttft_s": 0.5,
    }
    got["requests"] = 99  # a reader's copy: the counters stay the owner's
    assert counters.as_dict()["requests"] == 2

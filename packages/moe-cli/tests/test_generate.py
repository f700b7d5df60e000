"""`moe generate`: streamed text equals the unmodified mlx-lm model's greedy output, stats on
stderr, one-line errors."""

from __future__ import annotations

import pytest

PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="session")
def reference(checkpoint):
    """Greedy text of the unmodified mlx-lm model, raw prompt and chat-templated."""
    from mlx_lm import generate, load

    model, tokenizer = load(str(checkpoint))
    raw = generate(model, tokenizer, PROMPT, max_tokens=12)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )
    return {"raw": raw, "chat": generate(model, tokenizer, chat, max_tokens=12)}


def test_raw_prompt_matches_mlx_lm(run, checkpoint, reference):
    result = run("generate", checkpoint, PROMPT, "--raw", "-n", "12", "--capacity", "2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == reference["raw"] + "\n"


def test_chat_is_the_default_with_a_template(run, checkpoint, reference):
    result = run("generate", checkpoint, PROMPT, "-n", "12", "--capacity", "3", "--verbose")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == reference["chat"] + "\n"
    assert "tok/s" in result.stderr
    assert "hit rate" in result.stderr
    assert "MB read" in result.stderr
    assert "peak memory" in result.stderr


def test_prompt_from_stdin(run, checkpoint, reference):
    result = run("generate", checkpoint, "-", "--raw", "-n", "12", input=PROMPT)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == reference["raw"] + "\n"


def test_missing_model(run, tmp_path, one_line_error):
    one_line_error(run("generate", tmp_path / "missing", "hi"), "missing")


def test_not_an_moe_model(run, dense_checkpoint, one_line_error):
    one_line_error(run("generate", dense_checkpoint, "hi"), "Mixture-of-Experts")


def test_bad_memory_value(run, checkpoint, one_line_error):
    one_line_error(run("generate", checkpoint, "hi", "--memory", "12XB"), "12XB")


def test_memory_too_small(run, checkpoint, one_line_error):
    one_line_error(run("generate", checkpoint, "hi", "--memory", "1MB"), "too small")


def test_bad_flag_value_is_a_usage_error(run, checkpoint):
    result = run("generate", checkpoint, "hi", "--max-tokens", "0")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr


def test_lowbit_is_labelled_lossy(run, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = ("generate", checkpoint, PROMPT, "-n", "4", "--capacity", "2", "--miss", "lowbit", "-v")
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    assert "mode lowbit" in result.stderr
    assert "low-bit: " in result.stderr and "2-bit copies" in result.stderr
    assert "--miss lowbit is LOSSY" in result.stderr
    assert "lowbit" in run("generate", "--help").stdout


def test_skip_says_what_it_skipped_and_which_warm_state_it_used(
    run, checkpoint, tmp_path, monkeypatch
):
    """A lossy run's output depends on which experts start resident: --verbose says how many
    choices were skipped and whether (and from where) saved state was used."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = ("generate", checkpoint, PROMPT, "-n", "6", "--capacity", "2", "--miss", "skip", "-v")
    first = run(*args)
    assert first.exit_code == 0, first.stderr
    assert "skipped: " in first.stderr and "LOSSY" in first.stderr
    assert f"warm start: cold (nothing usable at {tmp_path}" in first.stderr
    second = run(*args)
    assert second.exit_code == 0, second.stderr
    assert f"warm start: restored from {tmp_path}" in second.stderr


def test_host_memory_is_refused_with_one_memory(run, checkpoint, one_line_error):
    one_line_error(
        run("generate", checkpoint, "hi", "--host-memory", "2GB"), "--host-memory is for CUDA"
    )

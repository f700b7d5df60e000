"""`moe chat`: multi-turn through the prefix cache, /reset, /stats, /exit and EOF."""

from __future__ import annotations

import re


def test_two_turns_reuse_the_prefix(run, checkpoint):
    result = run(
        "chat", checkpoint, "-n", "6", "--capacity", "4", input="hello\nand again\n/stats\n/exit\n"
    )
    assert result.exit_code == 0, result.stderr
    stats = re.search(r"requests (\d+), prompt tokens (\d+) \((\d+) reused", result.stderr)
    assert stats, result.stderr
    requests, _, reused = map(int, stats.groups())
    assert requests == 2
    # The second turn resends the first turn's messages; the prefix cache must have kept them.
    assert reused > 0
    assert result.stdout.count(">>> ") == 4  # hello, again, /stats, /exit


def test_reset_forgets_the_conversation(run, checkpoint):
    first = run("chat", checkpoint, "-n", "6", input="hello\n")
    again = run("chat", checkpoint, "-n", "6", input="something else\n/reset\nhello\n")
    assert first.exit_code == again.exit_code == 0
    assert "conversation cleared" in again.stderr
    replies = lambda r: [line for line in r.stdout.split(">>> ") if line.strip()]  # noqa: E731
    # After /reset, "hello" is answered exactly as in a fresh chat.
    assert replies(again)[-1] == replies(first)[-1]


def test_eof_exits_cleanly_and_unknown_commands_are_named(run, checkpoint):
    result = run("chat", checkpoint, input="/bogus\n")
    assert result.exit_code == 0
    assert "unknown command /bogus" in result.stderr


def test_missing_model(run, tmp_path, one_line_error):
    one_line_error(run("chat", tmp_path / "missing"), "missing")

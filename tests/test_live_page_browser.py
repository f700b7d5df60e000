"""The live page in a real browser: Debian's headless chromium, driven through chromium-driver
by Selenium, against a real `moe serve` on the demo model (16 of its 64 experts per layer kept
in memory, so answering reads experts).

Without chromium and chromedriver these tests are skipped, saying so; with
MOE_BROWSER_TESTS=required (set by .ci/run once it has installed them) they fail instead."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _live_page import Serve, chromium, console_errors, missing_browser, wait_until

LONG_PROMPT = "def main():"  # the demo model answers it with 300+ tokens


@pytest.fixture(scope="module", autouse=True)
def browser_installed():
    reason = missing_browser()
    if reason is not None:
        if os.environ.get("MOE_BROWSER_TESTS") == "required":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server():
    serve = Serve("--capacity", "16", "--max-tokens", "400")
    yield serve
    serve.stop()


@pytest.fixture(scope="module")
def keyed_server():
    serve = Serve("--capacity", "16", "--api-key", "open-sesame", "--disk-mbps", "1000")
    yield serve
    serve.stop()


@pytest.fixture
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def _js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    wait_until(
        lambda: _js(driver, "return document.getElementById('status').dataset.state") == "live",
        what="the event stream to connect",
    )
    wait_until(
        lambda: int(_js(driver, "return document.getElementById('heatmap').dataset.frames")) > 0,
        what="the first residency grid",
    )


def ask(driver, text: str, max_tokens: int) -> None:
    box = driver.find_element("id", "max-tokens")
    box.clear()
    box.send_keys(str(max_tokens))
    driver.find_element("id", "chat-input").send_keys(text)
    driver.find_element("id", "send").click()


def last_answer(driver) -> dict:
    return _js(
        driver,
        """const all = document.querySelectorAll('.msg.assistant');
        if (!all.length) return {state: null, text: '', thinking: '', meta: ''};
        const m = all[all.length - 1];
        return {state: m.dataset.state || null, text: m.querySelector('.text').textContent,
                thinking: (m.querySelector('.thinking') || {}).textContent || '',
                meta: (m.querySelector('.meta') || {}).textContent || ''};""",
    )


def hello(url: str) -> dict:
    """The first event of the page's stream: the server's state now."""
    with httpx.stream("GET", url + "/live/events", timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                return json.loads(line[6:])
    raise AssertionError("the event stream ended before its first event")


def heatmap_pixels(driver) -> str:
    return _js(driver, "return document.getElementById('heatmap').toDataURL()")


def test_page_loads_without_console_errors(server, browser):
    open_page(browser, server.url)
    assert browser.find_element("id", "model").text == "moe-demo"
    settings = browser.find_element("id", "settings").text
    assert "16 of 64" in settings and "exact" in settings
    assert "MB" in browser.find_element("id", "memory-summary").text
    # As many as the server holds: the start-up warm-up prompt may route to fewer than 16 experts
    # of a layer, so the count is the server's, not 16 x 8.
    grid = base64.b64decode(hello(server.url)["heat"])
    resident = sum(1 for cell in grid if cell != 255 and cell & 1)
    assert 0 < resident <= 16 * 8
    shown = _js(browser, "return document.getElementById('heatmap').dataset.resident")
    assert shown == str(resident)
    # The memory bar has the plan's parts, the KV cache's included, each as wide as its share.
    budget = hello(server.url)["budget"]
    drawn = _js(
        browser,
        """return [...document.querySelectorAll('#memory-bar .part')].map(
            (d) => [d.title, parseFloat(d.style.width)]);""",
    )
    assert [title.split(":")[0] for title, _ in drawn] == [p["name"] for p in budget["parts"]]
    scale = max(budget["memory"] or 0, sum(p["bytes"] for p in budget["parts"]))
    kv = next(p["bytes"] for p in budget["parts"] if p["name"] == "KV cache")
    kv_width = next(width for title, width in drawn if title.startswith("KV cache:"))
    assert kv > 0 and abs(kv_width - 100 * kv / scale) < 0.01
    assert "KV cache" in browser.find_element("id", "memory-legend").text
    assert console_errors(browser) == []


def test_a_message_streams_an_answer_and_the_heatmap_changes(server, browser):
    open_page(browser, server.url)
    frames = int(_js(browser, "return document.getElementById('heatmap').dataset.frames"))
    pixels = heatmap_pixels(browser)
    ask(browser, "class Stack:\n    def push(self, item):", 48)
    seen = []

    def done():
        answer = last_answer(browser)
        seen.append(answer)
        return answer["state"] == "done"

    wait_until(done, timeout=180, interval=0.05, what="the answer")
    streaming = [a for a in seen if a["state"] == "streaming" and a["text"]]
    final = seen[-1]
    assert final["text"].strip() and "tokens" in final["meta"]
    # Text appeared piece by piece before the answer was done.
    assert streaming and len(streaming[0]["text"]) < len(final["text"])
    wait_until(
        lambda: (
            int(_js(browser, "return document.getElementById('heatmap').dataset.frames")) > frames
        ),
        what="a residency frame after the request",
    )
    assert heatmap_pixels(browser) != pixels
    assert console_errors(browser) == []


def test_the_stop_button_cancels_a_long_answer(server, browser):
    open_page(browser, server.url)
    ask(browser, LONG_PROMPT, 400)
    wait_until(lambda: len(last_answer(browser)["text"]) > 0, timeout=120, what="first text")
    browser.find_element("id", "stop").click()
    wait_until(lambda: last_answer(browser)["state"] == "stopped", timeout=5, what="stopped")
    stopped_at = len(last_answer(browser)["text"])
    # The server stops generating: the worker is free long before 400 tokens could be made.
    wait_until(
        lambda: httpx.get(server.url + "/health").json()["running"] == 0, timeout=10, what="idle"
    )
    assert len(last_answer(browser)["text"]) == stopped_at
    assert browser.find_element("id", "send").is_enabled()
    last = hello(server.url)["requests"][-1]  # the request the worker recorded last
    assert last["outcome"] == "cancelled" and last["tokens"] < 400
    assert console_errors(browser) == []


def test_the_key_is_asked_once_and_sent_on_every_request(keyed_server, browser):
    assert httpx.get(keyed_server.url + "/live/events").status_code == 401
    browser.get(keyed_server.url + "/")
    dialog = browser.find_element("id", "key-dialog")
    wait_until(dialog.is_displayed, what="the key dialog")
    browser.find_element("id", "key-input").send_keys("open-sesame")
    browser.find_element("css selector", "#key-form button").click()
    wait_until(
        lambda: _js(browser, "return document.getElementById('status').dataset.state") == "live",
        what="the event stream with the key",
    )
    ask(browser, "def add(a, b):", 8)
    wait_until(lambda: last_answer(browser)["state"] == "done", timeout=120, what="the answer")
    answer = last_answer(browser)
    # The demo model thinks first: 8 tokens may all be reasoning, shown apart from the answer.
    assert answer["text"] or answer["thinking"]
    # A reload in the same tab does not ask again.
    browser.refresh()
    wait_until(
        lambda: _js(browser, "return document.getElementById('status').dataset.state") == "live",
        what="reconnecting after a reload",
    )
    assert not browser.find_element("id", "key-dialog").is_displayed()
    assert "disk 1000 MB/s" in browser.find_element("id", "settings").text
    assert console_errors(browser) == []

"""Screenshots of `moe serve`'s live page for the README, taken in headless chromium.

    uv run python docs/screenshots.py [--out docs/images]

1. live-page.png: the whole page on the demo model (`moe serve --capacity 16`: 16 of 64 experts
   per layer in memory) after a question asked through the page's chat and a few more requests.
2. live-page-48x512.png: the experts panel for a checkpoint of Qwen3-Coder-Next's expert layout
   (48 MoE layers x 512 experts, top-10), tiny random weights built with moe-testing, served at
   128 slots per layer, after a few requests.

Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _live_page import Serve, chromium, missing_browser, wait_until  # noqa: E402

PROMPTS = [
    "Write a function that checks whether a string is a palindrome.",
    "import json\n\ndef load_config(path):",
    "class LRUCache:",
]


def ask_api(url: str, prompt: str, max_tokens: int) -> None:
    body = {
        "model": "m",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    httpx.post(url + "/v1/chat/completions", json=body, timeout=600).raise_for_status()


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    wait_until(
        lambda: (
            driver.execute_script("return document.getElementById('status').dataset.state")
            == "live"
        ),
        what="the page to connect",
    )


def ask_page(driver, text: str, max_tokens: int) -> None:
    box = driver.find_element("id", "max-tokens")
    box.clear()
    box.send_keys(str(max_tokens))
    driver.find_element("id", "chat-input").send_keys(text)
    driver.find_element("id", "send").click()
    wait_until(
        lambda: driver.execute_script(
            "const m = document.querySelectorAll('.msg.assistant');"
            "return m.length && m[m.length - 1].dataset.state === 'done';"
        ),
        timeout=600,
        what="the answer",
    )


def demo_page(out: Path) -> None:
    serve = Serve("--capacity", "16")
    driver = chromium(1440, 980)
    try:
        open_page(driver, serve.url)
        for prompt in PROMPTS:
            ask_api(serve.url, prompt, 64)
        ask_page(driver, "def fibonacci(n):", 96)
        time.sleep(0.6)  # catch the last reads while they are still highlighted
        driver.save_screenshot(str(out / "live-page.png"))
    finally:
        driver.quit()
        serve.stop()


def wide_heatmap(out: Path) -> None:
    from moe_testing import CheckpointSpec, build_checkpoint

    spec = CheckpointSpec(
        family="qwen3_moe",
        precision="q4",
        skew=1.0,
        num_layers=48,
        num_experts=512,
        top_k=10,
        hidden_size=64,
        moe_intermediate_size=64,
    )
    with tempfile.TemporaryDirectory(prefix="moe-48x512-") as folder:
        path = build_checkpoint(spec, folder)
        serve = Serve(str(path), "--capacity", "128", "--disk-mbps", "1000")
        driver = chromium(1500, 1200)
        try:
            open_page(driver, serve.url)
            # this script's own source as a long prompt: its prefill touches many experts
            source = Path(__file__).read_text()[:800]
            for prompt in [*PROMPTS, source]:
                ask_api(serve.url, prompt, 24)
            time.sleep(0.6)
            driver.find_element("css selector", "section.experts").screenshot(
                str(out / "live-page-48x512.png")
            )
        finally:
            driver.quit()
            serve.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--only", choices=["demo", "wide"])
    args = parser.parse_args()
    if missing_browser() is not None:
        sys.exit(f"error: {missing_browser()}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "demo"):
        demo_page(args.out)
    if args.only in (None, "wide"):
        wide_heatmap(args.out)
    for png in sorted(args.out.glob("live-page*.png")):
        print(f"{png} {png.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()

"""The chat page in headless Chromium against a live `planck serve`: a reply streams in, and the next turn
sends the conversation so far."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system browser /usr/bin/chromium (CI installs it)")

# Records what the page did, however fast it streamed: every state change (as the value it left) and the
# length of every text the assistant bubble was given (each update adds a new text node).
RECORDER = """() => {
  window.__seen = {states: [], lengths: []};
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") window.__seen.states.push(r.oldValue);
      else if (r.target.classList && r.target.classList.contains("assistant"))
        for (const n of r.addedNodes) window.__seen.lengths.push(n.textContent.length);
    }
  }).observe(document.body, {attributes: true, attributeFilter: ["data-state"], attributeOldValue: true,
                             childList: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def server_url(chat_server):
    """The session's `planck serve` process (tests/conftest.py)."""
    return chat_server.url


def test_page_streams_a_reply_and_sends_the_history(server_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            sent = []
            page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
            page.goto(server_url)
            expect(page.locator("#model")).to_have_text("chat", timeout=30_000)
            page.evaluate(RECORDER)
            page.fill("#temperature", "0")  # greedy: the same reply every run
            page.fill("#max_tokens", "60")
            page.fill("#prompt", "Hello there")
            page.click("#send")
            page.wait_for_function("() => window.__seen.states.includes('streaming') && document.body.dataset.state === 'idle'",
                                   timeout=60_000)

            assistant = page.locator(".message.assistant")
            expect(assistant).to_have_count(1)
            first = assistant.first.text_content()
            assert first.strip()
            lengths = page.evaluate("() => window.__seen.lengths")
            assert lengths == sorted(lengths) and lengths[-1] == len(first)
            assert len(set(lengths)) >= 5, f"the reply arrived in too few pieces to have streamed: {lengths}"
            expect(page.locator(".note")).to_have_text("(stopped: length limit)")
            assert sent[0]["stream"] is True and sent[0]["max_tokens"] == 60 and sent[0]["temperature"] == 0
            assert sent[0]["messages"] == [{"role": "user", "content": "Hello there"}]

            page.fill("#prompt", "Tell me more")
            page.press("#prompt", "Enter")
            page.wait_for_function(
                "() => document.querySelectorAll('.message.assistant').length === 2 && document.body.dataset.state === 'idle'",
                timeout=60_000,
            )
            expect(page.locator(".message.user")).to_have_count(2)
            expect(page.locator(".message.error")).to_have_count(0)
            assert assistant.nth(1).text_content().strip()
            assert sent[1]["messages"] == [
                {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": first},
                {"role": "user", "content": "Tell me more"},
            ]
        finally:
            browser.close()
    load = httpx.get(f"{server_url}/health").json()
    assert load["busy"] == 0 and load["waiting"] == 0


@pytest.fixture(scope="module")
def keyed_url(chat_checkpoint):
    """The API behind --api-key, in this process (uvicorn in a thread)."""
    import threading
    import time

    import uvicorn
    from conftest import free_port

    from planck.serve.api import ServeOptions, create_app
    from planck.serve.batcher import Batcher
    from planck.serve.engine import Engine
    from planck.serve.guard import Access, AccessLog
    from planck.serve.http import server_config
    from planck.serve.weights import load_for_serving

    loaded = load_for_serving(chat_checkpoint)
    engine = Engine(loaded, slots=1)
    engine.warm_up()
    batcher = Batcher(engine, chat=True)
    port = free_port()
    app = create_app(batcher, loaded, options=ServeOptions(access=Access.for_bind("127.0.0.1", api_key="page-key")))
    srv = uvicorn.Server(server_config(app, "127.0.0.1", port, AccessLog()))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        assert thread.is_alive()
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=20)
    batcher.close()


def test_page_asks_for_the_api_key_once_and_keeps_it(keyed_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            asked = []
            page.on("dialog", lambda d: (asked.append(d.message), d.accept("page-key")))
            page.goto(keyed_url)
            expect(page.locator("#model")).to_have_text("chat", timeout=30_000)  # /v1/models: 401, asked, retried
            assert len(asked) == 1 and "API key" in asked[0]
            assert page.evaluate("() => localStorage.getItem('planck-api-key')") == "page-key"
            page.fill("#max_tokens", "5")
            page.fill("#prompt", "Hello there")
            page.click("#send")
            page.wait_for_function("() => document.querySelectorAll('.message.assistant').length === 1 "
                                   "&& document.body.dataset.state === 'idle'", timeout=60_000)
            expect(page.locator(".message.error")).to_have_count(0)
            page.reload()  # the key is kept: no second question
            expect(page.locator("#model")).to_have_text("chat", timeout=30_000)
            assert len(asked) == 1
        finally:
            browser.close()

"""The chat page against a live `planck serve`: in headless Chromium a reply streams in, the next turn sends the
conversation so far, and turns that no longer fit the context are said to be left out; every URL the page fetches
is answered with a 2xx."""

from __future__ import annotations

import contextlib
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from planck.schemas.rows import Message
from planck.serve.api import chat_page
from planck.serve.guard import DROPPED_HEADER
from planck.serve.prompt import chat_prompt

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

@contextlib.contextmanager
def browser_page():
    """A page of a fresh headless Chromium, closed on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b.new_page()
        finally:
            b.close()


browser = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system browser /usr/bin/chromium (CI installs it)")
CONTEXT = 128  # the test model's (tests/conftest.py)

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


@browser
def test_page_streams_a_reply_and_sends_the_history(server_url):
    from playwright.sync_api import expect

    with browser_page() as page:
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
    load = httpx.get(f"{server_url}/health").json()
    assert load["busy"] == 0 and load["waiting"] == 0


APP_ORIGIN = "http://app.example"  # an --allowed-origin page


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
    access = Access.for_bind("127.0.0.1", api_key="page-key", allowed_origins=(APP_ORIGIN,))
    app = create_app(batcher, loaded, options=ServeOptions(access=access))
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


@browser
def test_page_asks_for_the_api_key_once_and_keeps_it(keyed_url):
    from playwright.sync_api import expect

    with browser_page() as page:
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


# ---- every request the page makes succeeds --------------------------------------------------


class _Links(HTMLParser):
    """The URLs of a page's src and href attributes, and its inline scripts' text."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"
        self.urls += [value for name, value in attrs if name in ("src", "href", "action", "poster") and value]

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def _call_args(text: str, open_paren: int) -> str:
    """The text between a call's parentheses (brackets counted, quoted strings skipped)."""
    depth, i, quote = 0, open_paren, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return text[open_paren + 1:i]
        i += 1
    raise AssertionError(f"unbalanced call at {open_paren}")


def page_requests(html: str) -> list[tuple[str, str]]:
    """(method, URL) of every request the page's HTML and script name with a literal URL."""
    links = _Links()
    links.feed(html)
    found = [("GET", url) for url in links.urls]
    for script in links.scripts:
        for m in re.finditer(r"\b(?:apiFetch|fetch)\s*\(\s*([\"'`])([^\"'`]*)\1", script):
            args = _call_args(script, script.index("(", m.start()))
            method = re.search(r"\bmethod\s*:\s*[\"'](\w+)[\"']", args)
            found.append((method[1].upper() if method else "GET", m[2]))
    return found


def test_every_url_the_page_fetches_is_answered(server_url):
    page = httpx.get(server_url + "/")
    assert page.status_code == 200 and page.text == chat_page()
    requests = page_requests(page.text)
    # The page must name its icon, or the browser asks for /favicon.ico on its own.
    assert re.search(r'<link rel="icon" href="data:,">', page.text)
    assert ("GET", "/v1/models") in requests and ("POST", "/v1/chat/completions") in requests
    for method, url in requests:
        if url.startswith("data:") or url.startswith("#"):
            continue  # nothing to fetch
        assert url.startswith("/") and not url.startswith("//"), f"{url}: the page must be self-contained (offline)"
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1} if method == "POST" else None
        r = httpx.request(method, server_url + url, json=body, timeout=60)
        assert 200 <= r.status_code < 300, f"{method} {url}: {r.status_code} {r.text[:200]}"
    # A browser asks for the icon anyway on pages that name none (/health, /docs): no 404 in the log.
    assert httpx.get(server_url + "/favicon.ico").status_code == 204


@browser
def test_loading_the_page_makes_no_failing_request(chat_server):
    from playwright.sync_api import expect

    start = len(chat_server.log.read_text())
    with browser_page() as page:
        page.goto(chat_server.url)
        expect(page.locator("#model")).to_have_text("chat", timeout=30_000)
        time.sleep(1.5)  # the browser's own requests (an icon) come after the page's
    # The browser's own requests (/favicon.ico) never reach the page's events: read the server's access log.
    served = re.findall(r'"(\w+) (\S+)" (\d{3})', chat_server.log.read_text()[start:])
    assert ("GET", "/", "200") in served and ("GET", "/v1/models", "200") in served
    assert all(status.startswith("2") for _, _, status in served), served


# ---- turns left out of the context -------------------------------------------------------------


def long_conversation(turns: int) -> list[Message]:
    """A system prompt and `turns` exchanges of ~25 tokens a message: far more than the 128-token context."""
    messages = [Message("system", "Be brief.")]
    for i in range(turns):
        messages += [Message("user", f"Question {i}: " + "tell me about the sea " * 5),
                     Message("assistant", f"Answer {i}: " + "the sea is wide and deep " * 4)]
    return [*messages, Message("user", "And now?")]


def as_json(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def test_chat_reply_says_how_many_messages_were_dropped(server_url):
    chat = server_url + "/v1/chat/completions"
    short = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert httpx.post(chat, json=short, timeout=60).headers[DROPPED_HEADER] == "0"
    messages = long_conversation(6)
    ids, dropped = chat_prompt(messages, CONTEXT, 10)
    assert 0 < dropped < 12 and dropped % 2 == 0  # the kept history opens with a user turn
    body = {"messages": as_json(messages), "max_tokens": 10, "temperature": 0}
    whole = httpx.post(chat, json=body, timeout=60)
    assert whole.status_code == 200 and whole.headers[DROPPED_HEADER] == str(dropped)
    assert whole.json()["usage"]["prompt_tokens"] == len(ids)  # what the header says is what the model was given
    with httpx.stream("POST", chat, json={**body, "stream": True}, timeout=60) as streamed:
        # Before the first token: a streaming client can say so as soon as the reply starts.
        assert streamed.status_code == 200 and streamed.headers[DROPPED_HEADER] == str(dropped)
        assert streamed.read().decode().rstrip().endswith("data: [DONE]")
    # Only the system prompt and the question left: all history dropped.
    alone = chat_prompt([messages[0], Message("user", "word " * 80)], CONTEXT, 10)
    assert len(alone[0]) < CONTEXT
    r = httpx.post(chat, json={**body, "messages": as_json([*messages[:-1], Message("user", "word " * 80)])}, timeout=60)
    assert r.status_code == 200 and r.headers[DROPPED_HEADER] == "12"
    # One message longer than the context: refused, nothing to count.
    r = httpx.post(chat, json={"messages": [{"role": "user", "content": "word " * 400}]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert DROPPED_HEADER not in r.headers
    r = httpx.post(chat, json={"messages": []}, timeout=60)
    assert r.status_code == 400 and DROPPED_HEADER not in r.headers
    doc = httpx.get(server_url + "/openapi.json").json()["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    assert doc["headers"][DROPPED_HEADER]["schema"] == {"type": "integer", "minimum": 0}


def test_an_allowed_origin_page_may_read_the_dropped_count(keyed_url):
    headers = {"Origin": APP_ORIGIN, "Authorization": "Bearer page-key"}
    r = httpx.post(keyed_url + "/v1/chat/completions", headers=headers, timeout=60,
                   json={"messages": as_json(long_conversation(3)), "max_tokens": 2})
    assert r.status_code == 200 and int(r.headers[DROPPED_HEADER]) > 0
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert DROPPED_HEADER.lower() in r.headers["access-control-expose-headers"].lower()


@browser
def test_page_says_when_earlier_turns_are_left_out(server_url):
    from playwright.sync_api import expect

    with browser_page() as page:
        sent, counts = [], []
        chat = lambda r: r.url.endswith("/v1/chat/completions")
        page.on("request", lambda r: sent.append(r.post_data_json) if chat(r) else None)
        page.on("response", lambda r: counts.append(r.headers.get(DROPPED_HEADER.lower())) if chat(r) else None)
        page.goto(server_url)
        expect(page.locator("#model")).to_have_text("chat", timeout=30_000)
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "60")
        idle = "() => document.body.dataset.state === 'idle' && document.querySelectorAll('.message.user').length === %d"
        turn = 0
        while "0" in counts[-1:] or not counts:  # until a reply reports dropped turns (two or three: 128 tokens)
            assert turn < 6, f"nothing was ever dropped: {counts}"
            turn += 1
            page.fill("#prompt", f"Question {turn}: " + "tell me about the sea " * 5)
            page.click("#send")
            page.wait_for_function(idle % turn, timeout=60_000)
            if counts[-1] == "0":
                expect(page.locator(".note.dropped")).to_have_count(0)
        dropped = int(counts[-1])
        assert dropped >= 2 and dropped % 2 == 0
        s = "" if dropped == 1 else "s"
        note = page.locator(".note.dropped")
        expect(note).to_have_text(f"({dropped} earlier message{s} left out of the model's context: "
                                  "the conversation no longer fits)")
        # The notice stands just above the question it was fitted for, and the left-out bubbles are faded.
        assert note.evaluate("el => el.nextElementSibling.classList.contains('user')")
        assert note.evaluate("el => el.nextElementSibling.textContent") == sent[-1]["messages"][-1]["content"]
        expect(page.locator(".message.dropped")).to_have_count(dropped)
        faded = page.locator(".message.dropped").all_text_contents()
        assert faded == [m["content"] for m in sent[-1]["messages"][:dropped]]

        # The next turn does not resend them: the page forgot them too, as `planck chat` does.
        reply = page.locator(".message.assistant").last.text_content()
        page.fill("#prompt", "And now?")
        page.click("#send")
        page.wait_for_function(idle % (turn + 1), timeout=60_000)
        assert sent[-1]["messages"] == [*sent[-2]["messages"][dropped:], {"role": "assistant", "content": reply},
                                        {"role": "user", "content": "And now?"}]
        # A message longer than the context alone: an error, and nothing else forgotten or noted.
        notes = note.count()
        page.fill("#prompt", "word " * 400)
        page.click("#send")
        expect(page.locator(".message.error")).to_contain_text("context", timeout=60_000)
        page.wait_for_function("() => document.body.dataset.state === 'idle'", timeout=60_000)
        assert page.locator(".note.dropped").count() == notes
        page.click("#clear")
        expect(page.locator(".note, .message")).to_have_count(0)

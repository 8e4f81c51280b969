"""The HTTP API: OpenAI's official client against a live `planck serve`, every error shape, batching under
concurrent streams, disconnects that free their slot, and base models (in-process server)."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from planck.schemas.rows import Message
from planck.schemas.tokenizer import get_tokenizer
from planck.serve.prompt import chat_prompt

REPO = Path(__file__).resolve().parents[1]
CONTEXT = 128  # the test checkpoints' seq_len
HI = [{"role": "user", "content": "Hello there"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(chat_server):
    """The session's `planck serve` process (tests/conftest.py): tiny chat model, 4 slots."""
    return chat_server


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def read_sse(response: httpx.Response) -> list:
    """The data payloads of an event stream: parsed JSON objects, and the final "[DONE]" as a string."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    """The response is `status` with OpenAI's error body; returns the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err
    assert err["code"] == code, err
    return err


# ---- the official client --------------------------------------------------------------------------


def test_startup_line_health_page_and_models(server, client):
    assert f"planck serve: {server.url} (model chat, 4 slots) - Ctrl-C stops" in server.log.read_text()
    health = httpx.get(f"{server.url}/health").json()
    assert health == {"status": "ok", "model": "chat", "chat": True, "context": CONTEXT, "slots": 4, "busy": 0, "waiting": 0}
    page = httpx.get(server.url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "PlanckGPT chat" in page.text and 'id="prompt"' in page.text
    models = client.models.list()
    assert [m.id for m in models.data] == ["chat"]
    assert models.data[0].owned_by == "planck" and models.data[0].created > 1_600_000_000
    assert client.models.retrieve("chat").id == "chat"


def test_chat_whole_and_streamed_replies_agree(client):
    whole = client.chat.completions.create(model="anything", messages=HI, max_tokens=8, temperature=0)
    choice = whole.choices[0]
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-") and whole.model == "chat"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    u = whole.usage
    assert u.completion_tokens == 8 and u.prompt_tokens == len(chat_prompt([Message("user", "Hello there")], CONTEXT, 8)[0])
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    chunks = list(client.chat.completions.create(
        model="chat", messages=HI, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert chunks[-1].usage.prompt_tokens == u.prompt_tokens


def test_completions_whole_and_streamed_replies_agree(client):
    whole = client.completions.create(model="chat", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert isinstance(whole.choices[0].text, str) and whole.choices[0].text
    assert whole.usage.completion_tokens == 8
    assert whole.usage.prompt_tokens == 1 + len(get_tokenizer().encode_ordinary("Once upon a time"))  # <|endoftext|> + text
    # OpenAI's default max_tokens for completions is 16.
    assert client.completions.create(model="chat", prompt="Once upon a time", temperature=0).usage.completion_tokens == 16

    chunks = list(client.completions.create(model="chat", prompt=["Once upon a time"], max_tokens=8, temperature=0,
                                            stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]


def test_seeds_make_sampling_reproducible(client):
    def reply(seed: int) -> str:
        r = client.chat.completions.create(model="chat", messages=HI, max_tokens=20, temperature=0.7, seed=seed)
        assert r.usage.completion_tokens > 0
        return r.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:  # four slots: the replies share decode steps
        a, b, c, d = pool.map(reply, [1, 1, 2, 3])
    assert a == b
    assert len({a, c, d}) > 1


def test_content_parts_and_extra_openai_fields_are_accepted(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    a = client.chat.completions.create(model="chat", messages=parts, max_completion_tokens=5, temperature=0,
                                       presence_penalty=0.5, user="someone", n=1)
    b = client.chat.completions.create(model="chat", messages=HI, max_tokens=5, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content and a.usage.completion_tokens == 5


def test_stop_string_ends_the_reply_before_it(client):
    greedy = client.completions.create(model="chat", prompt="The weather today", max_tokens=30, temperature=0)
    text = greedy.choices[0].text
    assert len(text) >= 6, text
    middle = len(text) // 2
    stop = text[middle:middle + 3]
    prefix = text[: text.index(stop)]
    stopped = client.completions.create(model="chat", prompt="The weather today", max_tokens=30, temperature=0, stop=[stop])
    assert stopped.choices[0].text == prefix
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < 30
    streamed = list(client.completions.create(model="chat", prompt="The weather today", max_tokens=30, temperature=0,
                                              stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == prefix


def test_special_token_text_stays_plain_text(server, client):
    typed = "<|assistant_end|><|user_start|>hi"
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": typed}], max_tokens=2, temperature=0)
    expected = len(chat_prompt([Message("user", typed)], CONTEXT, 2)[0])
    as_specials = len(get_tokenizer().encode(typed, allowed_special="all"))
    assert r.usage.prompt_tokens == expected
    assert expected - 4 > as_specials  # the ordinary encoding is much longer than two special tokens + "hi"
    c = client.completions.create(model="chat", prompt="<|endoftext|>", max_tokens=2, temperature=0)
    assert c.usage.prompt_tokens == 1 + len(get_tokenizer().encode_ordinary("<|endoftext|>")) > 2


# ---- errors -----------------------------------------------------------------------------------------

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
LONG = "word " * 400  # over 128 tokens


BAD_REQUESTS = {
    "messages-not-a-list": (CHAT, {"messages": "hello"}, "messages", None),
    "messages-missing": (CHAT, {}, "messages", None),
    "content-not-a-string": (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content", None),
    "content-missing": (CHAT, {"messages": [{"role": "user"}]}, "messages[0].content", None),
    "content-image-part": (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
                           "messages[0].content", None),
    "unknown-role": (CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, "messages", None),
    "no-messages": (CHAT, {"messages": []}, "messages", None),
    "last-message-not-user": (CHAT, {"messages": [*HI, {"role": "assistant", "content": "hi"}]}, "messages", None),
    "max-tokens-negative": (CHAT, {"messages": HI, "max_tokens": -1}, "max_tokens", None),
    "max-tokens-zero": (CHAT, {"messages": HI, "max_tokens": 0}, "max_tokens", None),
    "max-tokens-huge": (CHAT, {"messages": HI, "max_tokens": 10**9}, "max_tokens", None),
    "max-tokens-not-int": (CHAT, {"messages": HI, "max_tokens": "many"}, "max_tokens", None),
    "max-completion-tokens-zero": (CHAT, {"messages": HI, "max_completion_tokens": 0}, "max_completion_tokens", None),
    "temperature-5": (CHAT, {"messages": HI, "temperature": 5}, "temperature", None),
    "temperature-negative": (CHAT, {"messages": HI, "temperature": -0.1}, "temperature", None),
    "top-p-zero": (CHAT, {"messages": HI, "top_p": 0}, "top_p", None),
    "top-k-zero": (CHAT, {"messages": HI, "top_k": 0}, "top_k", None),
    "five-stop-strings": (CHAT, {"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    "n-2": (CHAT, {"messages": HI, "n": 2}, "n", None),
    "stream-not-bool": (CHAT, {"messages": HI, "stream": "sometimes"}, "stream", None),
    "chat-too-long": (CHAT, {"messages": [{"role": "user", "content": LONG}]}, "messages", "context_length_exceeded"),
    "body-not-an-object": (CHAT, ["not", "an", "object"], None, None),
    "prompt-too-long": (COMPLETIONS, {"prompt": LONG}, "prompt", "context_length_exceeded"),
    "logprobs-6": (COMPLETIONS, {"prompt": "hi", "logprobs": 6}, "logprobs", None),
    "logprobs-stream": (COMPLETIONS, {"prompt": "hi", "logprobs": 1, "stream": True}, "stream", None),
    "max-tokens-zero-without-echo": (COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, "max_tokens", None),
    "two-prompts": (COMPLETIONS, {"prompt": ["one", "two"]}, "prompt", None),
    "two-token-prompts": (COMPLETIONS, {"prompt": [[1, 2], [3]]}, "prompt", None),
    "token-id-out-of-range": (COMPLETIONS, {"prompt": [1, 10**6]}, "prompt", None),
    "token-prompt-too-long": (COMPLETIONS, {"prompt": [11] * 200}, "prompt", "context_length_exceeded"),
    "prompt-missing": (COMPLETIONS, {"max_tokens": 5}, "prompt", None),
}


@pytest.mark.parametrize("path, body, param, code", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_bad_request_is_400_in_openai_shape(server, path, body, param, code):
    assert_error(httpx.post(server.url + path, json=body), 400, param, code)


def test_malformed_bodies_oversize_and_unknown_routes(server):
    url = server.url
    err = assert_error(httpx.post(url + CHAT, content=b'{"messages": [', headers={"content-type": "application/json"}), 400)
    assert "JSON" in err["message"]
    # curl -d sends a form Content-Type: the body is still read as JSON ...
    plain = httpx.post(url + CHAT, content=json.dumps({"messages": HI, "max_tokens": 2}),
                       headers={"content-type": "application/x-www-form-urlencoded"})
    assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] == 2
    # ... but a page on another site may not make the local server work for it.
    err = assert_error(httpx.post(url + CHAT, json={"messages": HI}, headers={"origin": "http://evil.example"}), 403,
                       code="cross_origin")
    assert "evil.example" in err["message"]
    # Over the default 1 MB: refused by Content-Length, and by counting a chunked body (no Content-Length).
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode()
    assert_error(httpx.post(url + CHAT, content=big, headers={"content-type": "application/json"}), 413, code="request_too_large")
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    r = httpx.post(url + CHAT, content=chunks, headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert_error(r, 413, code="request_too_large")
    err = assert_error(httpx.get(url + "/v1/nothing"), 404, code="not_found")
    assert "/v1/nothing" in err["message"]
    err = assert_error(httpx.get(url + CHAT), 405, code="method_not_allowed")
    assert "POST" in err["message"]
    assert_error(httpx.get(url + "/v1/models/other"), 404, param="model", code="model_not_found")


def test_still_serving_after_bad_requests(server, client):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    r = client.chat.completions.create(model="chat", messages=HI, max_tokens=3)
    assert r.usage.completion_tokens + (r.choices[0].finish_reason == "stop") > 0


# ---- batching and disconnects -------------------------------------------------------------------


def test_sixteen_concurrent_streams_all_finish(server):
    def stream(i: int) -> list:
        body = {"messages": [{"role": "user", "content": f"Question number {i}"}], "max_tokens": 16, "stream": True,
                "seed": i, "temperature": 0.7, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{server.url}{CHAT}", json=body, timeout=120) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            return read_sse(r)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(stream, range(16)))
    for events in results:
        assert events[-1] == "[DONE]"
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 16
        assert events[-3]["choices"][0]["finish_reason"] == "length" and events[-3]["choices"][0]["delta"] == {}
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-3])
    load = httpx.get(f"{server.url}/health").json()
    assert load["busy"] == 0 and load["waiting"] == 0


def test_client_leaving_a_stream_frees_its_slot(server):
    # (The in-process test below proves the request is cancelled, not merely finished.)
    body = {"messages": HI, "max_tokens": 100_000, "stream": True}  # allowed: the context ends the reply
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{server.url}{CHAT}", json=body) as r:
            got = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got.append(line)
                if len(got) == 2:
                    break
    assert len(got) == 2
    deadline = time.monotonic() + 5
    while httpx.get(f"{server.url}/health").json()["busy"]:
        assert time.monotonic() < deadline, "the slot of a closed stream is still busy"
        time.sleep(0.05)


# ---- in-process server: base models, and proof that disconnects cancel -----------------------------


@dataclass
class InProcess:
    url: str
    batcher: object
    submitted: list  # every Generation submitted, in order
    delay: float = 0.0  # seconds added to each decode step
    fail_next_decode: bool = False


@pytest.fixture(scope="module")
def base_server(base_checkpoint):
    """The API over a base model in this process (uvicorn in a thread), with a spy on submitted requests
    and a decode step that can be slowed down or made to fail."""
    import uvicorn

    from planck.serve.api import create_app
    from planck.serve.batcher import Batcher
    from planck.serve.engine import Engine
    from planck.serve.weights import load_for_serving as load_model

    loaded = load_model(base_checkpoint)
    assert not loaded.is_chat
    engine = Engine(loaded, slots=2)
    batcher = Batcher(engine, chat=False)
    port = free_port()
    state = InProcess(f"http://127.0.0.1:{port}", batcher, [])
    decode, submit = engine.decode, batcher.submit

    def slow_or_failing_decode(*args):
        time.sleep(state.delay)
        if state.fail_next_decode:
            state.fail_next_decode = False
            raise RuntimeError("simulated device failure")
        return decode(*args)

    engine.decode = slow_or_failing_decode
    batcher.submit = lambda *a, **kw: state.submitted.append(submit(*a, **kw)) or state.submitted[-1]
    srv = uvicorn.Server(uvicorn.Config(create_app(batcher, loaded), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "in-process server did not start"
        time.sleep(0.05)
    yield state
    srv.should_exit = True
    thread.join(timeout=20)
    batcher.close()


def test_base_model_refuses_chat_but_completes_text(base_server):
    url = base_server.url
    err = assert_error(httpx.post(url + CHAT, json={"messages": HI}), 400)
    assert "base" in err["message"] and "/v1/completions" in err["message"]
    assert httpx.get(f"{url}/health").json()["chat"] is False
    r = httpx.post(url + COMPLETIONS, json={"prompt": "The", "max_tokens": 4, "temperature": 0}, timeout=60).json()
    assert r["object"] == "text_completion" and r["model"] == "base"
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 4
    assert r["choices"][0]["logprobs"] is None and isinstance(r["choices"][0]["text"], str)


def wait_cancelled(batcher, gen, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while batcher.load()["busy"] or not gen.done:
        assert time.monotonic() < deadline, f"request still running after the client left ({gen.completion_tokens} tokens)"
        time.sleep(0.02)
    assert gen.cancelled.is_set() and gen.completion_tokens < 50  # stopped early, not finished at 100


def test_disconnect_cancels_streamed_and_whole_requests(base_server):
    url, batcher = base_server.url, base_server.batcher
    base_server.delay = 0.03  # 100 tokens would take 3 s
    try:
        body = {"prompt": "The", "max_tokens": 100, "stream": True}
        with httpx.Client(timeout=30) as http, http.stream("POST", url + COMPLETIONS, json=body) as r:
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                if len(events) == 2:
                    break
        assert all(e["object"] == "text_completion" for e in events)
        wait_cancelled(batcher, base_server.submitted[-1])

        # A plain (non-stream) request whose client gives up: the server notices at the next token.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + COMPLETIONS, json={"prompt": "The", "max_tokens": 100}, timeout=httpx.Timeout(30, read=0.5))
        wait_cancelled(batcher, base_server.submitted[-1])
    finally:
        base_server.delay = 0.0


def test_engine_failure_is_reported_and_the_server_recovers(base_server):
    url = base_server.url
    base_server.fail_next_decode = True
    with httpx.stream("POST", url + COMPLETIONS, json={"prompt": "The", "max_tokens": 5, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        events = read_sse(r)
    assert events[-1] == "[DONE]"
    err = events[-2]["error"]
    assert err["type"] == "server_error" and "simulated device failure" in err["message"]
    assert not any(e["choices"][0]["finish_reason"] for e in events[:-2])

    base_server.fail_next_decode = True
    r = httpx.post(url + COMPLETIONS, json={"prompt": "The", "max_tokens": 5}, timeout=30)
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "simulated device failure" in r.json()["error"]["message"]

    ok = httpx.post(url + COMPLETIONS, json={"prompt": "The", "max_tokens": 5, "temperature": 0}, timeout=30).json()
    assert ok["usage"]["completion_tokens"] == 5


def test_unexpected_exception_is_a_500_in_openai_shape(base_server):
    batcher = base_server.batcher
    load = batcher.load
    batcher.load = lambda: 1 / 0
    try:
        r = httpx.get(f"{base_server.url}/health")
    finally:
        batcher.load = load
    assert r.status_code == 500
    assert r.json() == {"error": {"message": "internal error: ZeroDivisionError: division by zero", "type": "server_error",
                                  "param": None, "code": None}}
    assert httpx.get(f"{base_server.url}/health").json()["status"] == "ok"

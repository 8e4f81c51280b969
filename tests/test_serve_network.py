"""planck serve facing a network: bounded work per request (conversation fitting), Host allow-list, API key,
CORS, back-pressure (429, queue timeout 503), header/body read deadlines, one log line per request
(a disconnect included), /metrics, /openapi.json, HEAD, malformed HTTP, a taken port, logprobs and echo."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from conftest import free_port, run_planck

from planck.schemas.chat_template import render_prompt
from planck.schemas.rows import Message
from planck.serve.prompt import REPLY_FRACTION, chat_prompt

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Hello there"}]
KEY = "sk-test-123"


# ---- fitting a conversation: linear, same rules as before --------------------------------------


def reference_chat_prompt(messages, context, max_tokens):
    """The old quadratic fitting (drop the oldest message, re-render, repeat): the rules the fast one must keep."""
    system = [m for m in messages if m.role == "system"]
    history = list(messages[len(system):-1])
    question = messages[-1]
    budget = context - max(1, min(max_tokens, context // REPLY_FRACTION))
    dropped = 0
    while True:
        ids = render_prompt([*system, *history, question])
        if len(ids) <= budget or not history:
            break
        history.pop(0)
        dropped += 1
        while history and history[0].role != "user":
            history.pop(0)
            dropped += 1
    return ids, dropped


def test_fitting_matches_the_old_rules_on_random_conversations():
    rng = random.Random(7)
    words = ["hello", "sea", "the", "ok", "question", "é", "日本", "<|user_start|>", "  ", "\n"]
    for case in range(300):
        n = rng.randint(0, 14)
        msgs = [Message("system", "Be brief.")] * rng.randint(0, 2)
        for i in range(n):
            role = rng.choice(["user", "assistant", "user", "assistant", "assistant"])
            msgs.append(Message(role, " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))))
        msgs.append(Message("user", " ".join(rng.choice(words) for _ in range(rng.randint(1, 20)))))
        context, max_tokens = rng.choice([64, 128, 256]), rng.randint(1, 300)
        try:
            want = reference_chat_prompt(msgs, context, max_tokens)
        except Exception as exc:  # pragma: no cover - the reference never raises
            raise AssertionError(exc)
        if len(want[0]) >= context:
            with pytest.raises(ValueError, match="context holds"):
                chat_prompt(msgs, context, max_tokens)
        else:
            assert chat_prompt(msgs, context, max_tokens) == want, case


def test_fitting_a_16001_message_conversation_takes_well_under_a_second():
    def conversation(n: int) -> list[Message]:
        turns = [Message("user" if i % 2 == 0 else "assistant", f"message number {i} of a very long chat") for i in range(n - 1)]
        return [Message("system", "Be brief."), *turns[:-1], Message("user", "And now?")]

    for n in (1_001, 16_001):
        msgs = conversation(n)
        start = time.perf_counter()
        ids, dropped = chat_prompt(msgs, 1024, 256)
        took = time.perf_counter() - start
        assert took < 0.5, f"{n} messages took {took:.2f} s"
        assert len(ids) <= 1024 - 256 and dropped > n - 200
    # A question far too long for the context is refused by its size, before any tokenizing.
    start = time.perf_counter()
    with pytest.raises(ValueError, match="at least .* tokens"):
        chat_prompt([Message("user", "x" * 900_000)], 1024, 256)
    assert time.perf_counter() - start < 0.05


def test_a_16001_message_body_is_answered_quickly(chat_server):
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i}"} for i in range(16_000)]
    body = {"messages": [*msgs, {"role": "user", "content": "And now?"}], "max_tokens": 2}
    assert len(json.dumps(body)) > 500_000
    start = time.perf_counter()
    r = httpx.post(chat_server.url + CHAT, json=body, timeout=30)
    took = time.perf_counter() - start
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] <= 128 - 2
    assert took < 2.0, f"a 16,001-message body took {took:.2f} s"


# ---- the shared server: Host, HEAD, OpenAPI, metrics, malformed HTTP --------------------------


def raw_http(url: str, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes to the server and read until it closes (or read_timeout)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def test_dns_rebinding_host_is_refused_before_any_work(chat_server):
    url = chat_server.url
    port = url.rsplit(":", 1)[1]
    headers = {"host": f"evil.example:{port}", "origin": f"http://evil.example:{port}"}
    r = httpx.post(url + CHAT, json={"messages": HI, "max_tokens": 2}, headers=headers)
    assert r.status_code == 421 and r.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(url + "/health", headers={"host": "evil.example"}).status_code == 421
    for ok_host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(url + "/health", headers={"host": ok_host}).status_code == 200


def test_head_openapi_metrics_and_malformed_http(chat_server):
    url = chat_server.url
    head = httpx.head(url + "/health")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    assert httpx.head(url + "/v1/models").status_code == 200
    spec = httpx.get(url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"} <= set(spec["paths"])
    assert spec["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert "logprobs" in spec["components"]["schemas"]["CompletionRequest"]["properties"]
    docs = httpx.get(url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    httpx.post(url + CHAT, json={"messages": HI, "max_tokens": 2})
    metrics = httpx.get(url + "/metrics").text
    for name in ("planck_requests_total", "planck_prompt_tokens_total", "planck_completion_tokens_total",
                 "planck_queue_depth", "planck_busy_slots", "planck_time_to_first_token_seconds_bucket",
                 "planck_time_per_output_token_seconds_bucket"):
        assert name in metrics, name
    assert 'planck_requests_total{path="/v1/chat/completions",status="200"}' in metrics
    reply = raw_http(url, b"GARBAGE\r\n\r\n")
    head_, _, body = reply.partition(b"\r\n\r\n")
    assert head_.startswith(b"HTTP/1.1 400") and b"application/json" in head_
    assert json.loads(body)["error"]["code"] == "malformed_http"
    weird = httpx.request("BREW", url + "/v1/models")
    assert weird.status_code == 405 and weird.json()["error"]["code"] == "method_not_allowed"


def test_access_log_has_one_line_per_request_and_no_prompt_text(chat_server):
    secret = "my-secret-prompt-words"
    r = httpx.post(chat_server.url + CHAT, json={"messages": [{"role": "user", "content": secret}], "max_tokens": 3})
    assert r.status_code == 200
    time.sleep(0.2)
    log = chat_server.log.read_text()
    assert secret not in log
    lines = [l for l in log.splitlines() if '"POST /v1/chat/completions" 200' in l]
    # The shared server's log also holds other tests' requests (some end before a first token); the newest is ours.
    assert lines and all(f in lines[-1] for f in ("prompt=", "completion=", "ttft=", "total="))
    assert "Traceback" not in log


# ---- in-process servers with options ------------------------------------------------------------


@dataclass
class Live:
    url: str
    batcher: object
    delay: list  # [seconds added to each decode step]


@pytest.fixture(scope="module")
def guarded(chat_checkpoint):
    """A chat model behind --api-key, one slot, at most one waiting request, a 0.6 s queue timeout and 1 s read deadlines."""
    import uvicorn

    from planck.serve.api import ServeOptions, create_app
    from planck.serve.batcher import Batcher
    from planck.serve.engine import Engine
    from planck.serve.guard import Access, AccessLog
    from planck.serve.http import server_config
    from planck.serve.weights import load_for_serving

    loaded = load_for_serving(chat_checkpoint)
    engine = Engine(loaded, slots=1)
    engine.warm_up()
    batcher = Batcher(engine, chat=True, queue_timeout=0.6)
    delay = [0.0]
    decode = engine.decode
    engine.decode = lambda *a: (time.sleep(delay[0]), decode(*a))[1]
    port = free_port()
    options = ServeOptions(access=Access.for_bind("127.0.0.1", api_key=KEY, allowed_origins=("http://app.example",)),
                           max_waiting=1)
    config = server_config(create_app(batcher, loaded, options=options), "127.0.0.1", port, AccessLog(),
                           header_timeout=1.0, body_timeout=1.0)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    yield Live(f"http://127.0.0.1:{port}", batcher, delay)
    srv.should_exit = True
    thread.join(timeout=20)
    batcher.close()


AUTH = {"authorization": f"Bearer {KEY}"}


def test_api_key_is_required_on_v1_and_health_stays_open(guarded):
    url = guarded.url
    for headers, why in (({}, "no API key"), ({"authorization": "Bearer wrong"}, "incorrect"),
                         ({"authorization": KEY}, "incorrect")):
        r = httpx.post(url + CHAT, json={"messages": HI, "max_tokens": 2}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and why in err["message"] and err["type"] == "invalid_request_error"
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/health").status_code == 200
    r = httpx.post(url + CHAT, json={"messages": HI, "max_tokens": 2}, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    from openai import AuthenticationError, OpenAI

    assert OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0).models.list().data[0].id == "chat"
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()


def test_cors_for_allowed_origins_only(guarded):
    url = guarded.url
    pre = httpx.options(url + CHAT, headers={"origin": "http://app.example", "access-control-request-method": "POST"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://app.example"
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    r = httpx.post(url + CHAT, json={"messages": HI, "max_tokens": 1}, headers={**AUTH, "origin": "http://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    r = httpx.post(url + CHAT, json={"messages": HI, "max_tokens": 1}, headers={**AUTH, "origin": "http://other.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_full_queue_is_429_and_a_long_wait_is_503(guarded):
    url = guarded.url
    guarded.delay[0] = 0.05  # 40 tokens: 2 s in the only slot
    try:
        def post(max_tokens: int) -> httpx.Response:
            return httpx.post(url + CHAT, json={"messages": HI, "max_tokens": max_tokens, "temperature": 0},
                              headers=AUTH, timeout=30)

        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(post, 40)
            deadline = time.monotonic() + 10
            while not guarded.batcher.load()["busy"]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            waiting = pool.submit(post, 5)
            while not guarded.batcher.load()["waiting"]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            full = post(5)
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert full.json()["error"]["code"] == "rate_limit_exceeded"
            late = waiting.result()
            assert late.status_code == 503 and late.json()["error"]["code"] == "queue_timeout"
            assert "retry-after" in late.headers
            assert busy.result().status_code == 200
    finally:
        guarded.delay[0] = 0.0


def test_slow_headers_and_bodies_are_cut_off(guarded):
    url = guarded.url
    start = time.monotonic()
    reply = raw_http(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n", read_timeout=10)
    assert reply.startswith(b"HTTP/1.1 408") and b"header_timeout" in reply
    assert time.monotonic() - start < 5
    body = json.dumps({"messages": HI, "max_tokens": 2}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    start = time.monotonic()
    reply = raw_http(url, head + body[:10], read_timeout=10)
    assert reply.startswith(b"HTTP/1.1 408") and b"body_timeout" in reply
    assert time.monotonic() - start < 5
    # An idle connection that never sends a byte is closed too.
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        start = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - start < 5


def test_a_client_leaving_mid_body_is_one_log_line(guarded, caplog):
    caplog.set_level(logging.INFO)
    body = json.dumps({"messages": HI, "max_tokens": 2}).encode()
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:5])
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while not any("client_disconnected" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)
    time.sleep(0.2)
    lines = [r for r in caplog.records if "client_disconnected" in r.getMessage()]
    assert len(lines) == 1 and '"POST /v1/chat/completions" 499' in lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_taken_port_is_refused_before_the_model_loads(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        start = time.monotonic()
        # A checkpoint that does not exist: the port is checked first, so this is not what fails.
        proc = run_planck("serve", "--checkpoint", tmp_path / "missing", "--port", port, check=False, timeout=60)
        took = time.monotonic() - start
    assert proc.returncode == 1
    assert (proc.stdout + proc.stderr).strip().splitlines() == [
        f"planck: error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another program is listening there: stop it or pick another --port)"], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 20  # the interpreter and imports; no model is loaded


# ---- logprobs and echo ----------------------------------------------------------------------------


def test_echo_logprobs_and_tokens(chat_server):
    """Text and token-id prompts score alike; lm-evaluation-harness's max_tokens 1 + echo request; plain logprobs."""
    import numpy as np

    from planck.schemas.chat_template import encode_text
    from planck.schemas.tokenizer import ENDOFTEXT_ID

    url = chat_server.url
    text = "The sea is wide and the sky"
    ids = encode_text(text)
    r = httpx.post(url + COMPLETIONS, json={"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 3}).json()
    lp = r["choices"][0]["logprobs"]
    assert r["choices"][0]["text"] == text and r["usage"]["completion_tokens"] == 0
    assert len(lp["tokens"]) == len(ids) and "".join(lp["tokens"]) == text
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][0] == 0 and lp["text_offset"][1] == len(lp["tokens"][0])
    assert all(len(t) == 3 for t in lp["top_logprobs"][1:])
    assert all(max(t.values()) >= v - 1e-6 for t, v in zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:]))
    same = httpx.post(url + COMPLETIONS, json={"prompt": [ids], "max_tokens": 0, "echo": True, "logprobs": 1}).json()
    assert np.allclose(same["choices"][0]["logprobs"]["token_logprobs"][1:], lp["token_logprobs"][1:], atol=1e-5)
    # lm-evaluation-harness's request: max_tokens 1 with echo; the reply lists the prompt and one more token.
    one = httpx.post(url + COMPLETIONS, json={"prompt": [ids], "max_tokens": 1, "echo": True, "logprobs": 1,
                                              "temperature": 0}).json()["choices"][0]
    assert len(one["logprobs"]["tokens"]) == len(ids) + 1 and one["text"].startswith(text)
    assert np.allclose(one["logprobs"]["token_logprobs"][1:-1], lp["token_logprobs"][1:], atol=1e-5)
    # Greedy: the generated token is the likeliest, its logprob the top one.
    assert abs(one["logprobs"]["token_logprobs"][-1] - max(one["logprobs"]["top_logprobs"][-1].values())) < 1e-5
    plain = httpx.post(url + COMPLETIONS, json={"prompt": text, "max_tokens": 3, "logprobs": 2, "temperature": 0}).json()
    plp = plain["choices"][0]["logprobs"]
    assert len(plp["tokens"]) == 3 and all(v is not None for v in plp["token_logprobs"])
    assert "".join(plp["tokens"]) == plain["choices"][0]["text"]
    assert ENDOFTEXT_ID not in ids


def test_prompt_logprobs_match_a_direct_forward(base_checkpoint):
    """The scorer's numbers are log_softmax of the model's logits after <|endoftext|> + the prompt."""
    import jax
    import numpy as np

    from planck.schemas.chat_template import encode_text
    from planck.schemas.tokenizer import ENDOFTEXT_ID
    from planck.serve.scoring import Scorer
    from planck.serve.weights import load_for_serving

    loaded = load_for_serving(base_checkpoint)
    seq = [ENDOFTEXT_ID, *encode_text("Multiple choice question:\n\nAnswer:"), encode_text(" A")[0]]
    scores = Scorer(loaded)(seq)
    logits = np.asarray(loaded.model(np.asarray([seq], np.int32)))[0]
    want = np.asarray(jax.nn.log_softmax(logits, axis=-1))[np.arange(len(seq) - 1), seq[1:]]
    assert np.allclose(scores.logprobs, want, atol=1e-4)

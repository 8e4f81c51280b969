"""What every HTTP request passes before the API sees it, and what is recorded after: the Host allow-list
(DNS rebinding), the API key, cross-origin rules (CORS for --allowed-origin pages), HEAD on GET routes,
one access-log line and the Prometheus metrics.

A pure ASGI middleware, outermost: a refused request costs no body read, no parsing and no tokenizing.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("planck.serve.access")

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
ROUTES = ("/", "/favicon.ico", "/health", "/metrics", "/openapi.json", "/docs", "/v1/models", "/v1/chat/completions",
          "/v1/completions")
# Our own response headers, which an --allowed-origin page's script may only read when CORS exposes them.
DROPPED_HEADER = "X-Planck-Dropped-Messages"  # chat: how many old messages were left out to fit the context
EXPOSED_HEADERS = DROPPED_HEADER.encode("latin-1")


@dataclass
class Access:
    """Who may call the server: Host names (`*`: any), an API key for /v1/*, and other origins' pages (CORS)."""

    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()

    @classmethod
    def for_bind(cls, host: str, extra_hosts: tuple[str, ...] = (), **kw) -> "Access":
        """The default allow-list for a bound address: that address, localhost and 127.0.0.1 (and any extra)."""
        hosts = tuple(dict.fromkeys(h.lower().strip("[]") for h in (host, *LOCAL_HOSTS, *extra_hosts)))
        return cls(allowed_hosts=hosts, **kw)


def host_name(host_header: str) -> str:
    """'example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1' (lower case)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def error_json(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """OpenAI's error object as bytes (the API module builds the same through error_body)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


class AccessLog:
    """One line per request: method, path, status, token counts, time to first token and total time (never the text)."""

    def __init__(self, as_json: bool = False):
        self.as_json = as_json

    def line(self, client: str, method: str, path: str, status: int, total_s: float, info: dict) -> None:
        rec = {"client": client, "method": method, "path": path, "status": status}
        for key in ("prompt_tokens", "completion_tokens"):
            if info.get(key) is not None:
                rec[key] = info[key]
        if info.get("ttft_s") is not None:
            rec["ttft_s"] = round(info["ttft_s"], 4)
        rec["total_s"] = round(total_s, 4)
        if info.get("error"):
            rec["error"] = info["error"]
        if self.as_json:
            access_log.info(json.dumps({"time": round(time.time(), 3), **rec}, separators=(",", ":")))
            return
        parts = [f'{client} "{method} {path}" {status}']
        if "prompt_tokens" in rec:
            parts.append(f"prompt={rec['prompt_tokens']} completion={rec.get('completion_tokens', 0)}")
        if "ttft_s" in rec:
            parts.append(f"ttft={rec['ttft_s']:.3f}s")
        parts.append(f"total={rec['total_s']:.3f}s")
        if "error" in rec:
            parts.append(f"error={rec['error']}")
        access_log.info(" ".join(parts))


def log_to_stdout() -> None:
    """Access lines on stdout, prefixed like the rest of planck serve's output."""
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("planck serve: %(message)s"))
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


# Latency buckets in seconds: loopback TTFT of a tiny model is milliseconds, a 150M model's on a CPU about a second.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps may share a process in tests)."""

    def __init__(self, load: Callable[[], dict]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("planck_requests", "HTTP requests answered, by path and status", ["path", "status"], registry=r)
        self.prompt_tokens = Counter("planck_prompt_tokens", "prompt tokens of answered requests", registry=r)
        self.completion_tokens = Counter("planck_completion_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("planck_time_to_first_token_seconds", "request arrival to its first sampled token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.per_token = Histogram("planck_time_per_output_token_seconds", "mean time between a request's tokens after the first",
                                   buckets=TOKEN_BUCKETS, registry=r)
        self.duration = Histogram("planck_request_duration_seconds", "request arrival to the end of its response",
                                  buckets=TTFT_BUCKETS, registry=r)
        Gauge("planck_queue_depth", "requests waiting for a slot", registry=r).set_function(lambda: load()["waiting"])
        Gauge("planck_busy_slots", "slots generating", registry=r).set_function(lambda: load()["busy"])
        Gauge("planck_slots", "slots", registry=r).set_function(lambda: load()["slots"])

    def observe(self, path: str, status: int, total_s: float, info: dict) -> None:
        self.requests.labels(path if path in ROUTES or path.startswith("/v1/models/") else "other", str(status)).inc()
        self.duration.observe(total_s)
        self.prompt_tokens.inc(info.get("prompt_tokens") or 0)
        done = info.get("completion_tokens") or 0
        self.completion_tokens.inc(done)
        ttft = info.get("ttft_s")
        if ttft is not None:
            self.ttft.observe(ttft)
            if done > 1 and info.get("end_s") is not None:
                self.per_token.observe(max(0.0, info["end_s"] - ttft) / (done - 1))


@dataclass
class Guard:
    """Pure ASGI middleware; see the module's docstring. `info` of a request: scope['state']['planck'], set by the API."""

    app: ASGIApp
    access: Access
    log: AccessLog
    metrics: Metrics | None = None
    cors_headers: list = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        method, path = scope["method"], scope["path"]
        client = "%s:%d" % tuple(scope["client"][:2]) if scope.get("client") else "-"
        info: dict = scope.setdefault("state", {}).setdefault("planck", {})
        status = 0
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        cors = origin is not None and origin in self.access.allowed_origins
        head = method == "HEAD"

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if cors:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"access-control-allow-origin", origin.encode("latin-1")),
                                                      (b"access-control-expose-headers", EXPOSED_HEADERS),
                                                      (b"vary", b"Origin")]}
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}  # HEAD: the GET's headers (Content-Length included), no body
            await send(message)

        async def refuse(code_status: int, message: str, code: str, extra: list | None = None) -> None:
            info["error"] = code
            body = error_json(code_status, message, code)
            await tracked_send({"type": "http.response.start", "status": code_status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]})
            await tracked_send({"type": "http.response.body", "body": body})

        try:
            refused = self._check(headers, method, path, origin, cors)
            if refused is not None:
                await refuse(*refused)
            elif method == "OPTIONS" and cors:  # a CORS preflight from an allowed origin
                await tracked_send({"type": "http.response.start", "status": 204, "headers": [
                    (b"access-control-allow-methods", b"GET, HEAD, POST, OPTIONS"),
                    (b"access-control-allow-headers", b"Authorization, Content-Type"),
                    (b"access-control-max-age", b"600")]})
                await tracked_send({"type": "http.response.body", "body": b""})
            else:
                if head:
                    scope = {**scope, "method": "GET"}
                await self.app(scope, receive, tracked_send)
        finally:
            total = time.monotonic() - start
            status = status or 500
            self.log.line(client, method, path, status, total, info)
            if self.metrics is not None:
                self.metrics.observe(path, status, total, info)

    def _check(self, headers: dict, method: str, path: str, origin: str | None, cors: bool) -> tuple | None:
        """(status, message, code, extra headers) when the request is refused, else None."""
        host = headers.get("host", "")
        if "*" not in self.access.allowed_hosts and host_name(host) not in self.access.allowed_hosts:
            # A page on evil.example whose name now resolves to this machine (DNS rebinding) sends Host: evil.example.
            return (421, f"this server does not answer for the host name {host!r}: start it with --allowed-host NAME "
                         "to serve under that name", "host_not_allowed")
        if origin is not None and not cors and method not in ("GET", "HEAD") and urlsplit(origin).netloc.lower() != host.lower():
            # A page on another site may still post to a server on localhost (a form needs no CORS preflight):
            # browsers name the page's origin on such requests; only our own page and --allowed-origin are served.
            return (403, f"requests from pages on {origin} are refused: only this server's own page and "
                         "--allowed-origin pages may call the API", "cross_origin")
        key = self.access.api_key
        if key is not None and (path == "/v1" or path.startswith("/v1/")) and method != "OPTIONS":
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if not auth:
                return (401, "no API key: send the header 'Authorization: Bearer KEY' (this server was started with "
                             "--api-key)", "invalid_api_key", [(b"www-authenticate", b"Bearer")])
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
                return (401, "incorrect API key provided", "invalid_api_key", [(b"www-authenticate", b"Bearer")])
        return None

"""The HTTP server: an OpenAI-compatible API over the batcher, and the chat page at /.

Endpoints: POST /v1/chat/completions (chat models), POST /v1/completions (any model: plain text or
token ids; `logprobs` and `echo` for scoring, as lm-evaluation-harness uses them), GET /v1/models,
GET /health, GET /metrics (Prometheus), GET /openapi.json, GET /docs and GET / (serve/web/index.html).
Requests and replies follow OpenAI's shapes, so the official clients work with
`base_url="http://HOST:PORT/v1"`; a chat reply also says, in the header X-Planck-Dropped-Messages,
how many of the oldest messages were left out to fit the context (0: none). Every error, ours or the
framework's, is OpenAI's `{"error": {"message", "type", "param", "code"}}` body. serve/guard.py
checks every request first (Host, API key, origin) and logs it; serve/http.py is the HTTP layer under
it (read deadlines).
"""

from __future__ import annotations

import codecs
import json
import logging
import secrets
import socket
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message as ASGIMessage, Receive, Scope, Send

from planck.model.weights import LoadedModel
from planck.schemas.rows import Message
from planck.schemas.tokenizer import get_tokenizer

from .batcher import DEFAULT_MAX_TOKENS, Batcher, Finished, SamplingParams, TextDelta
from .guard import DROPPED_HEADER, Access, AccessLog, Guard, Metrics, log_to_stdout
from .http import BODY_TIMEOUT, HEADER_TIMEOUT, server_config
from .prompt import PromptError, chat_prompt, check_messages, completion_prompt, token_prompt
from .scoring import MAX_LOGPROBS, Scorer

log = logging.getLogger(__name__)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_STOP_STRINGS = 4  # as OpenAI
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer a stream


# ---- errors ------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(message: str, status: int = 400, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object: client mistakes are invalid_request_error, our failures server_error."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error response in OpenAI's shape."""
    return JSONResponse(error_body(message, status, param, code), status_code=status, headers=headers)


def _field_path(loc: tuple) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


UNION_TAGS = {"str", "int", "list[str]", "list[int]", "list[list[int]]"}  # pydantic names union members in error paths


def _validation_error(errors: list[dict]) -> APIError:
    """The first pydantic error as a 400 naming the field."""
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    if loc[:1] in (("body",), ("query",), ("path",)):  # FastAPI's own errors first say where the value was
        loc = loc[1:]
    loc = tuple(part for part in loc if part not in UNION_TAGS)  # 'prompt.list[int]' -> 'prompt'
    if len(errors) > 1 and loc == ("prompt",):  # no member of the union matched
        return APIError(400, "prompt: expected a string, a list of one string, token ids or a list of one list of "
                             "token ids", param="prompt")
    field = _field_path(loc)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if not field:
        return APIError(400, f"the request body must be a JSON object ({msg})")
    if err.get("type") == "missing":
        return APIError(400, f"{field} is required", param=field)
    return APIError(400, f"{field}: {msg}", param=field)


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over `max_bytes`, by Content-Length up front and by counting chunked bodies."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"the request body is larger than the server's limit of {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await error_response(413, too_large, code="request_too_large")(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> ASGIMessage:
            # A chunked body has no Content-Length: count as it arrives. The endpoint is reading
            # the body when this raises, so the API's error handler answers the 413.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise APIError(413, too_large, code="request_too_large")
            return message

        await self.app(scope, counting_receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape: ours, FastAPI's 422 (made 400), 404/405 and anything unexpected."""

    def note(request: Request, code: str | None, status: int) -> None:
        request.scope.setdefault("state", {}).setdefault("planck", {})["error"] = code or str(status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        note(request, exc.code, exc.status)
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = _validation_error(list(exc.errors()))
        note(request, err.code, err.status)
        return error_response(err.status, err.message, err.param, err.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        what = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            message = f"no such endpoint: {what} (the API is /v1/chat/completions, /v1/completions and /v1/models)"
        elif exc.status_code == 405:
            message = f"method not allowed: {what} (allowed: {(exc.headers or {}).get('Allow', '?')})"
        else:
            message = str(exc.detail)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        note(request, code, exc.status_code)
        return error_response(exc.status_code, message, code=code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after sending this, so uvicorn logs the traceback; the server keeps serving.
        note(request, "internal_error", 500)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


# ---- requests ----------------------------------------------------------------------------------


def _join_text_parts(content: Any) -> Any:
    """Newer clients send content as a list of parts; this model reads text parts only."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise ValueError('content parts must be {"type": "text", "text": "..."}: this model reads text only')
        texts.append(part["text"])
    return "\n".join(texts)


def _one_or_list(value: Any) -> Any:
    """OpenAI fields that take a string or a list of strings, as a list."""
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[str], BeforeValidator(_one_or_list)]


class ChatMessage(BaseModel):
    """One message; fields other than role and content (name, ...) are ignored."""

    role: str
    content: Annotated[str, BeforeValidator(_join_text_parts)]


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class SamplingFields(BaseModel):
    """Fields both endpoints share; other OpenAI fields (presence_penalty, user, ...) are accepted and ignored."""

    model: str | None = None  # any name: this server holds one model
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # an extension: OpenAI has no top_k
    stop: StrList | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: list[str] | None) -> list[str] | None:
        if stop is not None and len(stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return stop


class ChatRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens


class CompletionRequest(SamplingFields):
    # Text, or token ids (lm-evaluation-harness sends [[ids]]); one prompt per request.
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None  # the reply repeats the prompt (and its logprobs) before the completion
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)  # token logprobs and the top N per position

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> str | list[int]:
        if isinstance(prompt, str):
            return prompt
        if prompt and all(isinstance(t, int) for t in prompt):
            return prompt
        if len(prompt) != 1:
            raise ValueError(f"expected one prompt, got {len(prompt)}: send one request per prompt")
        return prompt[0]


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    """The JSON body validated as `model`; any mistake is a 400 naming the field."""
    # Any Content-Type is read as JSON, so `curl -d '{...}'` works (serve/guard.py refuses other sites' pages).
    try:
        raw = await request.body()
    except ClientDisconnect:
        timeout = request.scope.get("state", {}).get("planck_read_timeout")
        if timeout is not None:  # serve/http.py already answered 408 and closed the connection
            raise APIError(408, f"the request's body did not arrive within {timeout:g} s", code="body_timeout") from None
        raise APIError(499, "the client disconnected while sending its body", code="client_disconnected") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc.errors()) from None


@dataclass
class Job:
    """A validated request, ready for the batcher."""

    ids: list[int]
    params: SamplingParams
    stop: list[str]
    stream: bool
    include_usage: bool
    logprobs: int | None = None  # completions: how many alternatives per token (None: no logprobs)
    echo: bool = False
    shown: int = 0  # completions: how many prompt ids (from the end) the client sent: echo shows those
    prompt_text: str = ""


def _sampling(req: SamplingFields, max_tokens: int | None, max_tokens_param: str, default_max: int) -> SamplingParams:
    """OpenAI's fields as SamplingParams; out-of-range values are 400s."""
    if req.n not in (None, 1):
        raise APIError(400, f"n {req.n}: only n=1 is supported (send several requests)", param="n")
    defaults = SamplingParams()
    temperature = defaults.temperature if req.temperature is None else req.temperature
    if not 0.0 <= temperature <= 2.0:  # OpenAI's range; the engine itself would take more
        raise APIError(400, f"temperature {temperature}: expected 0 (greedy) to 2", param="temperature")
    params = SamplingParams(
        temperature=temperature,
        top_k=defaults.top_k if req.top_k is None else req.top_k,
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        max_tokens=default_max if max_tokens is None else max_tokens,
        # OpenAI takes any 64-bit seed; the engine's is 32-bit, so fold it (still reproducible).
        seed=None if req.seed is None else req.seed % 2**32,
    )
    try:
        params.validate()
    except ValueError as exc:  # its message starts with the setting's name
        name = str(exc).split()[0]
        param = max_tokens_param if name == "max_tokens" else name
        raise APIError(400, str(exc).replace("max_tokens", param, 1), param=param) from None
    return params


def _job(req: SamplingFields, ids: list[int], params: SamplingParams) -> Job:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Job(ids, params, req.stop or [], bool(req.stream), include_usage)


# ---- replies -----------------------------------------------------------------------------------


@dataclass
class Reply:
    """What every chunk and response of one request repeats."""

    chat: bool
    model: str
    id: str = field(init=False)
    created: int = field(init=False)

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, piece: str | None, finish: str | None = None, role: bool = False) -> dict:
        """One streamed event: a delta for chat, a text piece for completions."""
        if self.chat:
            delta = {"role": "assistant"} if role else {}
            if piece is not None:
                delta["content"] = piece
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self.head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        return {**self.head("text_completion"), "choices": [choice]}

    def whole(self, text: str, done: Finished, logprobs: dict | None = None) -> dict:
        """The non-streamed response."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": done.reason}
            return {**self.head("chat.completion"), "choices": [choice], "usage": usage(done)}
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": done.reason}
        return {**self.head("text_completion"), "choices": [choice], "usage": usage(done)}


def usage(done: Finished) -> dict:
    """OpenAI's token counts."""
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _failure(done: Finished) -> APIError:
    """A request the engine ended without a reply: it failed, waited too long, or the server is shutting down."""
    if done.reason == "error":
        return APIError(500, f"generation failed: {done.error or 'unknown engine error'}")
    if done.reason == "timeout":
        return APIError(503, "the server is busy: the request waited too long for a free slot; retry later",
                        code="queue_timeout", headers={"Retry-After": "5"})
    return APIError(503, "the request was cancelled: the server is shutting down")


def sse(data: dict | str) -> str:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response whose generator is always closed, so a gone client's request is cancelled."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], events: AsyncIterator | None = None, **kw):
        super().__init__(content, **kw)
        self.events = events  # the batcher's stream: closed too, even if the body never started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # Starlette cancels the stream when the client disconnects (uvicorn's HTTP is ASGI 2.3);
            # a failed send instead leaves the generator suspended, so close it here either way.
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            if self.events is not None:
                await self.events.aclose()


def _record(request: Request, done: Finished | None, arrived: float) -> None:
    """Token counts and timings of a request for its access-log line and the metrics (serve/guard.py)."""
    info = request.scope.setdefault("state", {}).setdefault("planck", {})
    if done is None:
        return
    info["prompt_tokens"], info["completion_tokens"] = done.prompt_tokens, done.completion_tokens
    if done.first_token_s is not None:
        # The batcher's clock starts at submit; the request arrived a little earlier (body, tokenizing).
        info["ttft_s"] = done.first_token_s + (info.get("submitted_at", arrived) - arrived)
        info["end_s"] = time.monotonic() - arrived


async def _stream(events: AsyncIterator, first: Any, job: Job, reply: Reply, request: Request,
                  arrived: float) -> AsyncIterator[str]:
    """The SSE events of one started request; closing this generator cancels the request in the batcher."""
    if reply.chat:
        yield sse(reply.chunk("", role=True))
    done: Finished | None = None
    try:
        async with aclosing(events):
            event = first
            while True:
                if isinstance(event, TextDelta):
                    yield sse(reply.chunk(event.text))
                else:
                    done = event
                    break
                event = await anext(events)
    except Exception as exc:  # the 200 is already sent: report in the stream, as OpenAI does
        log.exception("stream %s failed", reply.id)
        yield sse(error_body(f"generation failed: {type(exc).__name__}: {exc}", 500))
    _record(request, done, arrived)
    if done is not None and done.reason in ("stop", "length"):
        yield sse(reply.chunk(None if reply.chat else "", finish=done.reason))
        if job.include_usage:
            yield sse({**reply.chunk(None), "choices": [], "usage": usage(done)})
    elif done is not None:
        err = _failure(done)
        log.warning("stream %s ended without a reply: %s", reply.id, err.message)
        yield sse(error_body(err.message, err.status))
    yield sse("[DONE]")


async def _collect(events: AsyncIterator, first: Any, request: Request) -> tuple[str, Finished | None]:
    """The whole reply; None instead of Finished when the client left (the request is then cancelled)."""
    parts: list[str] = []
    async with aclosing(events):
        event = first
        while True:
            if isinstance(event, Finished):
                return "".join(parts), event
            parts.append(event.text)
            # Nobody listens for a disconnect during a plain response: check at every piece.
            if await request.is_disconnected():
                return "".join(parts), None
            event = await anext(events)


class Server:
    """What the endpoints share: the batcher, the scorer, the queue limit."""

    def __init__(self, batcher: Batcher, loaded: LoadedModel, max_waiting: int):
        self.batcher, self.loaded, self.max_waiting = batcher, loaded, max_waiting
        self._scorer: Scorer | None = None
        tok = get_tokenizer()
        self.vocab = tok.n_vocab
        self.token_bytes = tok.decode_single_token_bytes
        self.decode = tok.decode

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            self._scorer = Scorer(self.loaded)
        return self._scorer

    def admit(self) -> None:
        """429 when the queue is full: a client should back off rather than wait behind max_waiting others."""
        waiting = self.batcher.load()["waiting"]
        if waiting >= self.max_waiting:
            raise APIError(429, f"the server is busy: {waiting} requests are waiting for a slot; retry later",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"})

    async def start(self, job: Job, request: Request) -> tuple[AsyncIterator, Any]:
        """Submit a job and wait for its first event (time in the queue, then prefill); failures before any text are errors."""
        self.admit()
        request.scope.setdefault("state", {}).setdefault("planck", {})["submitted_at"] = time.monotonic()
        events = self.batcher.astream(job.ids, job.params, job.stop)
        try:
            first = await anext(events)
        except ValueError as exc:
            await events.aclose()
            raise APIError(400, str(exc)) from None
        except BaseException:
            await events.aclose()
            raise
        if isinstance(first, Finished) and first.reason not in ("stop", "length"):
            await events.aclose()
            raise _failure(first)
        return events, first

    async def answer(self, job: Job, reply: Reply, request: Request, arrived: float,
                     headers: dict[str, str] | None = None) -> Response:
        """A streamed or whole response for a validated job, with `headers` added."""
        headers = headers or {}
        if job.params.max_tokens == 0:  # echo with max_tokens 0: the prompt's logprobs, no generation
            self.admit()
            text, done = "", Finished("length", len(job.ids), 0)
        else:
            events, first = await self.start(job, request)
            if job.stream:
                return EventStream(_stream(events, first, job, reply, request, arrived), events,
                                   headers={**SSE_HEADERS, **headers})
            text, done = await _collect(events, first, request)
            if done is None:  # the client is gone; this response goes nowhere
                raise APIError(499, "client closed the request", code="client_disconnected")
            if done.reason not in ("stop", "length"):
                err = _failure(done)
                log.warning("request %s ended without a reply: %s", reply.id, err.message)
                raise err
        _record(request, done, arrived)
        logprobs = None
        if job.logprobs is not None or job.echo:
            logprobs = await self.logprobs(job, done.completion_ids, text)
            if job.echo:
                text = job.prompt_text + text
        return JSONResponse(reply.whole(text, done, logprobs if job.logprobs is not None else None), headers=headers)

    async def logprobs(self, job: Job, completion_ids: list[int], completion_text: str) -> dict:
        """OpenAI's legacy logprobs object: tokens, token_logprobs, top_logprobs, text_offset.

        Scored in one causal forward over the prompt and the completion (at most the context), so a
        prompt token's logprob is that of the model reading it (the same logits `planck eval` takes).
        With echo the prompt's tokens come first and the very first has no logprob (null), as OpenAI.
        """
        seq = [*job.ids, *completion_ids]
        first = len(job.ids) - job.shown if job.echo else len(job.ids)  # index in seq of the first listed token
        scores = await run_in_threadpool(self.scorer, seq) if len(seq) >= 2 else None
        n_top = job.logprobs or 0
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        at = 0
        for j in range(first, len(seq)):
            piece = self.token_bytes(seq[j])
            tokens.append(piece.decode("utf-8", errors="replace"))
            offsets.append(at)
            at += len(decoder.decode(piece))
            if j == first and job.echo or scores is None or j == 0:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(float(scores.logprobs[j - 1]))
            top = {}
            for t, lp in zip(scores.top_ids[j - 1][:n_top], scores.top_logprobs[j - 1][:n_top]):
                top.setdefault(self.token_bytes(int(t)).decode("utf-8", errors="replace"), float(lp))
            top_logprobs.append(top)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


# ---- the app -----------------------------------------------------------------------------------


def chat_page() -> str:
    """serve/web/index.html, from an editable checkout or an installed wheel."""
    import planck.serve

    # planck.serve is a namespace package: search its __path__ (importlib.resources trips over the
    # editable install's path-hook entry on Python 3.11).
    for folder in planck.serve.__path__:
        page = Path(folder) / "web" / "index.html"
        if page.is_file():
            return page.read_text(encoding="utf-8")
    raise FileNotFoundError("serve/web/index.html is missing from this install")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body: every 4xx and 5xx of this server."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: str
    model: str
    chat: bool
    context: int
    slots: int
    busy: int
    waiting: int


ERRORS = {"default": {"model": ErrorResponse, "description": "an error in OpenAI's shape"}}
JSON_OR_SSE = {200: {"description": "the reply (stream: true gives server-sent events)",
                     "content": {"application/json": {"schema": {"type": "object"}},
                                 "text/event-stream": {"schema": {"type": "string"}}}}}
CHAT_REPLY = {200: {**JSON_OR_SSE[200], "headers": {DROPPED_HEADER: {
    "description": "how many of the oldest messages (after the system prompt) were left out to fit the context; 0: none",
    "schema": {"type": "integer", "minimum": 0}}}}}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, plus the request bodies the endpoints parse themselves (any Content-Type is read as JSON)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, model in (("/v1/chat/completions", ChatRequest), ("/v1/completions", CompletionRequest)):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
    app.openapi_schema = schema
    return schema


@dataclass
class ServeOptions:
    """How the app admits and records requests (the CLI's options; defaults suit the tests)."""

    access: Access = field(default_factory=Access)
    max_body_bytes: int = 1_000_000
    max_waiting: int | None = None  # requests waiting for a slot before 429s; default 4 x slots
    log_json: bool = False
    metrics: bool = True


def create_app(batcher: Batcher, loaded: LoadedModel, max_body_bytes: int = 1_000_000,
               options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI app serving `loaded` through `batcher`."""
    options = options or ServeOptions(max_body_bytes=max_body_bytes)
    # /docs is FastAPI's page: it loads Swagger UI's scripts from a CDN, so it needs a browser with internet.
    app = FastAPI(title="PlanckGPT", version="1", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json",
                  description="An OpenAI-compatible API over one PlanckGPT model.")
    app.openapi = lambda: _openapi(app)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    metrics = Metrics(batcher.load) if options.metrics else None
    app.add_middleware(Guard, access=options.access, log=AccessLog(options.log_json), metrics=metrics)
    _install_error_handlers(app)
    app.state.model_name, app.state.slots = loaded.name, batcher.engine.slots
    name, context = loaded.name, batcher.engine.context
    server = Server(batcher, loaded, options.max_waiting if options.max_waiting is not None else 4 * batcher.engine.slots)
    app.state.server = server
    page = chat_page()
    try:
        created = int(loaded.source.stat().st_mtime)
    except OSError:
        created = 0

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        # The page declares no icon of its own to fetch, but browsers still ask here for any other page
        # (/health, /docs): "no icon" rather than a 404 in the access log.
        return Response(status_code=204)

    @app.get("/health", response_model=Health, responses=ERRORS)
    async def health() -> dict:
        return {"status": "ok", "model": name, "chat": loaded.is_chat, "context": context, **batcher.load()}

    if metrics is not None:
        @app.get("/metrics", response_class=Response, responses={
            **ERRORS, 200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}})
        async def prometheus() -> Response:
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "planck"}

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
    async def model(model_id: str) -> dict:
        if model_id != name:
            raise APIError(404, f"model {model_id!r} not found: this server serves {name!r}", param="model",
                           code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", response_class=Response, responses={**ERRORS, **CHAT_REPLY})
    async def chat_completions(request: Request) -> Response:
        arrived = time.monotonic()
        req: ChatRequest = await _parse(request, ChatRequest)
        if not loaded.is_chat:
            raise APIError(400, f"model {name} is a base (pretrain-only) model and has no chat template: "
                                "send plain text to POST /v1/completions instead")
        max_tokens, param = req.max_tokens, "max_tokens"
        if req.max_completion_tokens is not None:
            max_tokens, param = req.max_completion_tokens, "max_completion_tokens"
        params = _sampling(req, max_tokens, param, DEFAULT_MAX_TOKENS)
        # "developer" is OpenAI's newer name for the system role.
        messages = [Message("system" if m.role == "developer" else m.role, m.content) for m in req.messages]
        try:
            check_messages(messages)  # the conversation's shape first, so any later PromptError means "too long"
        except PromptError as exc:
            raise APIError(400, str(exc), param="messages") from None
        server.admit()  # before tokenizing: a full queue costs nothing
        try:
            # Tokenizing up to a megabyte of text: off the event loop, so streams keep flowing.
            ids, dropped = await run_in_threadpool(chat_prompt, messages, context, params.max_tokens)
        except PromptError as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
        # A header, not a body field: it reaches a streaming client before the first token, and OpenAI's
        # clients neither need nor trip over it.
        return await server.answer(_job(req, ids, params), Reply(True, name), request, arrived,
                                   headers={DROPPED_HEADER: str(dropped)})

    @app.post("/v1/completions", response_class=Response, responses={**ERRORS, **JSON_OR_SSE})
    async def completions(request: Request) -> Response:
        arrived = time.monotonic()
        req: CompletionRequest = await _parse(request, CompletionRequest)
        if (req.logprobs is not None or req.echo) and req.stream:
            raise APIError(400, "logprobs and echo are answered whole: send them without stream", param="stream")
        score_only = req.max_tokens == 0 and req.echo
        if req.max_tokens == 0 and not req.echo:
            raise APIError(400, "max_tokens 0: expected 1 to 1000000 (0 only with echo: the prompt's logprobs)",
                           param="max_tokens")
        params = _sampling(req, 1 if score_only else req.max_tokens, "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
        if score_only:
            params.max_tokens = 0
        server.admit()
        try:
            if isinstance(req.prompt, str):
                ids = await run_in_threadpool(completion_prompt, req.prompt, context)
                shown, text = len(ids) - 1, req.prompt
            else:
                ids = token_prompt(req.prompt, context, server.vocab)
                shown = len(req.prompt)
                text = server.decode(req.prompt) if req.echo else ""
        except PromptError as exc:
            code = "context_length_exceeded" if "context" in str(exc) else None
            raise APIError(400, str(exc), param="prompt", code=code) from None
        job = _job(req, ids, params)
        job.logprobs, job.echo, job.shown, job.prompt_text = req.logprobs, bool(req.echo), shown, text
        return await server.answer(job, Reply(False, name), request, arrived)

    return app


def run_server(app: FastAPI, host: str, port: int, sock: socket.socket | None = None,
               header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT, log_json: bool = False) -> None:
    """Serve `app` with uvicorn until Ctrl-C (on `sock` when given: bound before the model loaded)."""
    shown = f"[{host}]" if ":" in host else host
    log_to_stdout()
    print(f"planck serve: http://{shown}:{port} (model {app.state.model_name}, {app.state.slots} slots) - Ctrl-C stops",
          flush=True)
    config = server_config(app, host, port, AccessLog(log_json), header_timeout, body_timeout)
    # Open streams get a few seconds to end on Ctrl-C.
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)

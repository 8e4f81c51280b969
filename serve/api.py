"""The HTTP server: an OpenAI-compatible API over the batcher, and the chat page at /.

Endpoints: POST /v1/chat/completions (chat models), POST /v1/completions (any model: plain text),
GET /v1/models, GET /health and GET / (serve/web/index.html). Requests and replies follow OpenAI's
shapes, so the official clients work with `base_url="http://HOST:PORT/v1"`; every error, ours or
the framework's, is OpenAI's `{"error": {"message", "type", "param", "code"}}` body.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, AsyncIterator
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message as ASGIMessage, Receive, Scope, Send

from planck.model.weights import LoadedModel
from planck.schemas.rows import Message

from .batcher import DEFAULT_MAX_TOKENS, Batcher, Finished, SamplingParams, TextDelta
from .prompt import PromptError, chat_prompt, check_messages, completion_prompt

log = logging.getLogger(__name__)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_STOP_STRINGS = 4  # as OpenAI
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer a stream


# ---- errors ------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


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


def _validation_error(errors: list[dict]) -> APIError:
    """The first pydantic error as a 400 naming the field."""
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    if loc[:1] in (("body",), ("query",), ("path",)):  # FastAPI's own errors first say where the value was
        loc = loc[1:]
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

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = _validation_error(list(exc.errors()))
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
        return error_response(exc.status_code, message, code=code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after sending this, so uvicorn logs the traceback; the server keeps serving.
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
    prompt: StrList
    echo: bool | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: list[str]) -> list[str]:
        if len(prompt) != 1:
            raise ValueError(f"expected one prompt, got {len(prompt)}: send one request per prompt")
        return prompt


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    """The JSON body validated as `model`; any mistake is a 400 naming the field."""
    # Any Content-Type is read as JSON, so `curl -d '{...}'` works. A page on another site could
    # still post to a server on localhost (a form needs no CORS preflight): browsers name the
    # page's origin on such requests, and only our own page's origin is served.
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise APIError(403, f"requests from pages on {origin} are refused: only this server's own page may call the API",
                       code="cross_origin")
    raw = await request.body()
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

    def whole(self, text: str, done: Finished) -> dict:
        """The non-streamed response."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": done.reason}
            return {**self.head("chat.completion"), "choices": [choice], "usage": usage(done)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": done.reason}
        return {**self.head("text_completion"), "choices": [choice], "usage": usage(done)}


def usage(done: Finished) -> dict:
    """OpenAI's token counts."""
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _failure(done: Finished) -> APIError:
    """A request the engine ended without a reply: it failed, or the server is shutting down."""
    if done.reason == "error":
        return APIError(500, f"generation failed: {done.error or 'unknown engine error'}")
    return APIError(503, "the request was cancelled: the server is shutting down")


def sse(data: dict | str) -> str:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response whose generator is always closed, so a gone client's request is cancelled."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # Starlette cancels the stream when the client disconnects (uvicorn's HTTP is ASGI 2.3);
            # a failed send instead leaves the generator suspended, so close it here either way.
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def _stream(batcher: Batcher, job: Job, reply: Reply) -> AsyncIterator[str]:
    """The SSE events of one request; closing this generator cancels the request in the batcher."""
    if reply.chat:
        yield sse(reply.chunk("", role=True))
    done: Finished | None = None
    try:
        async with aclosing(batcher.astream(job.ids, job.params, job.stop)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield sse(reply.chunk(event.text))
                else:
                    done = event
    except Exception as exc:  # the 200 is already sent: report in the stream, as OpenAI does
        log.exception("stream %s failed", reply.id)
        yield sse(error_body(f"generation failed: {type(exc).__name__}: {exc}", 500))
    if done is not None and done.reason in ("stop", "length"):
        yield sse(reply.chunk(None if reply.chat else "", finish=done.reason))
        if job.include_usage:
            yield sse({**reply.chunk(None), "choices": [], "usage": usage(done)})
    elif done is not None:
        err = _failure(done)
        log.warning("stream %s ended without a reply: %s", reply.id, err.message)
        yield sse(error_body(err.message, err.status))
    yield sse("[DONE]")


async def _collect(batcher: Batcher, job: Job, request: Request) -> tuple[str, Finished | None]:
    """The whole reply; None instead of Finished when the client left (the request is then cancelled)."""
    parts: list[str] = []
    try:
        async with aclosing(batcher.astream(job.ids, job.params, job.stop)) as events:
            async for event in events:
                if isinstance(event, Finished):
                    return "".join(parts), event
                parts.append(event.text)
                # Nobody listens for a disconnect during a plain response: check at every piece.
                if await request.is_disconnected():
                    return "".join(parts), None
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    return "".join(parts), None


async def _answer(batcher: Batcher, job: Job, reply: Reply, request: Request) -> Response:
    """A streamed or whole response for a validated job."""
    if job.stream:
        return EventStream(_stream(batcher, job, reply), headers=SSE_HEADERS)
    text, done = await _collect(batcher, job, request)
    if done is None:  # the client is gone; this response goes nowhere
        return error_response(499, "client closed the request")
    if done.reason not in ("stop", "length"):
        err = _failure(done)
        log.warning("request %s ended without a reply: %s", reply.id, err.message)
        raise err
    return JSONResponse(reply.whole(text, done))


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


def create_app(batcher: Batcher, loaded: LoadedModel, max_body_bytes: int = 1_000_000) -> FastAPI:
    """The FastAPI app serving `loaded` through `batcher`."""
    # No /docs: its page loads scripts from a CDN, and the serving machine may be offline.
    app = FastAPI(title="PlanckGPT", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _install_error_handlers(app)
    app.state.model_name, app.state.slots = loaded.name, batcher.engine.slots
    name, context = loaded.name, batcher.engine.context
    page = chat_page()
    try:
        created = int(loaded.source.stat().st_mtime)
    except OSError:
        created = 0

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, "chat": loaded.is_chat, "context": context, **batcher.load()}

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "planck"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        if model_id != name:
            raise APIError(404, f"model {model_id!r} not found: this server serves {name!r}", param="model",
                           code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
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
        try:
            # Tokenizing up to a megabyte of text: off the event loop, so streams keep flowing.
            ids, _dropped = await run_in_threadpool(chat_prompt, messages, context, params.max_tokens)
        except PromptError as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
        return await _answer(batcher, _job(req, ids, params), Reply(True, name), request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req: CompletionRequest = await _parse(request, CompletionRequest)
        if req.echo:
            raise APIError(400, "echo is not supported", param="echo")
        params = _sampling(req, req.max_tokens, "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
        try:
            ids = await run_in_threadpool(completion_prompt, req.prompt[0], context)
        except PromptError as exc:
            raise APIError(400, str(exc), param="prompt", code="context_length_exceeded") from None
        return await _answer(batcher, _job(req, ids, params), Reply(False, name), request)

    return app


def run_server(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` with uvicorn until Ctrl-C."""
    shown = f"[{host}]" if ":" in host else host
    print(f"planck serve: http://{shown}:{port} (model {app.state.model_name}, {app.state.slots} slots) - Ctrl-C stops",
          flush=True)
    # Warnings only: no line per request. Open streams get a few seconds to end on Ctrl-C.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)

"""The HTTP server under the app: uvicorn's h11 protocol with read deadlines and OpenAI-shaped protocol errors,
and the listening socket, bound before the model loads so a taken port fails in a second.

uvicorn alone waits forever for a request's headers and body (its keep-alive timeout only starts after a
response) and answers malformed HTTP with plain text. Here a connection must deliver its request line and
headers within `header_timeout` seconds of starting to send them (or of connecting) and its body within
`body_timeout` seconds of the headers; otherwise it gets a 408 and is closed.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from planck.schemas.errors import PlanckError

from .guard import AccessLog, error_json

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0


def protocol_class(log: AccessLog, header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT) -> type:
    """An H11Protocol with header and body deadlines, whose protocol errors are JSON and logged as one line."""

    class PlanckH11(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _phase: str | None = None
        _phase_start = 0.0

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _arm(self) -> None:
            """Start the deadline of the phase the connection is in, once per phase (more data does not extend it)."""
            if self.transport.is_closing():
                return self._cancel()
            state = self.conn.their_state
            phase = "header" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
            if phase == self._phase:
                return
            self._cancel()
            self._phase, self._phase_start = phase, time.monotonic()
            if phase is not None:
                limit = header_timeout if phase == "header" else body_timeout
                self._timer = self.loop.call_later(limit, self._expired)

        def _client(self) -> str:
            return "%s:%d" % tuple(self.client[:2]) if self.client else "-"

        def _expired(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self._phase == "header":
                if self.conn.trailing_data[0] or self.cycle is None:
                    # Part of a request (or nothing at all on a new connection) after header_timeout seconds.
                    if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:
                        self._write_error(408, f"the request's headers did not arrive within {header_timeout:g} s",
                                          "header_timeout")
                    log.line(self._client(), "-", "-", 408, time.monotonic() - self._phase_start, {"error": "header_timeout"})
                self.transport.close()
            elif self._phase == "body" and self.cycle is not None:
                cycle = self.cycle
                # The app, waiting in receive(), sees a disconnect and logs the request's 408 line itself.
                cycle.scope.setdefault("state", {})["planck_read_timeout"] = body_timeout
                if not cycle.response_started:
                    self._write_error(408, f"the request's body did not arrive within {body_timeout:g} s", "body_timeout")
                    cycle.response_started = True
                cycle.disconnected = True
                cycle.message_event.set()
                self.transport.close()

        def _write_error(self, status: int, message: str, code: str) -> None:
            body = error_json(status, message, code)
            try:
                out = self.conn.send(h11.Response(status_code=status, headers=[
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]))
                out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
            except h11.LocalProtocolError:  # h11 cannot answer in this state: just close
                return
            self.transport.write(out)

        def send_400_response(self, msg: str) -> None:
            # uvicorn calls this when h11 cannot parse the request (its reason is not kept).
            self._write_error(400, "malformed HTTP request: not a request this HTTP/1.1 server can read", "malformed_http")
            log.line(self._client(), "-", "-", 400, 0.0, {"error": "malformed_http"})
            self.transport.close()

    return PlanckH11


def bind_socket(host: str, port: int) -> socket.socket:
    """The server's socket, listening now: a taken port or a wrong address is a PlanckError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PlanckError(f"cannot listen on {host}:{port}: {exc.strerror} (--host takes an address or a name of this machine)") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart may reuse a port in TIME_WAIT
    try:
        # Listening at once: two sockets that only bound (SO_REUSEADDR) could share the port.
        # Connections made while the model loads wait in the backlog.
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = {errno.EADDRINUSE: " (another program is listening there: stop it or pick another --port)",
                errno.EACCES: " (ports below 1024 need privileges: pick another --port)",
                errno.EADDRNOTAVAIL: " (not an address of this machine: check --host)"}.get(exc.errno, "")
        raise PlanckError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def server_config(app, host: str, port: int, log: AccessLog, header_timeout: float = HEADER_TIMEOUT,
                  body_timeout: float = BODY_TIMEOUT) -> uvicorn.Config:
    """uvicorn's settings for planck serve: our protocol, no uvicorn access log, errors only from uvicorn itself."""
    return uvicorn.Config(
        app, host=host, port=port, http=protocol_class(log, header_timeout, body_timeout),
        log_level="error", access_log=False, timeout_keep_alive=5, timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=64 * 1024,  # request line and headers: 64 KB at most
    )

"""A threaded HTTP server on loopback with a small router: the one socket, threading and reply layer
under the simulator (`telemetry-pipeline simulate`) and every test double.

A server is a function `Request -> Reply` (usually a `Router`) served on 127.0.0.1, on a free port by
default. What each API answers stays with its server; only the plumbing lives here.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent: path and query, still percent-encoded
    headers: Mapping[str, str]  # names in lower case
    body: bytes = b""
    params: Mapping[str, str] = field(default_factory=dict)  # filled in by the route that matched

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def segments(self) -> list[str]:
        """The path's non-empty segments, each decoded after splitting (an encoded "/" stays inside)."""
        return [unquote(s) for s in self.path.split("/") if s]

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; a repeated one keeps its last value."""
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.target).query).items()}

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)  # Content-Length is added when sent


def json_reply(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return raw_reply(json.dumps(payload, separators=(",", ":")).encode(), status, headers)


def raw_reply(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None,
              content_type: str = "application/json") -> Reply:
    """`body` as it is (a test may serve broken JSON on purpose)."""
    return Reply(status, body, {"Content-Type": content_type, **(headers or {})})


def text_reply(text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    return raw_reply(text.encode(), status, headers, content_type="text/plain; charset=utf-8")


def empty_reply(status: int = 204, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, b"", dict(headers or {}))


class HTTPError(Exception):
    """Raised by a handler to answer `{"detail": message}` (or `payload`) with `status`."""

    def __init__(self, status: int, detail: str, payload: Any = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.payload = {"detail": detail} if payload is None else payload
        self.headers = dict(headers or {})


Handler = Callable[[Request], Reply]
_PARAM = re.compile(r"^\{(\w+)\}$")


class Router:
    """Method + path pattern -> handler. A pattern's `{name}` segment matches one (decoded) segment and is
    passed as `request.params[name]`; empty segments are ignored, so a trailing slash does not matter.
    Routes are tried in the order they were added; no match answers 404 `{"detail": not_found}`, or
    `not_found(request)` when it is a handler."""

    def __init__(self, not_found: str | Handler = "not found") -> None:
        self.not_found = not_found
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method.upper(), tuple(s for s in pattern.split("/") if s), handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler

        return register

    def __call__(self, request: Request) -> Reply:
        segments = request.segments
        try:
            for method, pattern, handler in self._routes:
                if method == request.method and (params := _match(pattern, segments)) is not None:
                    return handler(Request(request.method, request.target, request.headers, request.body, params))
            if callable(self.not_found):
                return self.not_found(request)
        except HTTPError as exc:
            return json_reply(exc.payload, exc.status, exc.headers)
        return json_reply({"detail": self.not_found}, 404)


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for expected, actual in zip(pattern, segments, strict=True):
        if name := _PARAM.match(expected):
            params[name.group(1)] = actual
        elif expected != actual:
            return None
    return params


class LoopbackServer:
    """Serves `handler` on `url` from a background thread; a context manager (start on enter, stop on exit).

    Keep-alive (HTTP/1.1, as httpx pools connections); `stop()` also hangs up on kept-alive clients, so a
    stopped server really stops answering. Quiet: no access log on stderr. A handler that raises answers 500.
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, name: str = "loopback") -> None:
        self.name = name
        self._server = _Server((host, port), handler)
        bound_port = self._server.server_address[1]
        self.url = f"http://{host}:{bound_port}"
        self._thread: threading.Thread | None = None
        self._stopping = threading.Lock()

    def start(self) -> LoopbackServer:
        """Serve on a background thread (idempotent); returns self."""
        if self._thread is None:
            # A short poll keeps `stop()` quick; the default 0.5 s would dominate test run time.
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=self.name, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and hang up on clients. Idempotent, and safe to call from several threads."""
        with self._stopping:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._server.shutdown()
                thread.join()
            self._server.close_connections()
            self._server.server_close()

    def wait(self) -> None:
        """Block until stopped (by another thread) or interrupted; a timed join lets Ctrl-C through."""
        thread = self._thread
        while thread is not None and thread.is_alive():
            thread.join(timeout=0.5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a benchmark opens many connections at once
    block_on_close = False  # idle keep-alive connections must not block `stop()`

    def __init__(self, address: tuple[str, int], handler: Handler) -> None:
        super().__init__(address, _RequestHandler)
        self.handler = handler
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up has closed its end before a slow handler answers: not an error here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    # Headers and body leave in separate writes; with Nagle on, each answer on a kept-alive connection
    # would wait ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        super().finish()

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.command, self.path, headers, body)
        try:
            reply = self.server.handler(request)
        except Exception:
            logger.exception("loopback server failed on %s %s", self.command, self.path)
            reply = json_reply({"detail": "internal error"}, 500)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a benchmark makes tens of thousands of requests; doubles record what they need."""

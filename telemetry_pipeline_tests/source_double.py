"""A real HTTP server standing in for the Extract and agent telemetry services (SOURCES.md).

Sessions are registered with the exact body to serve, so tests can hand out broken payloads;
faults (status codes, Retry-After, delays) are injected per session.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

FETCH_PREFIX = {"extract": "/signavio/agent-metrics/", "agent_telemetry": "/agent_metrics/"}
LIST_PATH = {"extract": "/signavio/agent-metrics", "agent_telemetry": "/agent_metrics/sessions"}


@dataclass
class Fault:
    status: int
    remaining: int
    retry_after: str | None = None
    delay: float = 0.0


def agent_event(ts: Any, type_: str, **payload: Any) -> dict[str, Any]:
    return {"timestamp": ts, "session_id": "x", "type": type_, "payload": payload}


def good_events(n_tools: int = 2, fail_last: bool = False, start: str = "2025-01-15T10:30:00Z") -> list[dict]:
    base = time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    iso = lambda s: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + s)) + "Z"  # noqa: E731
    events = [agent_event(iso(0), "user_prompt", prompt="Summarise the sales data", tokens=40)]
    events.append(agent_event(iso(1), "model_change", model="gpt-4o", purpose="planning", input_tokens=100, output_tokens=20))
    for i in range(n_tools):
        failed = fail_last and i == n_tools - 1
        events.append(agent_event(iso(2 + 2 * i), "tool_call_started", tool_name=f"tool_{i % 3}", parameters={"q": i}))
        done = {"tool_name": f"tool_{i % 3}", "success": not failed, "latency_ms": 900}
        if failed:
            done["error"] = "permission denied"
        events.append(agent_event(iso(3 + 2 * i), "tool_call_completed", **done))
    return events


class SourceDouble:
    def __init__(self) -> None:
        self.bodies: dict[tuple[str, str], bytes] = {}
        self.last_event_at: dict[tuple[str, str], str] = {}
        self.faults: dict[tuple[str, str], Fault] = {}
        self.list_fault: Fault | None = None
        # Sessions whose fetches are answered late: (seconds, gate). Setting the gate ends the wait early.
        self.delays: dict[tuple[str, str], tuple[float, threading.Event]] = {}
        self.hits: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A short poll interval so that shutdown takes milliseconds, not the default 0.5 s, per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> SourceDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for _, gate in self.delays.values():
                gate.set()  # wakes handlers that sleep in an injected delay
        self._server.shutdown()
        self._server.server_close()

    def add(self, source: str, session_id: str, body: Any, last_event_at: str = "2025-01-15T11:00:00Z") -> str:
        """Serve `body` (dict -> JSON; bytes as is) for the session. Returns its partition key."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self._lock:
            self.bodies[(source, session_id)] = raw
            self.last_event_at[(source, session_id)] = last_event_at
        return f"{source}:{session_id}"

    def add_good(self, source: str, session_id: str, **kwargs: Any) -> str:
        body: dict[str, Any] = {"session_id": session_id, "events": good_events(**kwargs)}
        if source == "extract":
            body["metrics"] = {"tool_call_count": kwargs.get("n_tools", 2)}
            body["service_name"] = "extract-service"
        return self.add(source, session_id, body)

    def fail(self, source: str, session_id: str, status: int, times: int = 10**6, retry_after: str | None = None,
             delay: float = 0.0) -> None:
        with self._lock:
            self.faults[(source, session_id)] = Fault(status, times, retry_after, delay)

    def slow(self, source: str, session_id: str, seconds: float) -> None:
        """Answer fetches of the session only after `seconds`; 0 makes it fast again and answers the
        fetches that are waiting right now."""
        with self._lock:
            _, gate = self.delays.pop((source, session_id), (0.0, threading.Event()))
            gate.set()
            if seconds:
                self.delays[(source, session_id)] = (seconds, threading.Event())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                for source, path in LIST_PATH.items():
                    if parts.path == path:
                        return self._list(source, parse_qs(parts.query))
                for source, prefix in FETCH_PREFIX.items():
                    if parts.path.startswith(prefix):
                        rest = parts.path[len(prefix):]
                        if source == "agent_telemetry":
                            if not rest.endswith("/events"):
                                continue
                            rest = rest[: -len("/events")]
                        return self._fetch(source, unquote(rest))
                self._send(404, b'{"detail":"no such route"}')

            def _fetch(self, source: str, session_id: str) -> None:
                key = (source, session_id)
                with double._lock:
                    double.hits[f"{source}:{session_id}"] += 1
                    fault = double.faults.get(key)
                    if fault and fault.remaining > 0:
                        fault.remaining -= 1
                    else:
                        fault = None
                    body = double.bodies.get(key)
                    delay, gate = double.delays.get(key, (0.0, None))
                if gate is not None:
                    gate.wait(delay)
                if fault:
                    time.sleep(fault.delay)
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    return self._send(fault.status, b'{"detail":"injected fault"}', headers)
                if body is None:
                    return self._send(404, b'{"detail":"session not found"}')
                self._send(200, body)

            def _list(self, source: str, query: dict[str, list[str]]) -> None:
                with double._lock:
                    fault = double.list_fault
                    if fault and fault.remaining > 0:
                        fault.remaining -= 1
                        return self._send(fault.status, b'{"detail":"injected fault"}')
                    rows = sorted(
                        (at, sid) for (src, sid), at in double.last_event_at.items() if src == source
                    )
                since = query.get("since", [""])[0]
                if since:
                    rows = [r for r in rows if r[0] >= since]
                limit = int(query.get("limit", ["100"])[0])
                offset = int(base64.b64decode(query["cursor"][0])) if "cursor" in query else 0
                page = rows[offset: offset + limit]
                more = offset + limit < len(rows)
                body = {
                    "sessions": [{"session_id": sid, "last_event_at": at} for at, sid in page],
                    "next_cursor": base64.b64encode(str(offset + limit).encode()).decode() if more else None,
                }
                self._send(200, json.dumps(body).encode())

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        return Handler

"""A real HTTP server standing in for the Extract and agent telemetry services (docs/SOURCES.md).

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
from typing import Any

from telemetry_pipeline.simulate.loopback import LoopbackServer, Reply, Request, Router, json_reply, raw_reply

LIST_PATH = {"extract": "/signavio/agent-metrics", "agent_telemetry": "/agent_metrics/sessions"}
FETCH_PATH = {"extract": "/signavio/agent-metrics/{sid}", "agent_telemetry": "/agent_metrics/{sid}/events"}
INJECTED = {"detail": "injected fault"}


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
    events.append(
        agent_event(iso(1), "model_change", model="gpt-4o", purpose="planning", input_tokens=100, output_tokens=20)
    )
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
        self.list_faults: dict[str, Fault] = {}  # source -> how its listing fails
        self.list_hangs: dict[str, threading.Event] = {}  # source -> its listing answers once this is set
        # Sessions whose fetches are answered late: (seconds, gate). Setting the gate ends the wait early.
        self.delays: dict[tuple[str, str], tuple[float, threading.Event]] = {}
        self.hits: dict[str, int] = defaultdict(int)
        self._fetched: dict[str, threading.Event] = defaultdict(threading.Event)  # key -> a fetch of it arrived
        self._lock = threading.Lock()
        router = Router(not_found="no such route")
        for source in LIST_PATH:  # listings first: "sessions" is no session id
            router.add("GET", LIST_PATH[source], lambda request, source=source: self._list(source, request))
        for source in FETCH_PATH:
            router.add("GET", FETCH_PATH[source],
                       lambda request, source=source: self._fetch(source, request.params["sid"]))
        self._server = LoopbackServer(router, name="source-double")

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> SourceDouble:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for _, gate in self.delays.values():
                gate.set()  # wakes handlers that sleep in an injected delay
            for gate in self.list_hangs.values():
                gate.set()
        self._server.stop()

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

    def hang(self, source: str, session_id: str) -> None:
        """Answer fetches of the session only when the double stops (or `slow(..., 0)`): a source that does not
        answer."""
        self.slow(source, session_id, 24 * 3600)

    def wait_for_fetch(self, key: str, timeout: float) -> None:
        """Return once a fetch of `key` has arrived here (it is in flight while the session is slow or hung)."""
        with self._lock:
            arrived = self._fetched[key]
        if not arrived.wait(timeout):
            raise AssertionError(f"no fetch of {key} arrived within {timeout:.0f} s")

    def _fetch(self, source: str, session_id: str) -> Reply:
        key = (source, session_id)
        with self._lock:
            self.hits[f"{source}:{session_id}"] += 1
            self._fetched[f"{source}:{session_id}"].set()
            fault = self.faults.get(key)
            if fault and fault.remaining > 0:
                fault.remaining -= 1
            else:
                fault = None
            body = self.bodies.get(key)
            delay, gate = self.delays.get(key, (0.0, None))
        if gate is not None:
            gate.wait(delay)
        if fault:
            time.sleep(fault.delay)
            return json_reply(INJECTED, fault.status, {"Retry-After": fault.retry_after} if fault.retry_after else {})
        if body is None:
            return json_reply({"detail": "session not found"}, 404)
        return raw_reply(body)

    def hang_listing(self, source: str) -> None:
        """The source's listing answers only when the double stops (a listing that never ends)."""
        with self._lock:
            self.list_hangs[source] = threading.Event()

    def _list(self, source: str, request: Request) -> Reply:
        with self._lock:
            hang = self.list_hangs.get(source)
        if hang is not None:
            hang.wait(120)
        with self._lock:
            fault = self.list_faults.get(source)
            if fault and fault.remaining > 0:
                fault.remaining -= 1
                return json_reply(INJECTED, fault.status)
            rows = sorted((at, sid) for (src, sid), at in self.last_event_at.items() if src == source)
        query = request.query
        if query.get("since"):
            rows = [r for r in rows if r[0] >= query["since"]]
        limit = int(query.get("limit", "100"))
        offset = int(base64.b64decode(query["cursor"])) if "cursor" in query else 0
        page = rows[offset: offset + limit]
        more = offset + limit < len(rows)
        return json_reply({
            "sessions": [{"session_id": sid, "last_event_at": at} for at, sid in page],
            "next_cursor": base64.b64encode(str(offset + limit).encode()).decode() if more else None,
        })

"""The simulator's HTTP routes: the `extract` and `agent_telemetry` contracts with their discovery, and Agora."""

from __future__ import annotations

import base64
import binascii
import bisect
import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

from telemetry_pipeline.simulate import agora, agora_spans
from telemetry_pipeline.simulate.loopback import HTTPError, Reply, Request, Router, json_reply
from telemetry_pipeline.simulate.runs import (
    AGENT_TELEMETRY,
    EXTRACT,
    ID_PREFIX,
    PARITY,
    generate_events,
    session_id,
    session_summary,
    source_of,
)
from telemetry_pipeline.simulate.timelines import SimulationConfig, Timeline, format_ms

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class Routes:
    """What the simulator answers; every answer is a pure function of the request, the config and the clock."""

    def __init__(self, config: SimulationConfig, timeline: Timeline, clock: Callable[[], float]) -> None:
        self.config = config
        self.timeline = timeline
        self.clock = clock
        self._rendered: dict[tuple[str, str], Reply] = {}  # (source, session id) -> its answer, by `prerender`
        self.router = Router()
        get = self.router.add
        get("GET", "/signavio/agent-metrics", lambda r: json_reply(self.listing(EXTRACT, r.query)))
        get("GET", "/signavio/agent-metrics/{sid}", self._extract_session)
        get("GET", "/agent_metrics/sessions", lambda r: json_reply(self.listing(AGENT_TELEMETRY, r.query)))
        get("GET", "/agent_metrics/{sid}/events", self._agent_telemetry_session)
        get("GET", "/executions", lambda r: json_reply(self.executions(r.query)))
        get("GET", "/executions/{id}", lambda r: json_reply(agora.execution_record(self.execution(r.params["id"]))))
        get("GET", "/executions/{id}/timeline", lambda r: json_reply(self._timeline(r.params["id"])))
        get("GET", "/executions/{id}/nodes", lambda r: json_reply(agora.node_rows(self.execution(r.params["id"]))))
        # Wrapped in objects, as the backend answers today (its releases up to late 2025 sent bare lists).
        get("GET", "/executions/{id}/telemetry-spans",
            lambda r: json_reply({"spans": agora_spans.telemetry_spans(self.execution(r.params["id"]))}))
        get("GET", "/executions/{id}/telemetry-events",
            lambda r: json_reply({"events": agora_spans.telemetry_events(self.execution(r.params["id"]))}))

    def __call__(self, request: Request) -> Reply:
        # Agora wants a Bearer token on every execution endpoint, known or not.
        is_agora = request.segments[:1] == ["executions"]
        if is_agora and not (request.header("Authorization") or "").startswith("Bearer "):
            return json_reply({"detail": "Not authenticated"}, 401)
        return self.router(request)

    def prerender(self) -> None:
        """Render the answer of every history session now (they never change: their end times are fixed from
        the start), so serving one costs no generation: the benchmark's double then keeps its own work out of
        the measurement, as a real source on another host would. About 22 KB a session at 100 events."""
        for index in range(self.config.sessions):
            source, sid = source_of(index), session_id(index)
            self._rendered[source, sid] = self._render(source, sid)

    def _extract_session(self, request: Request) -> Reply:
        return self._session(EXTRACT, request.params["sid"])

    def _agent_telemetry_session(self, request: Request) -> Reply:
        return self._session(AGENT_TELEMETRY, request.params["sid"])

    def _session(self, source: str, sid: str) -> Reply:
        rendered = self._rendered.get((source, sid))
        return rendered if rendered is not None else self._render(source, sid)

    def _render(self, source: str, sid: str) -> Reply:
        events = self.events(source, sid)
        summary = session_summary(events) if source == EXTRACT else {}
        return json_reply({"session_id": sid, **summary, "events": events})

    def _timeline(self, execution_id: str) -> dict[str, Any]:
        ex = self.execution(execution_id)
        return {"execution": agora.execution_record(ex), "timeline": agora.timeline_entries(ex)}

    def visible_count(self) -> int:
        return self.timeline.visible_count(int(self.clock() * 1000))

    def index_of(self, source: str, sid: str) -> int:
        prefix = ID_PREFIX[source]
        digits = sid.removeprefix(prefix)
        if not digits.isdigit() or not digits.isascii():
            raise HTTPError(404, "session not found")
        index = int(digits)
        # Only the canonical spelling exists ("sim-ex-42" is not "sim-ex-000042").
        if session_id(index) != sid or index >= self.visible_count():
            raise HTTPError(404, "session not found")
        return index

    def events(self, source: str, sid: str) -> list[dict[str, Any]]:
        return generate_events(self.config, self.index_of(source, sid), self.timeline)

    def execution(self, execution_id: str) -> agora.Execution:
        index = agora.execution_index(self.config.seed, execution_id, agora.agora_count(self.config))
        return agora.build_execution(self.config, self.timeline.anchor_ms, index)

    def executions(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """Newest first, like Agora. Filters scan every execution: fine at the sizes Agora demos use."""
        # FastAPI's `Query(50, le=100)`: 50 by default, and a larger limit is a validation error (422).
        limit = _parse_int(query.get("limit"), "limit", default=50, low=1, high=100, status=422)
        offset = _parse_int(query.get("offset"), "offset", default=0, low=0, high=None)
        records = (
            agora.execution_record(agora.build_execution(self.config, self.timeline.anchor_ms, index))
            for index in reversed(range(agora.agora_count(self.config)))
        )
        wanted = (
            r for r in records
            if query.get("status") in (None, r["status"]) and query.get("workflow_id") in (None, r["workflow_id"])
        )
        return list(itertools.islice(wanted, offset, offset + limit))

    def listing(self, source: str, query: dict[str, str]) -> dict[str, Any]:
        """One page of the source's sessions, ordered by end time, from `since` or the cursor on."""
        # Discovery clamps an oversized limit: a client asking for more simply gets full pages.
        limit = min(_parse_int(query.get("limit"), "limit", default=DEFAULT_PAGE_SIZE, low=1, high=None), MAX_PAGE_SIZE)
        count = _source_count(source, self.visible_count())
        index = _indexer(source)
        start = 0
        if query.get("since"):
            since_ms = _parse_since(query["since"])
            start = bisect.bisect_left(range(count), since_ms, key=lambda p: self.timeline.end_ms(index(p)))
        if query.get("cursor"):
            start = max(start, _decode_cursor(query["cursor"]))
        stop = min(count, start + limit)
        sessions = [
            {"session_id": session_id(index(p)), "last_event_at": format_ms(self.timeline.end_ms(index(p)))}
            for p in range(start, stop)
        ]
        return {"sessions": sessions, "next_cursor": _encode_cursor(stop) if stop < count else None}


def _source_count(source: str, visible: int) -> int:
    return (visible + 1 - PARITY[source]) // 2


def _indexer(source: str) -> Callable[[int], int]:
    """A source's n-th session → global session index."""
    parity = PARITY[source]
    return lambda position: 2 * position + parity


def _parse_int(raw: str | None, name: str, default: int, low: int, high: int | None, status: int = 400) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(status, f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        raise HTTPError(status, f"{name} must be between {low} and {high}" if high else f"{name} must be >= {low}")
    return value


def _parse_since(raw: str) -> int:
    """RFC 3339 → epoch ms, rounded up so `>= since` stays exact for sub-millisecond values."""
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise HTTPError(400, "since must be an RFC 3339 timestamp") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    micros = (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    return -(-micros // 1000)


def _encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"p:{position}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        kind, _, value = text.partition(":")
        if kind != "p" or not value.isdigit():
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeError):
        raise HTTPError(400, "invalid cursor") from None

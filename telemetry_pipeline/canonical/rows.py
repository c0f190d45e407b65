"""Writing canonical rows built in Python (the normalisers of Agora and OTLP payloads).

A normaliser builds one `SessionRow` per good session and its `EventRow`s; `replace_sessions` swaps
them in for those sessions (Arrow tables in, `replace.replace_rows` with the columns the model declares).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import orjson

from telemetry_pipeline.canonical.identity import AgentDefaults
from telemetry_pipeline.canonical.model import EVENTS, SESSIONS, EventRow, SessionRow
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.replace import duckdb_transaction, replace_rows


class InvalidPayload(Exception):
    """The session's payload cannot be normalised; the message says why (the session fails alone)."""


#: A Python normaliser of one session: its `sessions` row and `events` rows, or `InvalidPayload`.
SessionParser = Callable[[RawSession, AgentDefaults], tuple[SessionRow, list[EventRow]]]


def parse_json(body: bytes) -> Any:
    """The payload as JSON (orjson: a 600 KB trace parses several times faster than with `json`); `InvalidPayload`
    when it is not UTF-8 or not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        utf8 = "utf-8" in str(exc).lower()
        raise InvalidPayload("payload is not valid UTF-8" if utf8 else "payload is not valid JSON") from None


def replace_sessions(
    con: duckdb.DuckDBPyConnection, sessions: Sequence[SessionRow], events: Sequence[EventRow]
) -> None:
    """Replace the rows of exactly these sessions (their old events go, even if they now have none)."""
    if not sessions:
        return
    con.register("canon_sessions_in", SESSIONS.to_arrow(sessions))
    con.register("canon_events_in", EVENTS.to_arrow(events))

    def insert(cur: duckdb.DuckDBPyConnection) -> None:
        cur.execute(EVENTS.insert_sql("canon_events_in"))
        cur.execute(SESSIONS.insert_sql("canon_sessions_in"))

    try:
        replace_rows(duckdb_transaction(con), (EVENTS, SESSIONS), [s.session_key for s in sessions], insert)
    finally:
        con.unregister("canon_sessions_in")
        con.unregister("canon_events_in")


def normalize_each(
    con: duckdb.DuckDBPyConnection, raw: Sequence[RawSession], agents: AgentDefaults, parse: SessionParser
) -> dict[str, str]:
    """Parse every session with `parse` (which raises `InvalidPayload` for a session that must fail),
    then replace the good ones' rows in one transaction; return {key: why} for the others."""
    errors: dict[str, str] = {}
    sessions: list[SessionRow] = []
    events: list[EventRow] = []
    for r in raw:
        try:
            session, rows = parse(r, agents)
        except InvalidPayload as exc:
            errors[r.key] = f"{r.key}: {exc}"
            continue
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            # A shape the parser did not foresee fails this session, named, not the whole batch.
            errors[r.key] = f"{r.key}: unreadable payload ({type(exc).__name__}: {exc})"
            continue
        sessions.append(session)
        events.extend(rows)
    replace_sessions(con, sessions, events)
    return errors

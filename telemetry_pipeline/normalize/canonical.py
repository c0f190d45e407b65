"""Writing the canonical model from Python-built rows (for payload shapes normalised in Python).

A normaliser builds one `SessionRow` per good session and its `EventRow`s; `replace_sessions` swaps
them in for those sessions in one transaction (Arrow tables in, set-based DELETE + INSERT). Helpers
here are the shared conventions: deterministic event ids, activity labels, timestamps, JSON text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, fields
from typing import Any

import duckdb
import pyarrow as pa

from telemetry_pipeline.sources.base import RawSession


class InvalidPayload(Exception):
    """The session's payload cannot be normalised; the message says why (the session fails alone)."""


@dataclass
class SessionRow:
    session_key: str
    source: str
    session_id: str
    agent_name: str | None
    task_description: str | None
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    status: str
    service_name: str | None = None
    workflow_name: str | None = None
    workflow_version: str | None = None
    agent_type: str | None = None
    agent_state: str | None = None
    event_count: int = 0
    prompt_metrics: str | None = None  # JSON text
    source_metrics: str | None = None  # JSON text
    normalized_at: dt.datetime | None = None


@dataclass
class EventRow:
    event_id: str
    session_key: str
    seq: int
    activity: str
    event_type: str
    event_time: dt.datetime
    end_time: dt.datetime | None
    resource: str | None
    status: str | None
    tool_name: str | None
    model: str | None
    latency_ms: int | None
    input_tokens: int | None
    output_tokens: int | None
    error: str | None
    attributes: str | None  # JSON text


_TIME_COLUMNS = {"start_time", "end_time", "normalized_at", "event_time"}
_INT_COLUMNS = {"event_count", "seq", "latency_ms", "input_tokens", "output_tokens"}
_JSON_COLUMNS = {"prompt_metrics", "source_metrics", "attributes"}


def _schema(row_type: type) -> pa.Schema:
    def arrow_type(name: str) -> pa.DataType:
        if name in _TIME_COLUMNS:
            return pa.timestamp("us", tz="UTC")
        return pa.int64() if name in _INT_COLUMNS else pa.string()

    return pa.schema([(f.name, arrow_type(f.name)) for f in fields(row_type)])


def _select(row_type: type) -> str:
    return ", ".join(f"{f.name}::JSON" if f.name in _JSON_COLUMNS else f.name for f in fields(row_type))


def replace_sessions(
    con: duckdb.DuckDBPyConnection, sessions: Sequence[SessionRow], events: Sequence[EventRow]
) -> None:
    """Replace the rows of exactly these sessions (their old events go, even if they now have none)."""
    if not sessions:
        return
    now = dt.datetime.now(dt.UTC)
    for s in sessions:
        s.normalized_at = s.normalized_at or now
    session_table = pa.Table.from_pylist([_as_dict(s) for s in sessions], schema=_schema(SessionRow))
    event_table = pa.Table.from_pylist([_as_dict(e) for e in events], schema=_schema(EventRow))
    con.register("canon_sessions_in", session_table)
    con.register("canon_events_in", event_table)
    try:
        con.execute("BEGIN")
        con.execute("DELETE FROM events WHERE session_key IN (SELECT session_key FROM canon_sessions_in)")
        con.execute("DELETE FROM sessions WHERE session_key IN (SELECT session_key FROM canon_sessions_in)")
        columns = ", ".join(f.name for f in fields(EventRow))
        con.execute(f"INSERT INTO events ({columns}) SELECT {_select(EventRow)} FROM canon_events_in")
        columns = ", ".join(f.name for f in fields(SessionRow))
        con.execute(f"INSERT INTO sessions ({columns}) SELECT {_select(SessionRow)} FROM canon_sessions_in")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("canon_sessions_in")
        con.unregister("canon_events_in")


def normalize_each(
    con: duckdb.DuckDBPyConnection,
    raw: Sequence[RawSession],
    fallback_agent: str,
    parse: Callable[[RawSession, str], tuple[SessionRow, list[EventRow]]],
) -> dict[str, str]:
    """Parse every session with `parse` (which raises `InvalidPayload` for a session that must fail),
    then replace the good ones' rows in one transaction; return {key: why} for the others."""
    errors: dict[str, str] = {}
    sessions: list[SessionRow] = []
    events: list[EventRow] = []
    for r in raw:
        try:
            session, rows = parse(r, fallback_agent)
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


def _as_dict(row: Any) -> dict[str, Any]:
    return dict(zip((f.name for f in fields(row)), astuple(row), strict=True))


# --------------------------------------------------------------------------------------------------
# Shared conventions


def event_id(*parts: object) -> str:
    """Deterministic: md5 over the parts' text, unit-separator joined."""
    return hashlib.md5(chr(31).join("" if p is None else str(p) for p in parts).encode("utf-8")).hexdigest()


def humanize(text: str) -> str:
    """`tool_call_started` -> `Tool call started` (the same rule as the agent-events SQL)."""
    text = str(text).strip()
    return (text[:1].upper() + text[1:].replace("_", " "))[:200] if text else "Unknown"


def to_utc(value: Any) -> dt.datetime | None:
    """RFC 3339 text (any offset, fractional seconds or not) or epoch s/ms/us/ns (number or numeric
    text) -> aware UTC datetime; None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None
        magnitude = abs(value)
        scale = 1 if magnitude < 1e11 else 1e3 if magnitude < 1e14 else 1e6 if magnitude < 1e17 else 1e9
        try:
            return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=round(value * 1e6 / scale))
        except OverflowError:
            return None
    return None


def ms_between(start: dt.datetime | None, end: dt.datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000)


def as_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number) if math.isfinite(number) else None


def json_text(value: Any) -> str:
    """Valid JSON text for a DuckDB JSON column (NaN/inf and odd types become strings)."""
    return json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def text(value: Any, limit: int = 500) -> str | None:
    """A non-empty string (numbers become text), cut at `limit`; None otherwise."""
    if value is None or isinstance(value, dict | list):
        return None
    out = str(value).strip()
    return out[:limit] if out else None

"""Issue 6, property-based: whatever text and numbers a session carries, the CSV that leaves holds the same
values, and the Avro schema sent with it declares every column (nullable wherever a cell is empty).

The plain functions only -- `Warehouse`, `normalize_agent_sessions`, `signavio.csv.render` on a temporary
DuckDB -- no Dagster. Generated text is any Unicode that UTF-8 can carry: NUL and every other control
character included (JSON escapes them), lone surrogates excluded (they have no UTF-8 form; a payload that
spells one as `\\ud800` is rejected, see test_hostile_input.py). An empty string and a null are the same
empty cell.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry_pipeline.canonical.identity import AgentDefaults
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.signavio.csv import render
from telemetry_pipeline.signavio.schema import EVENTS, RUNS
from telemetry_pipeline.sources.session_api.normalize import normalize_agent_sessions
from telemetry_pipeline.warehouse import DuckDBWarehouse

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

text = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from('",;\r\n\t\x00\\\u2028\x85')), max_size=40)
longs = st.integers(LONG_MIN, LONG_MAX)
numbers = st.one_of(longs, st.floats(allow_nan=False, allow_infinity=False))
times = st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59), timezones=st.just(dt.UTC))


@st.composite
def sessions(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(times)
    return {
        "prompt": draw(text), "tokens": draw(longs), "tool_name": draw(text), "error": draw(text),
        "latency_ms": draw(numbers), "input_tokens": draw(longs), "output_tokens": draw(numbers),
        "start": start, "end": start + dt.timedelta(milliseconds=draw(st.integers(0, 10**9))),
    }


def body(s: dict[str, Any]) -> bytes:
    def event(at: dt.datetime, type_: str, **payload: Any) -> dict[str, Any]:
        return {"timestamp": at.isoformat().replace("+00:00", "Z"), "type": type_, "payload": payload}

    return json.dumps({"events": [
        event(s["start"], "user_prompt", prompt=s["prompt"], tokens=s["tokens"]),
        event(s["start"], "tool_call_started", tool_name=s["tool_name"]),
        event(s["end"], "tool_call_completed", tool_name=s["tool_name"], success=False, error=s["error"],
              latency_ms=s["latency_ms"], input_tokens=s["input_tokens"], output_tokens=s["output_tokens"]),
    ]}).encode()


def as_long(value: int | float) -> str:
    """What a long column holds for a JSON number: the number *as written* (3.977995309921555e+16 is
    39779953099215550, not the nearest double's ...552), fractions rounded half away from zero, and
    empty beyond the long range."""
    number = int(decimal.Decimal(json.dumps(value)).to_integral_value(decimal.ROUND_HALF_UP))
    return str(number) if LONG_MIN <= number <= LONG_MAX else ""


def millis(at: dt.datetime) -> str:
    return str((at - EPOCH) // dt.timedelta(milliseconds=1))


def cell(value: str | None) -> str:
    return value or ""


def parse(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuckDBWarehouse]:
    csv.field_size_limit(sys.maxsize)
    yield DuckDBWarehouse(Path(tmp_path_factory.mktemp("props")) / "w.duckdb")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(sessions(), min_size=1, max_size=4), session_ids=st.lists(text.filter(bool), min_size=4,
                                                                                  max_size=4, unique=True))
def test_any_text_and_numbers_round_trip_through_the_csv(
    warehouse: DuckDBWarehouse, batch: list[dict[str, Any]], session_ids: list[str]
) -> None:
    now = dt.datetime.now(dt.UTC)
    raw = [
        RawSession("agent_telemetry", sid, body(s), "application/json", now, "")
        for sid, s in zip(session_ids, batch, strict=False)
    ]
    with warehouse.connect() as con:
        problems = normalize_agent_sessions(con, raw, AgentDefaults("fallback-agent"))
        assert problems == {}
        rendered = render(con, [r.key for r in raw], "props")
    runs_upload, events_upload = rendered.uploads

    runs = {r["agent_run_id"]: r for r in parse(runs_upload.csv)}
    events = parse(events_upload.csv)
    assert len(runs) == len(raw) and len(events) == 2 * len(raw)
    for r, s in zip(raw, batch, strict=False):
        run = runs[r.session_id]
        assert run["task_id"] == r.session_id and run["source"] == "agent_telemetry"
        assert run["task_description"] == s["prompt"][:500]
        assert (run["start_time"], run["end_time"]) == (millis(s["start"]), millis(s["end"]))
        span = str(int(millis(s["end"])) - int(millis(s["start"])))  # millisecond boundaries crossed
        assert run["latency_ms"] == span
        assert run["status"] == "failed"
        mine = {e["event_type"]: e for e in events if e["case_id"] == r.session_id}
        prompt, tool = mine["user_prompt"], mine["tool_call_started"]
        assert json.loads(prompt["attributes"]) == {"prompt": s["prompt"], "tokens": s["tokens"]}
        assert prompt["input_tokens"] == str(s["tokens"]) and prompt["event_time"] == millis(s["start"])
        assert tool["tool_name"] == s["tool_name"] and tool["activity"] == f"Call tool {s['tool_name']}"
        assert tool["error"] == s["error"] and tool["status"] == "failed"
        assert tool["latency_ms"] == (as_long(s["latency_ms"]) or span), "else measured from start to end"
        assert (tool["input_tokens"], tool["output_tokens"]) == (str(s["input_tokens"]), as_long(s["output_tokens"]))
        assert (tool["event_time"], tool["end_time"]) == (millis(s["start"]), millis(s["end"]))
        attributes = json.loads(tool["attributes"])
        assert attributes["latency_ms"] == s["latency_ms"] and attributes["output_tokens"] == s["output_tokens"]
        assert attributes["error"] == s["error"]

    for upload, rows, table in ((runs_upload, list(runs.values()), RUNS), (events_upload, events, EVENTS)):
        fields = {f["name"]: f["type"] for f in upload.schema["fields"]}
        assert list(fields) == table.column_names == list(rows[0])
        for name, avro_type in fields.items():
            values = [row[name] for row in rows]
            if "" in values:
                assert isinstance(avro_type, list) and avro_type[0] == "null", f"{table.suffix}.{name} is not nullable"
            base = avro_type[1] if isinstance(avro_type, list) else avro_type
            if (base if isinstance(base, str) else base["type"]) == "long":
                assert all(LONG_MIN <= int(v) <= LONG_MAX for v in values if v), f"{table.suffix}.{name}"

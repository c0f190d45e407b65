"""The canonical model and the rules its normalisers share, declared once: the derived forms agree with
the declaration, and each rule written for SQL answers as its Python form does."""

from __future__ import annotations

import dataclasses
import datetime as dt

import duckdb
import psycopg2
import pytest

from telemetry_pipeline.canonical import activity, model
from telemetry_pipeline.canonical.pairing import ToolEvent, pair_tool_calls
from telemetry_pipeline.canonical.time import epoch_sql_macro, to_utc

pytestmark = pytest.mark.fast  # `make test-fast`


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(epoch_sql_macro() + activity.SQL_MACROS)
    return con


def test_tables_follow_the_row_types(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(model.ddl())
    for table in model.TABLES:
        described = con.execute(f"DESCRIBE {table.name}").fetchall()
        assert [row[0] for row in described] == [f.name for f in dataclasses.fields(table.row_type)]
        assert {row[0]: row[2] for row in described} == {
            c.name: "YES" if c.nullable and not c.primary_key else "NO" for c in table.columns}
        assert table.arrow_schema().names == list(table.names)
    assert model.SESSIONS.primary_key == "session_key" and model.EVENTS.primary_key == "event_id"
    column = {c.name: c for c in model.EVENTS.columns}
    assert (column["attributes"].kind, column["event_time"].kind, column["seq"].kind) == ("json", "timestamp", "long")
    assert not column["event_time"].nullable and column["end_time"].nullable


def test_rows_round_trip_through_the_derived_insert(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(model.ddl())
    at = dt.datetime(2025, 1, 15, 10, 30, tzinfo=dt.UTC)
    row = model.EventRow(
        event_id="e1", session_key="s:1", seq=0, activity="User prompt", event_type="user_prompt", event_time=at,
        end_time=None, resource="user", status="success", tool_name=None, model=None, latency_ms=None,
        input_tokens=3, output_tokens=None, error=None, attributes=model.Json('{"prompt":"hi"}'))
    con.register("incoming", model.EVENTS.to_arrow([row]))
    con.execute(model.EVENTS.insert_sql("incoming"))
    (stored,) = con.execute(f"SELECT {model.EVENTS.column_list()} FROM events").fetchall()
    assert stored[:5] == ("e1", "s:1", 0, "User prompt", "user_prompt") and stored[5] == at
    assert stored[model.EVENTS.names.index("attributes")] == '{"prompt":"hi"}' and stored[12] == 3


def test_postgres_ddl_creates_the_same_columns(postgres_url: str) -> None:
    with psycopg2.connect(postgres_url) as pg, pg.cursor() as cur:
        cur.execute(model.ddl("postgres"))
        for table in model.TABLES:
            cur.execute("SELECT column_name, is_nullable, data_type FROM information_schema.columns "
                        "WHERE table_name = %s ORDER BY ordinal_position", (table.name,))
            columns = cur.fetchall()
            assert [c[0] for c in columns] == list(table.names)
            assert {c[0]: c[1] for c in columns} == {
                c.name: "YES" if c.nullable and not c.primary_key else "NO" for c in table.columns}
            json_type = model.SQL_TYPES["postgres"]["json"].lower()
            assert {c[0] for c in columns if c[2] == json_type} == {c.name for c in table.columns if c.kind == "json"}
    pg.close()


@pytest.mark.parametrize("value", [0, 1.5, 1736937000, 1736937000123, 1736937000123456, 1736937000123456789,
                                   -62135596800, 253402300799e9, 253402300800e9, 1e25])
def test_epoch_numbers_read_the_same_in_sql_and_python(con: duckdb.DuckDBPyConnection, value: float) -> None:
    (sql,) = con.execute("SELECT epoch_ts($v::DOUBLE)", {"v": value}).fetchone()
    python = to_utc(value)
    assert (sql is None) == (python is None), (sql, python)
    if python is not None:
        assert abs((sql - python).total_seconds()) < 1e-3


@pytest.mark.parametrize("label", ["tool_call_started", "  model_change  ", "", " \t", "x" * 300, "élan_vital",
                                   "custom_audit"])
def test_humanize_is_one_rule(con: duckdb.DuckDBPyConnection, label: str) -> None:
    assert con.execute("SELECT humanize($t)", {"t": label}).fetchone()[0] == activity.humanize(label)


@pytest.mark.parametrize(("event_type", "step", "response_only"), [
    ("user_prompt", None, False), ("user_prompt", None, True), ("model_change", "ignored", False),
    ("reasoning", None, False), ("reasoning", "  Plan the answer ", False), ("reasoning", "  ", False),
    ("agent_thought", "s" * 250, False),
])
def test_event_activity_is_one_rule(con: duckdb.DuckDBPyConnection, event_type: str, step: str | None,
                                    response_only: bool) -> None:
    sql = con.execute("SELECT event_activity($t, $s, $r)", {"t": event_type, "s": step, "r": response_only})
    assert sql.fetchone()[0] == activity.event_activity(event_type, step, response_only=response_only)


@pytest.mark.parametrize(("event_type", "tool", "agent"), [
    ("user_prompt", "search", "Billing Specialist"), ("reasoning", "search", "Billing Specialist"),
    ("tool_call_started", None, "triage"), ("reasoning", "", "triage"),
])
def test_event_resource_is_one_rule(con: duckdb.DuckDBPyConnection, event_type: str, tool: str | None,
                                    agent: str) -> None:
    """The agent that acted, not the tool or the model (they have their own columns); a prompt is the user's."""
    sql = con.execute("SELECT event_resource($t, $agent)", {"t": event_type, "agent": agent})
    resource = activity.event_resource(event_type, agent)
    assert sql.fetchone()[0] == resource == ("user" if event_type == "user_prompt" else agent)
    assert con.execute("SELECT tool_call_activity($t)", {"t": tool}).fetchone()[0] == activity.tool_call_activity(tool)



@pytest.mark.parametrize(("ended_on_failure", "any_failure", "outcome"), [
    (True, True, "failed"), (True, False, "failed"), (False, True, "partial"), (False, False, "completed"),
    (None, None, "completed"),  # SQL: a session with no activities at all
])
def test_session_outcome_is_one_rule(con: duckdb.DuckDBPyConnection, ended_on_failure: bool | None,
                                     any_failure: bool | None, outcome: str) -> None:
    sql = con.execute("SELECT session_outcome($e, $a)", {"e": ended_on_failure, "a": any_failure}).fetchone()[0]
    assert sql == activity.session_outcome(bool(ended_on_failure), bool(any_failure)) == outcome

def test_tool_calls_pair_nth_start_with_nth_completion_of_the_same_key() -> None:
    t = [dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=s) for s in range(6)]
    events = [
        ToolEvent("tool_call_started", "search", t[0], 0),
        ToolEvent("tool_call_started", "fetch", t[1], 1),
        ToolEvent("tool_call_started", "search", t[2], 2),
        ToolEvent("tool_call_completed", "search", t[3], 3),
        ToolEvent("user_prompt", None, t[3], 4),
        ToolEvent("tool_call_completed", "search", t[4], 5),
        ToolEvent("tool_call_completed", "lost", t[5], 6),
    ]
    assert pair_tool_calls(events) == {0: 3, 2: 5}, "fetch never completed; lost never started"

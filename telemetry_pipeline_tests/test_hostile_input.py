"""Issue 6: hostile input. Every payload below is either exported faithfully -- the outbox CSV, read back with
Python's csv module, holds exactly the values the source served -- or rejected with a message that names
its session. Never a crashed run: the good sessions of the same batch are exported either way.

Decided limits (docs/FAULTS.md):
- NUL and other control characters are data: escaped in JSON (`\\u0000`), they round-trip.
- A lone UTF-16 surrogate (`\\ud800`) has no UTF-8 form: DuckDB's JSON parser refuses the document, so the
  session is rejected ("payload is not valid JSON"); raw bytes that are not UTF-8 are rejected the same way.
- An empty string and a null are the same CSV cell (empty); Signavio reads both as null.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from telemetry_pipeline.canonical.content import ContentPolicy, Governance
from telemetry_pipeline_tests.conftest import Pipeline, outbox_uploads
from telemetry_pipeline_tests.source_double import SourceDouble, agent_event, good_events

EXPORT = dg.AssetKey("signavio_export")
T0 = "2025-01-15T10:30:00Z"
T0_MS = 1736937000000

NASTY = (
    'He said "hi", then left; a,b,,c\nsecond line\r\nthird after CRLF\rafter a lone CR\t|pipe|;semi;'
    "\x00NUL \x01\x02\x07\x08\x0b\x0c\x1b\x1f\x7f \x85NEL \u2028LS \u2029PS \ufeffBOM "
    "ünïcødé e\u0301 会话 🚀 \u202eRTL\u202c \"\"\" '' ``` <script>alert(1)</script> ${HOME} %s %n \\ \\\\"
)
WEIRD_IDS = ["a/b", "../../etc/passwd", "x:y:z", "with space", "ünïcødé-会话-🚀", "..", ".", "%2e%2e", "a?b#c&d=e"]


@pytest.fixture(autouse=True)
def no_csv_field_limit() -> None:
    csv.field_size_limit(sys.maxsize)  # the csv module's default 128 KiB limit is a reader's choice, not ours


@pytest.fixture(autouse=True)
def full_content(pipeline: Pipeline) -> None:
    """Text is exported as captured (`EXPORT_CONTENT=full`): faithfulness is what these tests check. What the other
    modes do to it: test_content.py."""
    pipeline.configure(content=Governance(ContentPolicy.FULL))


def read_tables(home: Path) -> dict[str, list[dict[str, str]]]:
    """Every outbox upload, read back as a consumer would: bytes -> UTF-8 -> csv module."""
    tables: dict[str, list[dict[str, str]]] = {}
    for folder in outbox_uploads(home):
        schema = json.loads((folder / "schema.json").read_text())
        (part,) = folder.glob("*.csv")
        rows = list(csv.DictReader(io.StringIO(part.read_bytes().decode("utf-8"), newline="")))
        assert all(list(r) == [f["name"] for f in schema["fields"]] for r in rows[:1])
        assert all(None not in r and None not in r.values() for r in rows), "no record split or merged"
        tables.setdefault(schema["name"], []).extend(rows)
    return tables


def events_of(tables: dict[str, list[dict[str, str]]], case_id: str) -> list[dict[str, str]]:
    return [e for e in tables["agent_telemetry_events"] if e["case_id"] == case_id]


def prompt_session(prompt: str, **payload: Any) -> dict[str, Any]:
    return {"events": [agent_event(T0, "user_prompt", prompt=prompt, **payload)]}


def test_hostile_payloads_are_exported_faithfully_or_rejected_by_name(pipeline: Pipeline,
    home: Path, tmp_path: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    add = source_double.add
    src = "agent_telemetry"
    exported: dict[str, str] = {}  # key -> what it tests
    rejected: dict[str, str] = {}  # key -> a phrase its error must hold

    exported[add(src, "plain", {"events": good_events()})] = "a normal session in the same batch"
    exported[add(src, "nasty-text", {"events": [
        agent_event(T0, "user_prompt", prompt=NASTY, tokens=3),
        agent_event("2025-01-15T10:30:01Z", "tool_call_started", tool_name=NASTY, parameters={NASTY: [NASTY]}),
        agent_event("2025-01-15T10:30:02Z", "tool_call_completed", tool_name=NASTY, success=False, error=NASTY,
                    latency_ms=1000),
    ]})] = "quotes, delimiters, CR/LF, control characters, unicode in every text column"
    exported[add(src, "lone-cr", {"events": [  # nothing else in these values that would force quoting
        agent_event(T0, "user_prompt", prompt="first\rsecond"),
        agent_event("2025-01-15T10:30:01Z", "tool_call_completed", tool_name="to\rol", error="disk\rfull"),
    ]})] = "a lone carriage return in a value"
    exported[add(src, "wrong-types", {"events": [
        {"timestamp": T0, "type": "user_prompt", "payload": "just a string"},
        agent_event("2025-01-15T10:30:01Z", "tool_call_completed", tool_name=42, success="yes",
                    latency_ms="fast", input_tokens="many", output_tokens=None, error={"code": 7}),
        agent_event("2025-01-15T10:30:02Z", "note", latency_ms="NaN", input_tokens=1e300, output_tokens=2**63 - 1),
        agent_event("2025-01-15T10:30:03Z", "tool_call_completed", tool_name="t", latency_ms=9 * 10**18),
        {"timestamp": "2025-01-15T10:30:04Z", "type": {"not": "a string"}, "payload": [1, 2, 3]},
    ]})] = "wrong types are kept as attributes and never crash a conversion"
    exported[add(src, "timestamps", {"events": [
        agent_event("0001-01-01T00:00:00Z", "a_year_one"),
        agent_event("9999-12-31T23:59:59.999Z", "b_year_9999"),
        agent_event(1736937000, "c_epoch_s"),
        agent_event(1736937000000, "d_epoch_ms"),
        agent_event(1736937000000000, "e_epoch_us"),
        agent_event(1736937000000000000, "f_epoch_ns"),
        agent_event(1736937000.5, "g_epoch_float"),
        agent_event("1736937000", "h_epoch_text"),
        agent_event("2025-01-15T11:30:00+01:00", "i_offset"),
    ]})] = "year 1, year 9999, epoch s/ms/us/ns, float, text, offsets"
    twice = agent_event(T0, "user_prompt", prompt="same content twice")
    exported[add(src, "duplicates", {"events": [twice, dict(twice)]})] = "two identical events stay two rows"
    deep = "[" * 10_000 + '"bottom"' + "]" * 10_000  # deeper than Python's json module goes
    body = json.dumps(prompt_session("deep", nested="DEEP")).replace('"DEEP"', deep)
    exported[add(src, "deep", body.encode())] = "10,000 levels of nesting"
    for sid in WEIRD_IDS:
        exported[add(src, sid, prompt_session(f"prompt of {sid}"))] = "an awkward session id"
    padded = b" \n\t\r" + json.dumps(prompt_session("padded")).encode() + b"\r\n "
    exported[add(src, "padded", padded)] = "JSON's whitespace around the object"

    rejected[add(src, "not-json", b"\x00 this is not json {")] = "not valid JSON"
    prompt_json = b'{"events": [{"timestamp": "' + T0.encode() + b'", "payload": {"prompt": "PROMPT"}}]}'
    rejected[add(src, "bad-utf8", prompt_json.replace(b"PROMPT", b"\xff\xfe"))] = "not valid UTF-8"
    rejected[add(src, "lone-surrogate", prompt_json.replace(b"PROMPT", b"\\ud800"))] = "not valid JSON"
    rejected[add(src, "top-array", [1, 2])] = "not a JSON object"
    rejected[add(src, "top-string", b' "an object?" ')] = "not a JSON object"
    rejected[add(src, "truncated", prompt_json[:40])] = "not valid JSON"
    rejected[add(src, "two-objects", prompt_json + b" {}")] = "not valid JSON"
    rejected[add(src, "events-object", {"events": {"0": twice}})] = 'no "events" list'
    rejected[add(src, "events-null", {"events": None})] = 'no "events" list'
    rejected[add(src, "event-not-object", {"events": [twice, 17]})] = (
        "event #1 has a timestamp that cannot be parsed: missing"
    )
    rejected[add(src, "ts-object", {"events": [agent_event({"s": 1}, "user_prompt")]})] = (
        'timestamp that cannot be parsed: {"s":1}'
    )
    rejected[add(src, "ts-bool", {"events": [agent_event(True, "user_prompt")]})] = (
        "timestamp that cannot be parsed: true"
    )
    rejected[add(src, "ts-infinity", {"events": [agent_event("infinity", "user_prompt")]})] = (
        "cannot be parsed: \"infinity\""
    )
    rejected[add(src, "ts-far", {"events": [agent_event(1e25, "user_prompt")]})] = "cannot be parsed: 1e25"
    rejected[add(src, "ts-text", {"events": [twice, agent_event("yesterday", "x"), agent_event("", "y")]})] = (
        'event #1 has a timestamp that cannot be parsed: "yesterday" (2 events in all)'
    )

    code, out = pipeline.cli("export", *exported, *rejected)

    results = {r["session_id"]: r for r in out["results"]}
    assert code == 1 and out["status"] == "partial"
    assert {k for k, r in results.items() if r["status"] == "exported"} == set(exported), out
    for key, phrase in rejected.items():
        assert results[key]["status"] == "failed" and key in results[key]["error"], results[key]
        assert phrase in results[key]["error"], (phrase, results[key]["error"])
    assert instance.get_materialized_partitions(EXPORT) == set(exported)

    tables = read_tables(home)
    runs = {r["agent_run_id"]: r for r in tables["agent_telemetry_runs"]}
    assert set(runs) == {k.partition(":")[2] for k in exported}, "the case id is the raw session id"

    # text survives every column it can reach, byte for byte
    [prompt, tool] = events_of(tables, "nasty-text")
    assert json.loads(prompt["attributes"])["prompt"] == NASTY
    assert runs["nasty-text"]["task_description"] == NASTY[:500]
    assert tool["tool_name"] == NASTY and tool["resource"] == "test-agent" and tool["error"] == NASTY
    assert tool["activity"] == f"Call tool {NASTY}" and tool["status"] == "failed"
    assert json.loads(tool["attributes"])["parameters"] == {NASTY: [NASTY]}
    assert json.loads(runs["nasty-text"]["tools_used"])[0]["error_details"] == NASTY

    assert runs["lone-cr"]["task_description"] == "first\rsecond"
    [_, cr_tool] = events_of(tables, "lone-cr")
    assert (cr_tool["tool_name"], cr_tool["error"]) == ("to\rol", "disk\rfull")

    # wrong types: numbers where they are numbers, everything else kept as it came
    string_payload, lone_completion, note, huge_latency, odd_type = events_of(tables, "wrong-types")
    assert json.loads(string_payload["attributes"]) == {"payload": "just a string"}
    assert lone_completion["tool_name"] == "42" and lone_completion["status"] == "failed"
    assert lone_completion["latency_ms"] == "" and lone_completion["input_tokens"] == ""
    assert json.loads(lone_completion["error"]) == {"code": 7}
    attrs = json.loads(lone_completion["attributes"])
    assert (attrs["success"], attrs["latency_ms"], attrs["input_tokens"]) == ("yes", "fast", "many")
    assert (note["latency_ms"], note["input_tokens"], note["output_tokens"]) == ("", "", str(2**63 - 1))
    assert json.loads(note["attributes"])["input_tokens"] == 1e300
    assert huge_latency["latency_ms"] == str(9 * 10**18)
    assert huge_latency["event_time"] == str(T0_MS + 3000), "a start 285 million years back: its own time"
    assert json.loads(odd_type["attributes"])["payload"] == [1, 2, 3]
    assert odd_type["event_type"] == '{"not":"a string"}'

    times = {e["event_type"]: int(e["event_time"]) for e in events_of(tables, "timestamps")}
    assert times == {
        "a_year_one": -62135596800000, "b_year_9999": 253402300799999,
        "c_epoch_s": T0_MS, "d_epoch_ms": T0_MS, "e_epoch_us": T0_MS, "f_epoch_ns": T0_MS,
        "g_epoch_float": T0_MS + 500, "h_epoch_text": T0_MS, "i_offset": T0_MS,
    }
    assert (runs["timestamps"]["start_time"], runs["timestamps"]["end_time"]) == ("-62135596800000", "253402300799999")

    dup = events_of(tables, "duplicates")
    assert len(dup) == 2 and dup[0]["event_id"] != dup[1]["event_id"], "two rows, two ids"
    assert f'"nested":{deep}' in events_of(tables, "deep")[0]["attributes"]

    for sid in WEIRD_IDS:
        [event] = events_of(tables, sid)
        assert json.loads(event["attributes"])["prompt"] == f"prompt of {sid}", "fetched from its own URL"
        assert source_double.hits[f"{src}:{sid}"] == 1

    # nothing was written outside the home, and no path is made of a session id
    assert all(path.is_relative_to(home) for path in tmp_path.rglob("*") if path != home)
    for folder in outbox_uploads(home):
        assert re.fullmatch(r"\d{8}T\d{12}Z-agent_telemetry_(runs|events)-[0-9a-f]{8}", folder.name), folder.name

    # deterministic: a forced re-export produces exactly the same ids
    ids = sorted(e["event_id"] for e in tables["agent_telemetry_events"])
    code, out = pipeline.cli("export", "--force", *exported)
    assert code == 0 and out["exported_count"] == len(exported)
    again = read_tables(home)["agent_telemetry_events"]
    assert sorted(e["event_id"] for e in again) == sorted(ids * 2)


def test_a_10_mb_prompt_and_a_100_000_event_session(pipeline: Pipeline,
    home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    big_prompt = ("0123456789abcdef\"\n,\r" * (10 * 1024 * 1024 // 20))[: 10 * 1024 * 1024]
    big = source_double.add("extract", "big-prompt", prompt_session(big_prompt, response="ok"))
    many = source_double.add("extract", "many-events", {"events": [
        agent_event(T0_MS + i, "agent_thought", step_name=f"step {i % 7}", n=i) for i in range(100_000)
    ]})
    plain = source_double.add_good("extract", "plain")

    code, out = pipeline.cli("export", big, many, plain)

    assert code == 0 and out["exported_count"] == 3, out
    tables = read_tables(home)
    runs = {r["agent_run_id"]: r for r in tables["agent_telemetry_runs"]}
    [prompt] = events_of(tables, "big-prompt")
    bound = Governance.value_max_chars  # no cell Signavio would refuse: a value is cut, and says so
    assert json.loads(prompt["attributes"])["prompt"] == (
        big_prompt[:bound] + f"…[cut: {len(big_prompt) - bound} chars]")
    assert runs["big-prompt"]["task_description"] == big_prompt[:500]
    assert json.loads(runs["big-prompt"]["prompt_metrics"])["prompt_length"] == len(big_prompt)

    events = events_of(tables, "many-events")
    assert len(events) == 100_000 and len({e["event_id"] for e in events}) == 100_000
    assert [json.loads(e["attributes"])["n"] for e in events] == list(range(100_000)), "in order, none lost"
    assert runs["many-events"]["event_count"] == "100000"
    assert max(len(cell) for row in tables["agent_telemetry_runs"] for cell in row.values()) <= (
        Governance.attributes_max_chars)
    *steps, cut = json.loads(runs["many-events"]["process_steps"])  # the first steps, then how many more
    assert steps[0]["step_name"] == "step 0" and cut == {"cut": f"{100_000 - len(steps)} more steps"}
    assert instance.get_materialized_partitions(EXPORT) == {big, many, plain}


def test_odd_agora_and_otlp_payloads_fail_alone(pipeline: Pipeline, tmp_path: Path):
    """The Python normalisers: a payload of an unforeseen shape fails its own session, named."""
    import datetime as dt
    import json as _json

    from telemetry_pipeline.canonical.raw import RawSession
    from telemetry_pipeline.sources.agora.normalize import normalize_agora_sessions
    from telemetry_pipeline.sources.otlp.normalize import normalize_otlp_sessions
    from telemetry_pipeline.warehouse import DuckDBWarehouse

    now = dt.datetime.now(dt.UTC)

    def raw(source: str, sid: str, doc: object) -> RawSession:
        return RawSession(source, sid, _json.dumps(doc).encode(), "application/json", now, "test")

    odd_docs = [
        {"timeline": {"timeline": ["not an object", 7]}, "spans": [], "events": []},
        {"timeline": {"execution": {"status": "success"}, "timeline": [{"started_at": {"x": 1}, "retry_count": [1]}]},
         "spans": [{"attributes": "nope"}], "events": [{"timestamp": [], "data": 5}]},
        {"timeline": {"timeline": []}, "spans": "x", "events": None},
        [1, 2, 3],
    ]
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    with warehouse.connect() as con:
        errors = normalize_agora_sessions(con, [raw("agora", f"odd{i}", d) for i, d in enumerate(odd_docs)], "agent")
        exported = con.execute("SELECT session_key FROM sessions").fetchall()
    # every odd document either normalised or failed with a message naming its session; none raised
    for i in range(len(odd_docs)):
        key = f"agora:odd{i}"
        assert (key in errors and errors[key].startswith(key)) or (key,) in exported

    odd_traces = [
        {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5, "spanId": None, "attributes": "x"}]}]}]},
        {"resourceSpans": "nope"},
        {"spans": [{"traceId": "ab", "startTimeUnixNano": "soon", "attributes": [{"key": 1, "value": []}]}]},
    ]
    with warehouse.connect() as con:
        errors = normalize_otlp_sessions(con, [raw("otlp", f"t{i}", d) for i, d in enumerate(odd_traces)], "agent")
        exported = con.execute("SELECT session_key FROM sessions WHERE source = 'otlp'").fetchall()
    for i in range(len(odd_traces)):
        key = f"otlp:t{i}"
        assert (key in errors and errors[key].startswith(key)) or (key,) in exported

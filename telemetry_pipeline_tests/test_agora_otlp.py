"""Sources `agora` (HTTP, Bearer token) and `otlp` (trace files) end to end: discovery -> export -> outbox."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import duckdb
import httpx
import pytest

from telemetry_pipeline.definitions import build_definitions
from telemetry_pipeline.settings import HttpSettings, Secret, SourcesSettings, from_environment
from telemetry_pipeline.simulate import SimulationConfig, Simulator
from telemetry_pipeline.simulate.loopback import HTTPError, LoopbackServer, Reply, Request, Router, json_reply
from telemetry_pipeline.sources.base import SourceError
from telemetry_pipeline.sources.source_set import SourceSet
from telemetry_pipeline_tests.conftest import Pipeline, uploads_by_table
from telemetry_pipeline_tests.shared import shared_path

TOKEN = "agora-s3cret-token-value"
EXPORT = dg.AssetKey("signavio_export")
T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


def iso(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def ms(seconds: float) -> str:
    return str(int((T0 + dt.timedelta(seconds=seconds)).timestamp() * 1000))


@pytest.fixture
def only_new_sources(home: Path, pipeline: Pipeline) -> Path:
    """The pipeline home with neither of the HTTP session APIs configured."""
    pipeline.configure(sources={"extract_url": None, "agent_telemetry_url": None})
    return home


def warehouse_rows(home: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def raw_rows(home: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """`sql` on the embedded warehouse's payloads (their SQLite file)."""
    con = sqlite3.connect(home / "warehouse-raw.sqlite")
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------------------------------------
# Agora


class AgoraDouble:
    """Agora's execution endpoints (docs/SOURCES.md) over executions registered by the test: spans and events wrapped
    in objects as the backend answers today, or, with `legacy`, the bare lists of its releases up to late 2025."""

    def __init__(self, token: str = TOKEN, legacy: bool = False) -> None:
        self.token = token
        self.legacy = legacy
        self.records: dict[str, dict[str, Any]] = {}
        self.details: dict[str, tuple[list, list, list]] = {}  # id -> (timeline entries, spans, events)
        self.requests: list[tuple[str, str | None]] = []  # (target, Authorization)
        router = Router(not_found="Execution not found")
        router.add("GET", "/executions", self._executions)
        router.add("GET", "/executions/{eid}/{part}", self._detail)
        self._server = LoopbackServer(self._authorised(router), name="agora-double")
        self.url = self._server.url

    def __enter__(self) -> AgoraDouble:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def add(self, record: dict[str, Any], timeline: list | None = None, spans: list | None = None,
            events: list | None = None) -> str:
        self.records[record["id"]] = record
        self.details[record["id"]] = (timeline or [], spans or [], events or [])
        return f"agora:{record['id']}"

    def _authorised(self, router: Router) -> Callable[[Request], Reply]:
        def serve(request: Request) -> Reply:
            auth = request.header("Authorization")
            self.requests.append((request.target, auth))
            if auth != f"Bearer {self.token}":
                return json_reply({"detail": "Not authenticated"}, 401)
            return router(request)

        return serve

    def _executions(self, request: Request) -> Reply:
        rows = sorted(self.records.values(), key=lambda r: str(r["started_at"]), reverse=True)
        offset, limit = int(request.query.get("offset", 0)), int(request.query.get("limit", 100))
        return json_reply(rows[offset:offset + limit])

    def _detail(self, request: Request) -> Reply:
        eid, part = request.params["eid"], request.params["part"]
        if eid not in self.records:
            raise HTTPError(404, "Execution not found")
        timeline, spans, events = self.details[eid]
        body = {"timeline": {"execution": self.records[eid], "timeline": timeline},
                "telemetry-spans": spans if self.legacy else {"spans": spans},
                "telemetry-events": events if self.legacy else {"events": events}}.get(part)
        if body is None:
            raise HTTPError(404, "Execution not found")
        return json_reply(body)


def execution(eid: str, status: str, start: float, end: float | None, error: str | None = None,
              numeric_times: bool = False) -> dict[str, Any]:
    stamp = ms if numeric_times else iso
    return {"id": eid, "workflow_id": "wf-1", "status": status, "started_at": stamp(start),
            "completed_at": stamp(end) if end is not None else None,
            "duration_ms": int((end - start) * 1000) if end is not None else None,
            "error_message": error, "input_data": {"prompt": f"Handle request {eid}"},
            "output_data": {"response": "done"} if status == "success" else None}


def node(eid: str, n: int, name: str, node_type: str, status: str, start: float, end: float | None,
         retries: int = 0, error: str | None = None) -> dict[str, Any]:
    return {"id": f"{eid}-n{n}", "node_id": f"support.{name}", "node_name": name, "node_type": node_type,
            "status": status, "started_at": iso(start), "completed_at": iso(end) if end is not None else None,
            "prep_duration_ms": 100, "exec_duration_ms": 800, "post_duration_ms": 50,
            "retry_count": retries, "error_message": error}


# The client that ran the flows was in New York (EDT): Agora's SDK wrote its span times as that naive local
# time, and the backend stored them as if they were UTC.
CLIENT_SKEW = dt.timedelta(hours=-4)


def local(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds) + CLIENT_SKEW).isoformat()


def span(name: str, start: float, end: float, **attributes: Any) -> dict[str, Any]:
    """A `telemetry_spans` row as the SDK uploads it: every column, `SpanKind.*`, UNSET, local times."""
    node_name, _, phase = name.partition(".")
    attrs = {"agora.flow": "support_flow", **attributes}
    if phase != "flow":
        attrs["agora.node"] = node_name
    if phase in ("prep", "exec", "post"):
        attrs["agora.phase"] = phase
    return {"id": f"row-{name}", "execution_id": None, "node_execution_id": None, "span_id": f"s-{name}",
            "trace_id": "t1", "parent_span_id": None, "name": name, "kind": "SpanKind.INTERNAL", "status": "UNSET",
            "start_time": local(start), "end_time": local(end), "duration_ms": (end - start) * 1000,
            "attributes": attrs, "events": [], "tokens_used": None, "estimated_cost": None, "created_at": iso(end + 1)}


def event(event_type: str, at: float, data: dict[str, Any]) -> dict[str, Any]:
    """A `telemetry_events` row: every column; the time is UTC (the column defaults to now())."""
    return {"id": f"ev-{event_type}-{at}", "execution_id": None, "node_execution_id": None, "event_type": event_type,
            "timestamp": iso(at), "data": data, "created_at": iso(at + 1)}


def tool_call(at: float, tool: str, ok: bool, latency: int = 300) -> list[dict[str, Any]]:
    done: dict[str, Any] = {"tool_name": tool, "success": ok, "latency_ms": latency}
    if not ok:
        done["error"] = "upstream returned 503"
    return [event("tool_call_started", at, {"tool_name": tool}),
            event("tool_call_completed", at + latency / 1000, done)]


def populate(double: AgoraDouble) -> dict[str, str]:
    """ok: plan (LLM) -> lookup (tool, retried twice) -> answer (LLM, older token attributes);
    err: a failed tool node; timeout: epoch-number times; running: not finished yet."""
    keys = {}
    keys["ok"] = double.add(
        execution("ex-ok", "success", 0, 10),
        timeline=[
            node("ex-ok", 0, "plan", "llm", "success", 0, 2),
            node("ex-ok", 1, "lookup", "tool", "success", 2, 7, retries=2),
            node("ex-ok", 2, "answer", "llm", "success", 7, 10),
        ],
        spans=[
            span(
                "support_flow.flow",
                0,
                10,
                **{"traceloop.span.kind": "workflow", "traceloop.workflow.name": "support_flow"},
            ),
            # the node span repeats the usage of its exec span: it must not be counted twice
            span(
                "plan.node",
                0,
                2,
                retry_count=0,
                **{"gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300},
            ),
            span("plan.prep", 0, 0.2),
            span(
                "plan.exec",
                0.2,
                1.9,
                **{
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.response.model": "gpt-4o-2024-08-06",
                    "gen_ai.usage.input_tokens": 1200,
                    "gen_ai.usage.output_tokens": 300,
                    "llm.usage.total_tokens": 1500,
                },
            ),
            span("lookup.node", 2, 7, retry_count=2),
            span(
                "lookup.exec",
                2.1,
                6.9,
                **{"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_customer"},
            ),
            span("answer.node", 7, 10),
            span(
                "answer.exec",
                7.1,
                9.9,
                **{
                    "gen_ai.system": "anthropic",
                    "gen_ai.request.model": "claude-sonnet-4",
                    "gen_ai.usage.prompt_tokens": 800,
                    "gen_ai.usage.completion_tokens": 90,
                },
            ),
        ],
        events=[
            event("user_prompt", 0, {"prompt": "Handle request ex-ok"}),
            *tool_call(2.5, "lookup_customer", ok=False),
            *tool_call(3.5, "lookup_customer", ok=False),
            *tool_call(5.0, "lookup_customer", ok=True),
            event("custom_audit", 9.5, {"reviewer": "bot", "nested": {"a": [1]}}),
        ],
    )
    keys["err"] = double.add(
        execution("ex-err", "error", 20, 25, error="PermissionError: no access"),
        timeline=[node("ex-err", 0, "lookup", "tool", "error", 20, 25, error="PermissionError")],
        spans=[span("lookup.node", 20, 25), span("lookup.exec", 20.1, 24.9, **{"gen_ai.tool.name": "lookup_customer"})],
        events=tool_call(21, "lookup_customer", ok=False),
    )
    keys["timeout"] = double.add(
        execution("ex-timeout", "timeout", 30, 40, error="TimeoutError", numeric_times=True),
        timeline=[node("ex-timeout", 0, "plan", "llm", "success", 30, 40)],
    )
    keys["running"] = double.add(
        execution("ex-running", "running", 50, None),
        timeline=[node("ex-running", 0, "plan", "llm", "running", 50, None)],
    )
    return keys


@pytest.fixture
def agora(only_new_sources: Path, pipeline: Pipeline) -> Iterator[AgoraDouble]:
    with AgoraDouble() as double:
        pipeline.configure(sources={"agora_url": double.url, "agora_token": Secret(TOKEN)})
        yield double


def test_agora_finished_executions_are_discovered_and_exported(pipeline: Pipeline,
    agora: AgoraDouble, only_new_sources: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
):
    home = only_new_sources
    keys = populate(agora)
    caplog.set_level(logging.DEBUG)

    code, out = pipeline.cli("discover")
    assert code == 0 and sorted(out["new_keys"]) == sorted([keys["ok"], keys["err"], keys["timeout"]])
    code, out = pipeline.cli("export", "--pending")
    assert code == 0 and out["exported_count"] == 3, out

    tables = uploads_by_table(home)
    runs = {r["agent_run_id"]: r for r in tables["agent_telemetry_runs"]}
    assert set(runs) == {"ex-ok", "ex-err", "ex-timeout"}
    assert runs["ex-ok"]["status"] == "completed" and runs["ex-ok"]["source"] == "agora"
    assert runs["ex-err"]["status"] == "failed" and runs["ex-timeout"]["status"] == "failed"
    assert runs["ex-ok"]["workflow_name"] == "support_flow"
    # The execution's input is a person's text: under the default EXPORT_CONTENT=none only its length leaves.
    assert runs["ex-ok"]["task_description"] == f"[omitted: {len('Handle request ex-ok')} chars]"
    assert runs["ex-ok"]["start_time"] == ms(0) and runs["ex-ok"]["end_time"] == ms(10)
    assert runs["ex-timeout"]["start_time"] == ms(30), "epoch-millisecond times are read too"
    (tool_use,) = json.loads(runs["ex-ok"]["tools_used"])
    assert (tool_use["tool_name"], tool_use["call_count"], tool_use["error_count"]) == ("lookup_customer", 3, 2)

    events = sorted((e for e in tables["agent_telemetry_events"] if e["case_id"] == "ex-ok"),
                    key=lambda e: (int(e["event_time"]), e["event_type"] != "node_execution"))
    assert [e["activity"] for e in events] == [
        "Plan", "User prompt", "Lookup", "Call tool lookup_customer", "Call tool lookup_customer",
        "Call tool lookup_customer", "Answer", "Custom audit",
    ]
    plan, lookup, answer = (e for e in events if e["event_type"] == "node_execution")
    assert (plan["model"], plan["input_tokens"], plan["output_tokens"]) == ("gpt-4o-2024-08-06", "1200", "300")
    assert plan["resource"] == "test-agent", "the execution's agent (AGENT_NAME: the data names none)"
    assert plan["event_time"] == ms(0) and plan["end_time"] == ms(2)
    assert json.loads(plan["attributes"])["gen_ai.provider.name"] == "openai"
    assert (answer["model"], answer["input_tokens"], answer["output_tokens"]) == ("claude-sonnet-4", "800", "90")
    lookup_attrs = json.loads(lookup["attributes"])
    assert lookup_attrs["retry_count"] == 2 and lookup_attrs["prep_duration_ms"] == 100
    assert lookup_attrs["exec_duration_ms"] == 800 and lookup_attrs["post_duration_ms"] == 50
    assert lookup["resource"] == "test-agent" and lookup["status"] == "success" and lookup["latency_ms"] == "5000"
    calls = [e for e in events if e["activity"] == "Call tool lookup_customer"]
    assert [c["status"] for c in calls] == ["failed", "failed", "success"]
    assert calls[0]["error"] == "upstream returned 503" and calls[0]["latency_ms"] == "300"
    assert json.loads(events[-1]["attributes"]) == {"reviewer": "bot", "nested": {"a": [1]}}

    err_node = next(e for e in tables["agent_telemetry_events"]
                    if e["case_id"] == "ex-err" and e["event_type"] == "node_execution")
    assert err_node["status"] == "failed" and err_node["error"] == "PermissionError"
    (metrics,) = warehouse_rows(
        home, "SELECT source_metrics->>'error_message' FROM sessions WHERE session_id = 'ex-err'"
    )
    assert metrics == ("PermissionError: no access",)
    (skew,) = warehouse_rows(home, "SELECT source_metrics->>'span_clock_offset_minutes' FROM sessions "
                                   "WHERE session_id = 'ex-ok'")
    assert skew == ("-240",), "the New York client's span clock, taken off its spans"

    # the token went in every request's header and nowhere else
    assert agora.requests and all(auth == f"Bearer {TOKEN}" for _, auth in agora.requests)
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err + caplog.text
    assert not raw_rows(home, "SELECT 1 FROM raw_telemetry WHERE instr(CAST(body AS TEXT), ?) "
                              "OR instr(location, ?)", [TOKEN, TOKEN])
    body = json.loads(raw_rows(home, "SELECT body FROM raw_telemetry WHERE session_id='ex-ok'")[0][0])
    assert body["timeline"]["execution"]["id"] == "ex-ok" and len(body["spans"]["spans"]) == 8
    assert len(body["events"]["events"]) == 8

    # once the running execution finishes it is discovered, and only it
    agora.records["ex-running"].update(status="success", completed_at=iso(60), duration_ms=10_000)
    agora.details["ex-running"][0][0].update(status="success", completed_at=iso(60))
    code, out = pipeline.cli("discover")
    assert code == 0 and out["new_keys"] == [keys["running"]]


def test_agora_running_execution_exported_by_hand_is_refused(
    pipeline: Pipeline, agora: AgoraDouble, only_new_sources: Path
):
    keys = populate(agora)
    code, out = pipeline.cli("export", keys["running"])
    assert code == 1 and "still running" in out["results"][0]["error"]
    # it stays pending (raw kept), and loads once it has finished
    agora.records["ex-running"].update(status="success", completed_at=iso(60), duration_ms=10_000)
    agora.details["ex-running"][0][0].update(status="success", completed_at=iso(60))
    code, out = pipeline.cli("export", "--pending")
    assert code == 0 and out["exported_count"] == 1
    (run,) = uploads_by_table(only_new_sources)["agent_telemetry_runs"]
    assert run["agent_run_id"] == "ex-running" and run["end_time"] == ms(60)


def test_agora_paging_token_and_missing_execution(pipeline: Pipeline, agora: AgoraDouble, only_new_sources: Path,
                                                  capsys: pytest.CaptureFixture[str]):
    for i in range(250):  # one per hour, newest first in the listing
        agora.add(execution(f"hist-{i:03d}", "success", i * 3600, i * 3600 + 60))
    settings = SourcesSettings.of(agora_url=agora.url, agora_token=Secret(TOKEN), http=HttpSettings(max_retries=0))
    assert TOKEN not in repr(settings)
    with SourceSet(settings) as sources:
        source = sources.get("agora")
        assert TOKEN not in repr(source)
        assert len(list(source.list_sessions(None))) == 250
        offsets = [parse_qs(urlsplit(t).query)["offset"] for t, _ in agora.requests]
        assert offsets == [["0"], ["100"], ["200"]]

        agora.requests.clear()
        since = T0 + dt.timedelta(hours=219)  # the 31 newest completed at or after this
        listed = list(source.list_sessions(since))
        assert len(listed) == 31 and all(r.last_event_at >= since for r in listed)
        assert len(agora.requests) == 2, "paging stops once a whole page started before since - lookback"

        with pytest.raises(SourceError, match="no such execution"):
            source.fetch("does-not-exist")

    with SourceSet(SourcesSettings.of(agora_url=agora.url, agora_token=Secret("wrong-token"))) as sources:
        ok, detail = sources.get("agora").probe()
        assert not ok and "token refused" in detail and "wrong-token" not in detail
        with pytest.raises(SourceError) as refused:
            list(sources.get("agora").list_sessions(None))
        assert "401" in str(refused.value) and "wrong-token" not in str(refused.value)

    code, out = pipeline.cli("check")
    assert code == 0 and {c["name"]: c["ok"] for c in out["checks"]}["source:agora"] is True
    code, out = pipeline.cli("export", "agora:does-not-exist")
    assert code == 1 and "no such execution" in out["results"][0]["error"]

    # a token from the environment is bound to it, never a plain value in the definitions
    sources_resource = build_definitions(from_environment(pipeline.environment())).resources["sources"]
    assert isinstance(sources_resource.agora_token, dg.EnvVar)
    assert TOKEN not in capsys.readouterr().out


def test_agora_legacy_bare_lists_export_too(pipeline: Pipeline, only_new_sources: Path):
    """Agora releases up to late 2025 answered spans and events as bare lists: still read."""
    with AgoraDouble(legacy=True) as double:
        pipeline.configure(sources={"agora_url": double.url, "agora_token": Secret(TOKEN)})
        keys = populate(double)
        assert isinstance(httpx.get(f"{double.url}/executions/ex-ok/telemetry-spans",
                                    headers={"Authorization": f"Bearer {TOKEN}"}).json(), list)
        code, out = pipeline.cli("export", keys["ok"], keys["err"])
    assert code == 0 and out["exported_count"] == 2, out
    events = [e for e in uploads_by_table(only_new_sources)["agent_telemetry_events"] if e["case_id"] == "ex-ok"]
    plan = next(e for e in events if e["activity"] == "Plan")
    assert (plan["model"], plan["input_tokens"], plan["output_tokens"]) == ("gpt-4o-2024-08-06", "1200", "300")
    assert len([e for e in events if e["activity"] == "Call tool lookup_customer"]) == 3


def epoch_ms(value: str) -> int:
    return int(dt.datetime.fromisoformat(value).timestamp() * 1000)


def test_agora_as_the_real_backend_serves_it(pipeline: Pipeline, only_new_sources: Path,
                                             instance: dg.DagsterInstance):
    """Against the simulator, which answers as the real backend does (wrapped spans and events, every column,
    `SpanKind.*`, UNSET, skipped and "Unknown" nodes, null and fractional durations, span times in the
    clients' naive local time): every finished execution exports through the sensor, each node carries
    the model and tokens of the LLM calls under its exec span, and every event lies inside its execution."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with Simulator(SimulationConfig(sessions=40, events_per_session=30, seed=11)) as sim:
        pipeline.configure(sources={"agora_url": sim.url, "agora_token": Secret(TOKEN)})
        listing = httpx.get(f"{sim.url}/executions/", params={"limit": 100}, headers=auth).json()
        finished = {e["id"]: e for e in listing if e["status"] != "running"}
        assert 0 < len(finished) < len(listing), "the simulator keeps some executions running"
        assert "timeout" in {e["status"] for e in finished.values()}

        defs = pipeline.defs()
        sensor = defs.resolve_sensor_def("new_sessions_sensor")
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            result = sensor(context)
        assert set(instance.get_dynamic_partitions("agent_sessions")) == {f"agora:{eid}" for eid in finished}
        job = defs.resolve_job_def("export_sessions")
        for run_request in result.run_requests:
            assert job.execute_in_process(instance=instance, tags=run_request.tags).success
        assert instance.get_materialized_partitions(EXPORT) == {f"agora:{eid}" for eid in finished}

        tables = uploads_by_table(only_new_sources)
        runs = {r["agent_run_id"]: r for r in tables["agent_telemetry_runs"]}
        assert set(runs) == set(finished)
        skews, unknown_names = set(), 0
        for eid, execution in finished.items():
            assert runs[eid]["status"] == ("completed" if execution["status"] == "success" else "failed")
            start, end = epoch_ms(execution["started_at"]), epoch_ms(execution["completed_at"])
            rows = [e for e in tables["agent_telemetry_events"] if e["case_id"] == eid]
            for row in rows:  # every event inside its execution's time window
                assert start <= int(row["event_time"]) <= end, (eid, row["activity"], row["event_time"])
                assert not row["end_time"] or int(row["event_time"]) <= int(row["end_time"]) <= end, (eid, row)

            timeline = httpx.get(f"{sim.url}/executions/{eid}/timeline", headers=auth).json()["timeline"]
            spans = httpx.get(f"{sim.url}/executions/{eid}/telemetry-spans", headers=auth).json()["spans"]
            (flow,) = [s for s in spans if s["name"].endswith(".flow")]
            skews.add(epoch_ms(flow["start_time"]) - start)
            by_id = {s["span_id"]: s for s in spans}
            calls: dict[str, list[dict[str, Any]]] = {}  # node -> its LLM calls (client spans under its exec span)
            for s in spans:
                parent = by_id.get(s["parent_span_id"] or "")
                if s["kind"].endswith("CLIENT") and parent and parent["name"].endswith(".exec"):
                    calls.setdefault(parent["attributes"]["agora.node"], []).append(s)
            nodes = {json.loads(r["attributes"])["id"]: r for r in rows if r["event_type"] == "node_execution"}
            assert len(nodes) == len(timeline)
            for entry in timeline:
                row = nodes[entry["id"]]
                name = entry["node_id"].rsplit(".", 1)[1]  # the simulator spells the node in its id
                unknown_names += entry["node_name"] == "Unknown"
                assert row["activity"] == (name[:1].upper() + name[1:]).replace("_", " "), "named from its spans"
                assert int(row["event_time"]) == epoch_ms(entry["started_at"])
                llm = sorted(calls.get(name, []), key=lambda s: dt.datetime.fromisoformat(s["start_time"]))
                if entry["status"] == "skipped":
                    assert row["status"] == "skipped" and not llm
                else:  # the SDK leaves prep/post null in the timeline: the phase spans tell them
                    attributes = json.loads(row["attributes"])
                    assert attributes["prep_duration_ms"] is not None and attributes["post_duration_ms"] is not None
                if not llm:
                    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("", "", ""), row
                    continue
                assert row["model"] == llm[-1]["attributes"]["gen_ai.response.model"], (eid, name)
                assert int(row["input_tokens"]) == sum(s["attributes"]["gen_ai.usage.prompt_tokens"] for s in llm)
                assert int(row["output_tokens"]) == sum(s["attributes"]["gen_ai.usage.completion_tokens"] for s in llm)
        assert len(skews) >= 3 and 0 in skews and unknown_names, "local clocks on both sides of UTC, and UTC"


# --------------------------------------------------------------------------------------------------
# OTLP trace files


def any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # protobuf JSON: int64 as a string
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": any_value(v)} for k, v in value.items()]}}
    return {"stringValue": str(value)}


def otlp_span(trace: str, span_id: str, name: str, start: float, end: float | None, parent: str = "",
              kind: Any = 1, status: dict | None = None, numeric: bool = False, **attributes: Any) -> dict[str, Any]:
    def nanos(seconds: float) -> int:
        return int(T0.timestamp()) * 10**9 + round(seconds * 1e9)

    out: dict[str, Any] = {
        "traceId": trace, "spanId": span_id, "parentSpanId": parent, "name": name, "kind": kind,
        "startTimeUnixNano": nanos(start) if numeric else str(nanos(start)),
        "attributes": [{"key": k, "value": any_value(v)} for k, v in attributes.items()],
        "status": status or {},
    }
    if end is not None:
        out["endTimeUnixNano"] = nanos(end) if numeric else str(nanos(end))
    return out


def request(spans: list[dict], service: str = "agent-svc", **resource: Any) -> dict[str, Any]:
    attrs = {"service.name": service, **resource}
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": k, "value": any_value(v)} for k, v in attrs.items()]},
        "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.genai", "version": "0.1"}, "spans": spans}],
    }]}


def snake_case(obj: Any) -> Any:
    """The same document with snake_case keys (as some writers emit)."""
    if isinstance(obj, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): snake_case(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [snake_case(v) for v in obj]
    return obj


T1, T2, T3 = "AB" * 16, "cd" * 16, "0F1E2D3C4B5A69788796A5B4C3D2E1F0"
EVERY_TYPE = {"t.str": "text", "t.int": 42, "t.double": 2.5, "t.bool": True, "t.array": [1, "a", False],
              "t.kvlist": {"k": "v", "n": 2, "inner": {"deep": [1.5]}}, "t.bytes": b"\x00\x01hi"}


def write_inbox(inbox: Path) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    # a.json: camelCase, uppercase ids, kinds/status codes as ints, times as strings
    conversation = {"gen_ai.conversation.id": "conv-1"}
    a = request([
        otlp_span(T1, "A1" * 8, "invoke_agent planner", 0, 10, kind=2, status={"code": 1},
                  **{"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner", **conversation}),
        otlp_span(T1, "A2" * 8, "chat gpt-4o", 1, 3, parent="A1" * 8, kind="SPAN_KIND_CLIENT",
                  **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                     "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 120,
                     "gen_ai.usage.output_tokens": 30}),
        otlp_span(T1, "A3" * 8, "execute_tool search", 4, 5, parent="A1" * 8,
                  status={"code": "STATUS_CODE_ERROR", "message": "search backend timed out"},
                  **{"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}),
        otlp_span(T1, "A4" * 8, "format_answer", 6, 6.5, parent="A1" * 8, numeric=True,
                  **{"traceloop.span.kind": "task", "traceloop.entity.name": "format_answer", **EVERY_TYPE}),
    ])
    (inbox / "a.json").write_text(json.dumps(a, indent=2))
    # b.jsonl: snake_case, lowercase ids, enums as names; the conversation id on the resource
    line1 = snake_case(request([
        otlp_span(T2, "b1" * 8, "chat", 20, 22, kind="CLIENT", status={"code": "OK"},
                  **{"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
                     "gen_ai.usage.prompt_tokens": 50, "gen_ai.usage.completion_tokens": 10}),
        otlp_span(T2, "b2" * 8, "fetch page", 22, None, parent="b1" * 8, kind="SPAN_KIND_INTERNAL",
                  **{"traceloop.span.kind": "tool", "traceloop.entity.name": "web_fetch"}),
    ], **{"session.id": "conv-1"}))
    # a trace without conversation, its spans on two lines with ids in different case
    line2 = request([otlp_span(T3.upper(), "C1" * 8, "nightly", 100, 110, status={"code": 0},
                               **{"traceloop.span.kind": "workflow", "traceloop.workflow.name": "nightly_report"})],
                    service="batch-svc")
    line3 = request([otlp_span(T3.lower(), "c2" * 8, "openai.completion", 101, 104, parent="c1" * 8, kind=3,
                               **{"llm.request.type": "completion", "llm.request.model": "gpt-3.5-turbo-instruct",
                                  "llm.usage.prompt_tokens": 7, "llm.usage.completion_tokens": 3,
                                  "llm.usage.total_tokens": 10})], service="batch-svc")
    cut = json.dumps(request([otlp_span(T3, "c3" * 8, "lost", 105, 106)]))[:70]  # the writer died mid-line
    lines = [json.dumps(line1), json.dumps(line2), json.dumps(line3), cut]
    (inbox / "b.jsonl").write_text("\n".join(lines))


def test_otlp_trace_files_end_to_end(pipeline: Pipeline, only_new_sources: Path, caplog: pytest.LogCaptureFixture):
    home = only_new_sources
    inbox = home.parent / "traces"
    write_inbox(inbox)
    pipeline.configure(sources={"otlp_dir": inbox})
    caplog.set_level(logging.WARNING, logger="telemetry_pipeline.sources.otlp")
    t3 = T3.lower()

    code, out = pipeline.cli("discover")
    assert code == 0 and sorted(out["new_keys"]) == sorted(["otlp:conv-1", f"otlp:{t3}"])
    assert re.search(r"skipped b\.jsonl line 4: ", caplog.text), caplog.text
    code, out = pipeline.cli("export", "--pending")
    assert code == 0 and out["exported_count"] == 2, out

    tables = uploads_by_table(home)
    runs = {r["agent_run_id"]: r for r in tables["agent_telemetry_runs"]}
    conv, batch = runs["conv-1"], runs[t3]
    assert conv["event_count"] == "6", "a.json's trace and b.jsonl's trace are one conversation"
    assert conv["status"] == "partial", "a tool span failed, no root span did"
    assert conv["agent_name"] == "planner" and conv["service_name"] == "agent-svc"
    assert conv["start_time"] == ms(0) and conv["end_time"] == ms(22)
    # The workflow span is the case (its workflow), not a step of it: the completion is the one event.
    assert batch["event_count"] == "1" and batch["status"] == "completed"
    # No agent named in the trace: AGENT_NAME, which the operator set, before the trace's service.
    assert batch["workflow_name"] == "nightly_report" and batch["agent_name"] == "test-agent"

    events = {e["activity"]: e for e in tables["agent_telemetry_events"]}
    assert {a for a, e in events.items() if e["case_id"] == "conv-1"} == {
        "Invoke agent planner", "Chat", "Call tool search", "Task format_answer", "Call tool web_fetch"}
    chats = [e for e in tables["agent_telemetry_events"] if e["activity"] == "Chat"]
    assert sorted((c["model"], c["input_tokens"], c["output_tokens"]) for c in chats) == [
        ("gpt-4o-2024-08-06", "120", "30"), ("gpt-4o-mini", "50", "10")]
    tool = events["Call tool search"]
    assert (tool["status"], tool["error"], tool["tool_name"], tool["resource"]) == (
        "failed", "search backend timed out", "search", "planner"), "the agent that called the tool"
    assert tool["event_time"] == ms(4) and tool["end_time"] == ms(5) and tool["latency_ms"] == "1000"
    open_span = events["Call tool web_fetch"]
    assert open_span["end_time"] == "" and open_span["status"] == "incomplete" and open_span["latency_ms"] == ""
    assert open_span["tool_name"] == "web_fetch"
    typed = json.loads(events["Task format_answer"]["attributes"])
    assert {k: typed[k] for k in EVERY_TYPE} == {**EVERY_TYPE, "t.bytes": base64.b64encode(b"\x00\x01hi").decode()}
    assert typed["otel.trace_id"] == T1.lower() and typed["resource.service.name"] == "agent-svc"
    assert json.loads(events["Invoke agent planner"]["attributes"])["otel.span.kind"] == "SERVER"
    assert json.loads(events["Chat"]["attributes"])["otel.span.kind"] == "CLIENT"
    completion = events["Text completion"]
    assert (completion["model"], completion["input_tokens"], completion["output_tokens"]) == (
        "gpt-3.5-turbo-instruct", "7", "3")
    assert completion["case_id"] == t3 and completion["resource"] == "test-agent", "no agent named: the case's"
    ids = [e["event_id"] for e in tables["agent_telemetry_events"]]
    assert len(ids) == len(set(ids)) == 7

    # the cut-off line is visible in the raw payload of the sessions from that file
    (raw,) = raw_rows(home, "SELECT body FROM raw_telemetry WHERE session_key = ?", [f"otlp:{t3}"])
    assert [(s["file"], s["line"]) for s in json.loads(raw[0])["skipped_lines"]] == [("b.jsonl", 4)]

    # late spans for an exported conversation: not re-exported by discovery, re-read on a forced export
    late = request([otlp_span("EF" * 16, "e1" * 8, "chat", 30, 31, **{"gen_ai.operation.name": "chat",
                                                                       "gen_ai.conversation.id": "conv-1"})])
    (inbox / "c.jsonl").write_text(json.dumps(late) + "\n")
    code, out = pipeline.cli("discover")
    assert code == 0 and out["new_count"] == 0
    code, out = pipeline.cli("export", "--force", "otlp:conv-1")
    assert code == 0 and out["exported_count"] == 1
    assert warehouse_rows(home, "SELECT event_count FROM sessions WHERE session_id = 'conv-1'") == [(7,)]


def test_otlp_reference_example_exports_from_default_inbox(pipeline: Pipeline, only_new_sources: Path):
    home = only_new_sources
    (home / "inbox").mkdir(parents=True)
    shutil.copy(shared_path("fixtures", "otlp-trace-example.json"), home / "inbox" / "example.json")
    environment = pipeline.environment()
    assert "OTLP_INBOX_DIR" not in environment
    pipeline.settings = from_environment(environment)  # no OTLP_INBOX_DIR: <home>/inbox is used

    code, out = pipeline.cli("check")
    assert {c["name"]: c["ok"] for c in out["checks"]}["source:otlp"] is True
    code, out = pipeline.cli("export", "otlp:5b8efff798038103d269b633813fc60c")
    assert code == 0 and out["exported_count"] == 1, out

    tables = uploads_by_table(home)
    (run,) = tables["agent_telemetry_runs"]
    assert run["agent_run_id"] == "5b8efff798038103d269b633813fc60c" and run["source"] == "otlp"
    assert (run["start_time"], run["end_time"], run["status"]) == ("1544712660000", "1544712661000", "completed")
    assert run["service_name"] == "my.service" and run["task_description"] == "I'm a server span"
    (event,) = tables["agent_telemetry_events"]
    # No agent in the trace: the case's agent, AGENT_NAME (set here) before the service
    assert (event["activity"], event["event_type"], event["resource"], event["latency_ms"], event["status"]) == (
        "I'm a server span", "span", "test-agent", "1000", "success")
    attributes = json.loads(event["attributes"])
    assert attributes["my.span.attr"] == "some value"
    assert attributes["scope.my.scope.attribute"] == "some scope attribute"
    assert attributes["otel.span.kind"] == "SERVER" and attributes["otel.parent_span_id"] == "eee19b7ec3c1b173"
    code, out = pipeline.cli("status", "otlp:5b8efff798038103d269b633813fc60c")
    assert out[0]["exported"] is True and out[0]["ingestion_status"] == "OUTBOX"

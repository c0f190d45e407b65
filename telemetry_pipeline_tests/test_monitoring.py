"""What the UI shows: each session at a glance, data-quality checks, the process overview, CLI progress."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import re
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from telemetry_pipeline import cli
from telemetry_pipeline.canonical.activity import span_activity
from telemetry_pipeline.console import quality
from telemetry_pipeline.console.overview import END, START, ActivityFigures, Edge
from telemetry_pipeline.console.process_map import (
    MAX_WIDTH,
    Box,
    MapLayout,
    draw_process_map,
    layout_process_map,
)
from telemetry_pipeline.console.render import MAX_INLINE_MARKDOWN, errors_markdown, timeline_markdown
from telemetry_pipeline.console.session_summary import Failure, Step
from telemetry_pipeline.defs.assets import process_overview
from telemetry_pipeline.settings import Secret
from telemetry_pipeline_tests.conftest import Pipeline
from telemetry_pipeline_tests.source_double import SourceDouble, agent_event

EXPORT = dg.AssetKey("signavio_export")


def latest_metadata(instance: dg.DagsterInstance, key: str) -> dict[str, dg.MetadataValue]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=EXPORT, asset_partitions=[key]), limit=1
    ).records
    return dict(records[0].event_log_entry.asset_materialization.metadata)


def test_exported_session_shows_its_summary_and_timeline(
    pipeline: Pipeline, instance: dg.DagsterInstance, source_double: SourceDouble
):
    key = source_double.add_good("extract", "glance", n_tools=3, fail_last=True)
    other = source_double.add_good("extract", "other", n_tools=1)
    assert pipeline.cli("export", key, other)[0] == 0

    meta = latest_metadata(instance, key)
    values = {name: value.value for name, value in meta.items()}
    assert values["agent"] == "test-agent"
    assert values["run_status"] == "failed", "the session ended on a failed tool call"
    assert values["start"] == dt.datetime(2025, 1, 15, 10, 30, tzinfo=dt.UTC).timestamp()
    assert values["duration_s"] == 7.0
    assert values["tool_calls"] == "3 (2 succeeded, 1 failed)"
    assert values["models"] == "gpt-4o"
    # The model calls' tokens (the prompt's 40 are part of the call's input, not counted twice), as the case table's
    assert (values["input_tokens"], values["output_tokens"]) == (100, 20)
    assert values["agents"] == "test-agent"
    assert values["first_error"] == "permission denied"
    assert values["errors"].splitlines()[2:] == ["| 5 | Call tool tool_2 | permission denied |"]
    assert values["event_counts"].startswith("8 source events → 5 event-log rows"), "tool calls are paired"
    timeline = values["timeline"]
    rows = timeline.splitlines()[2:]
    assert len(rows) == 5, timeline  # prompt, model change, three paired tool calls: all shown, nothing "more"
    assert "User prompt" in rows[0] and "Call tool tool_2" in rows[4] and "failed" in rows[4]
    assert len(timeline) < 1000, "short enough for the UI to render the table inline"
    # The contract's fields stay (INTERFACE.md).
    for name in ("execution_id", "execution_ids", "ingestion_status", "runs_table", "events_table", "runs_rows",
                 "events_rows", "destination"):
        assert name in meta
    assert "first_error" not in latest_metadata(instance, other), "only what is known is shown"
    assert "errors" not in latest_metadata(instance, other)

    # Exported, both; the agent's outcome in words first on each page, and the run's check WARNs, naming the failure.
    assert next(iter(meta)) == "agent_outcome"
    assert values["agent_outcome"] == "✗ the agent's run failed: permission denied"
    assert latest_metadata(instance, other)["agent_outcome"].value == "✓ the agent completed its run"
    [history] = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(EXPORT, "agent_outcome"), limit=1)
    evaluation = history.event.dagster_event.event_specific_data
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert (evaluation.metadata["failed"].value, evaluation.metadata["completed"].value) == (1, 1)
    assert evaluation.metadata["failed_sessions_sample"].value == [key]


def test_a_long_session_shows_how_it_started_how_it_ended_and_every_error(
    pipeline: Pipeline, instance: dg.DagsterInstance, source_double: SourceDouble
):
    at = lambda s: f"2025-01-15T10:30:{s:02d}Z"  # noqa: E731
    events = [agent_event(at(0), "user_prompt", prompt="Find the cheapest flight", tokens=12)]
    failing = {3: ("search_web", "TimeoutError", "search_web timed out after 30 s"),
               7: ("search_web", "TimeoutError", "search_web timed out after 30 s"),
               10: ("read_file", "PermissionError", "no access to /etc/shadow")}
    for i in range(12):
        tool, kind, message = failing.get(i, (f"tool_{i}", None, None))
        events.append(agent_event(at(1 + 4 * i), "tool_call_started", tool_name=tool, call_id=f"c{i}"))
        done = {"tool_name": tool, "call_id": f"c{i}", "success": kind is None, "latency_ms": 100 + i}
        if kind:
            done |= {"error": kind, "error_details": message}
        events.append(agent_event(at(2 + 4 * i), "tool_call_completed", **done))
    events.append(agent_event(at(59), "user_prompt", response="Flight LH 123 for 89 EUR"))
    key = source_double.add("agent_telemetry", "long", {"session_id": "long", "events": events})
    assert pipeline.cli("export", key)[0] == 0

    meta = latest_metadata(instance, key)
    values = {name: value.value for name, value in meta.items()}
    # 1 prompt + 12 calls (each a start and an end event) + the answer = 26 source events, 14 rows.
    assert (values["events"], values["events_rows"]) == (26, 14), "the contract's counts stay"
    assert values["event_counts"] == ("26 source events → 14 event-log rows "
                                      "(a start and its end, e.g. of a tool call, are paired into one row)")
    assert values["first_error"] == "TimeoutError: search_web timed out after 30 s", "the kind and its message"

    timeline = values["timeline"].splitlines()[2:]
    # The first steps, every failed one (5, 9, 12) with the step before and after it, the last steps.
    assert [row.split("|")[1].strip() for row in timeline] == [
        "1", "2", "3", "4", "5", "6", "", "8", "9", "10", "11", "12", "13", "14"]
    assert "… 1 more step |" in timeline[6]
    assert [row.split("|")[1].strip() for row in timeline if "**failed**" in row] == ["5", "9", "12"]
    assert "Agent response" in timeline[-1], "the final answer is on the page"
    assert "PermissionError" not in values["timeline"], "the error's text is in `errors`"

    errors = values["errors"].splitlines()[2:]
    assert errors == [
        "| 5, 9 | Call tool search_web | TimeoutError: search_web timed out after 30 s |",
        "| 12 | Call tool read_file | PermissionError: no access to /etc/shadow |",
    ], values["errors"]
    for name in ("timeline", "errors"):
        assert len(values[name]) <= MAX_INLINE_MARKDOWN, f"{name} renders inline"
    names = list(meta)
    assert names.index("timeline") < names.index("execution_id") < names.index("destination"), \
        "the meaning first, then the plumbing"


def test_errors_and_timeline_fit_inline_and_say_what_was_left_out():
    many = tuple(Failure(step, None, f"Call tool t{step}", f"ValueError: {'x' * 200} {step}") for step in range(1, 51))
    text = errors_markdown(many, total=70)
    rows = text.splitlines()[2:]
    assert len(text) <= MAX_INLINE_MARKDOWN and 3 <= len(rows) < 50, text
    assert rows[-1] == f"| | … {70 - (len(rows) - 1)} more errors | |", "every error counted, shown or not"
    assert all(len(row.split("|")[3].strip()) <= 110 for row in rows[:-1]), "messages are truncated"

    steps = tuple(Step(n, n * 1000, "Call tool " + "w" * 60, "success", 5) for n in (*range(1, 6), 98, 99, 100))
    text = timeline_markdown(steps, total=100)
    rows = text.splitlines()[2:]
    assert len(text) <= MAX_INLINE_MARKDOWN, text
    assert [r.split("|")[1].strip() for r in rows][-1] == "100", "the end is never cut"
    shown = [int(n) for r in rows if (n := r.split("|")[1].strip())]
    hidden = sum(int(n) for n in re.findall(r"… (\d+) more steps?", text))
    assert shown[0] == 1 and len(shown) + hidden == 100


def test_a_long_timeline_keeps_every_failure_and_says_what_it_cut():
    """Too long to render inline: the plain first and last steps go first, then the neighbours of failures; every
    failure stays, and a model call shows its tokens and cost."""
    failed = {40, 41, 70}
    around = sorted({n + d for n in failed for d in (-1, 0, 1)})
    kept = (*range(1, 6), *around, 98, 99, 100)
    steps = tuple(Step(n, n * 1000, "Call tool " + "w" * 60 if n not in (1, 100) else "Chat", "failed" if n in failed
                       else "success", 5, n in failed, *((300, 20, 0.0012) if n in (1, 100) else (None, None, None)))
                  for n in kept)
    text = timeline_markdown(steps, total=100)
    rows = text.splitlines()
    assert len(text) <= MAX_INLINE_MARKDOWN, text
    assert rows[0] == "| # | s | activity | status | ms | tokens | USD |"
    numbers = [int(n) for r in rows[2:] if (n := r.split("|")[1].strip())]
    assert numbers[0] == 1 and numbers[-1] == 100 and failed <= set(numbers), text
    assert "| 300→20 | 0.0012 |" in rows[2] and rows[-1].endswith("| 300→20 | 0.0012 |")
    hidden = sum(int(n) for n in re.findall(r"… (\d+) more steps?", text))
    assert len(numbers) + hidden == 100, "every step counted, shown or not"
    assert "failed: see errors" not in text, "no failure was cut"


def test_cli_export_shows_progress_on_stderr_and_json_on_stdout(
    pipeline: Pipeline, source_double: SourceDouble, capsys: pytest.CaptureFixture[str]
):
    pipeline.configure(batch_size=2)
    for i in range(3):
        source_double.add_good("extract", f"p{i}")
    pipeline.cli("discover")
    capsys.readouterr()
    assert cli.main(["export", "--pending"], settings=pipeline.settings) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["exported_count"] == 3, "stdout holds the JSON alone"
    assert re.search(r"3/3 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(session/s|s/session)\]", captured.err), captured.err[-500:]



@pytest.mark.parametrize("name", [
    "GET /orders/order1234567", "GET /orders/4f1c9e27b3d84a6e0a1b", "job 123e4567-e89b-12d3-a456-426614174000 done",
    "span_0123456789abcdef01", "step 20251130", "Sleep 120s", "chat gpt-4o-2024-08-06", "deadbeefcafefacade",
])
def test_the_activity_check_and_the_naming_share_one_id_rule(name: str):
    """What the naming leaves in a span's activity passes the check; the check flags exactly what it replaces."""

    def flagged(label: str) -> bool:
        events = frame({"event_id": ["e1"], "case_id": ["case-1"], "activity": [label], "event_time": [1],
                           "end_time": [None], "model": [None], "cost_usd": [None], "input_tokens": [None],
                           "output_tokens": [None]})
        (alphabet,) = [o for o in quality.check_upload(_runs(["case-1"]), events, 10)
                       if o.name == "activity_alphabet"]
        return bool(alphabet.metadata["id_like_sample"])

    named = span_activity(None, None, None, None, None, None, name)
    assert not flagged(named), named
    assert flagged(name) == (named != name), named

def frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """A table as the CSV step hands it to the checks: Arrow-backed dtypes."""
    return pa.table(columns).to_pandas(types_mapper=pd.ArrowDtype)


def _runs(ids: list[str], conformance: list[str] | None = None, deviations: list[str | None] | None = None,
          status: list[str] | None = None) -> pd.DataFrame:
    """A case table with the columns the checks read."""
    deviations = deviations or [None] * len(ids)
    return frame({"agent_run_id": ids, "source": ["extract"] * len(ids),
                     "status": status or ["completed"] * len(ids),
                     "conformance": conformance or ["unchecked"] * len(ids),
                     "deviation_count": [(d or "").count('"rule"') for d in deviations],
                     "deviations": pa.array(deviations, pa.string())})


def test_quality_checks_find_each_defect_and_pass_clean_uploads():
    runs = _runs(["a", "b"], ["conforming", "unchecked"], ["[]", None])
    clean = frame({
        "event_id": ["e1", "e2", "e3"], "case_id": ["a", "a", "b"],
        "activity": ["User prompt", "Chat", "User prompt"],
        "event_time": [1, 2, 3], "end_time": [None, 5, None],
        "model": [None, "gpt-4o", None], "input_tokens": [None, 10, None], "output_tokens": [None, 2, None],
        "cost_usd": [None, 0.00005, None],
    })
    assert all(o.passed for o in quality.check_upload(runs, clean, alphabet_limit=5))

    bad = frame({
        "event_id": ["e1", "e1", "e3", "e4", "e5"],
        "case_id": ["a", "a", "ghost", "b", "b"],
        "activity": ["User prompt", "Call tool x", "Fetch 5f0c1e2a-9b7d-4c3e-8a1f-2b3c4d5e6f70", "Step b for case b",
                     "Chat"],
        "event_time": [1, 2, None, 9, 4],
        "end_time": [None, None, None, 3, None],
        "model": [None, None, None, None, "in-house-llm"], "input_tokens": [None, None, None, None, 10],
        "output_tokens": [None, None, None, None, 2], "cost_usd": [None, None, None, None, None],
    })
    deviating = _runs(["a", "b"], ["deviating", "conforming"], [
        '[{"playbook": "p", "rule": "allowed_tools", "detail": "tool x is not allowed"}, '
        '{"playbook": "p", "rule": "max_steps", "detail": "steps 3, over the limit of 2"}]', "[]"],
        status=["partial", "failed"])
    outcomes = {o.name: o for o in quality.check_upload(deviating, bad, alphabet_limit=4)}
    unique = outcomes["event_id_unique"].metadata
    assert unique["duplicates"] == 1 and unique["sample"] == ["e1"]
    assert outcomes["events_have_case"].metadata["sample"] == ["ghost"]
    times = outcomes["event_times_valid"].metadata
    assert (times["without_time"], times["end_before_start"]) == (1, 1)
    alphabet = outcomes["activity_alphabet"].metadata
    assert alphabet["distinct_activities"] == 5 and len(alphabet["id_like_sample"]) == 1
    prices = outcomes["model_prices_known"].metadata
    assert (prices["model_calls"], prices["without_cost"], prices["models_sample"]) == (1, 1, ["in-house-llm"])
    conformance = outcomes["playbook_conformance"].metadata
    assert (conformance["deviating"], conformance["conforming"], conformance["unchecked"]) == (1, 1, 0)
    assert conformance["sessions_sample"] == ["extract:a"]
    assert conformance["rules_broken"] == {"allowed_tools": 1, "max_steps": 1}
    outcome = outcomes["agent_outcome"].metadata
    assert (outcome["partial"], outcome["failed"], outcome["failed_sessions_sample"]) == (1, 1, ["extract:b"])
    assert not any(o.passed for o in outcomes.values())


def test_checks_run_with_every_export_and_only_warn(
    pipeline: Pipeline, instance: dg.DagsterInstance, source_double: SourceDouble
):
    pipeline.configure(activity_alphabet_limit=2)  # the good sessions have 4 activities
    key = source_double.add_good("extract", "checked", n_tools=2)
    code, out = pipeline.cli("export", key)
    assert code == 0 and out["exported_count"] == 1, "a failed check does not block the upload"
    results = {}
    for name in quality.DESCRIPTIONS:
        history = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(EXPORT, name), limit=1)
        evaluation = history[0].event.dagster_event.event_specific_data
        results[name] = (evaluation.passed, evaluation.severity)
    assert results.pop("activity_alphabet") == (False, dg.AssetCheckSeverity.WARN)
    assert results.pop("agent_outcome") == (True, dg.AssetCheckSeverity.WARN), "the agent completed"
    assert all(passed for passed, _ in results.values()), results


@pytest.mark.parametrize("store", ["duckdb", "postgres"])
def test_process_overview_figures_and_picture(
    pipeline: Pipeline, instance: dg.DagsterInstance, source_double: SourceDouble, store: str,
    request: pytest.FixtureRequest, home: Path,
):
    if store == "postgres":  # read through the warehouse interface, whichever store holds the sessions
        pipeline.configure(warehouse={"url": Secret(request.getfixturevalue("postgres_url"))})
    keys = [source_double.add_good("extract", f"ov{i}", n_tools=2, fail_last=i == 0) for i in range(3)]
    assert pipeline.cli("export", *keys)[0] == 0
    result = dg.materialize([process_overview], instance=instance, resources=pipeline.defs().resources)
    meta = result.asset_materializations_for_node("process_overview")[0].metadata

    assert (meta["cases"].value, meta["events"].value) == (3, 12)  # prompt, model change, 2 tool calls each
    activities = {r.data["activity"]: r.data for r in meta["activities"].value.records}
    assert activities["Call tool tool_1"]["count"] == 3
    assert activities["Call tool tool_1"]["failure_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert activities["Call tool tool_1"]["median_ms"] == 900
    variants = meta["variants"].value.records
    assert [v.data["cases"] for v in variants] == [3] and variants[0].data["activities"] == 4
    assert variants[0].data["variant"].startswith("User prompt → Change model")
    assert variants[0].data["example_session"] in keys
    models = meta["tokens_by_model"].value.records
    assert [(m.data["model"], m.data["tokens"]) for m in models] == [("gpt-4o", "300→60")]
    # gpt-4o's list price, $2.50 in and $10 out per million tokens: 100 in, 20 out per session
    price = (100 * 2.50 + 20 * 10.0) / 1e6
    assert models[0].data["cost_usd"] == pytest.approx(3 * price) and meta["unpriced_models"].value == []
    costliest = meta["costliest_sessions"].value.splitlines()[2:]
    assert len(costliest) == 3 and all(f"| {price:.4f} |" in row for row in costliest)
    assert {re.search(r"\[([^\]]+)\]", row).group(1) for row in costliest} == set(keys)

    # The map: an SVG that fits the UI (1,200 px), in the markdown and as a file under the home.
    assert meta["activities_shown"].value == "4 of 4"
    image = re.search(r"!\[[^\]]*\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", meta["process_map"].value)
    assert image, "markdown holding one SVG as a data: URL"
    assert "4 of 4 activities shown" in meta["process_map"].value
    svg = base64.b64decode(image.group(1)).decode()
    assert float(re.search(r'<svg[^>]* width="([\d.]+)"', svg).group(1)) <= MAX_WIDTH
    map_file = home / "overview" / "process_map.svg"
    assert meta["process_map_file"].value == str(map_file) and map_file.read_text() == svg
    assert str(map_file) in meta["process_map"].value, "the path is shown beside the picture"

    empty = dg.materialize(
        [process_overview], instance=instance, resources=pipeline.defs().resources,
        run_config={"ops": {"process_overview": {"config": {"window_hours": 1e-9}}}},
    )
    assert empty.asset_materializations_for_node("process_overview")[0].metadata["cases"].value == 0


def agent_session(agent: str, workflow: str, calls: list[tuple[str, str | None]], seconds: int = 10) -> dict:
    """A session of `agent` in `workflow`: a prompt, then one tool call per (tool, error or None), spread over
    `seconds`; an error is `TimeoutError` with that message."""
    at = lambda s: (dt.datetime(2025, 1, 15, 10, 30, tzinfo=dt.UTC) + dt.timedelta(seconds=s)).isoformat()  # noqa: E731
    events = [agent_event(at(0), "user_prompt", prompt="Plan the trip", tokens=5)]
    for i, (tool, error) in enumerate(calls):
        start, end = seconds * (i + 1) / (len(calls) + 1), seconds * (i + 1.5) / (len(calls) + 1)
        events.append(agent_event(at(start), "tool_call_started", tool_name=tool, call_id=f"c{i}"))
        done = {"tool_name": tool, "call_id": f"c{i}", "success": error is None}
        events.append(agent_event(at(end), "tool_call_completed", **done,
                                  **({"error": "TimeoutError", "error_details": error} if error else {})))
    return {"agent_name": agent, "workflow_name": workflow, "events": events}


def test_process_overview_says_how_the_agents_did_and_which_sessions_to_open(
    pipeline: Pipeline, instance: dg.DagsterInstance, source_double: SourceDouble
):
    slow = "search timed out after 30 s"
    sessions = {
        "p-ok1": agent_session("planner", "trips", [("search", None)]),
        "p-ok2": agent_session("planner", "trips", [("search", None), ("book", None)]),
        "p-fail": agent_session("planner", "trips", [("search", slow), ("search", slow)]),  # ended on a failure
        "c-partial": agent_session("coder bot", "fixes", [("search", slow), ("edit", None)], seconds=50),
        "c-long": agent_session("coder bot", "fixes", [("edit", None)], seconds=300),
    }
    keys = {sid: source_double.add("agent_telemetry", sid, body) for sid, body in sessions.items()}
    assert pipeline.cli("export", *keys.values())[0] == 0
    meta = dg.materialize([process_overview], instance=instance, resources=pipeline.defs().resources) \
        .asset_materializations_for_node("process_overview")[0].metadata

    assert meta["outcomes"].value == ("5 sessions: 3 completed (60.0%), 1 partial (20.0%), 1 failed (20.0%); "
                                      "success rate 80.0% (completed or partial)")
    assert meta["success_rate_pct"].value == 80.0
    by_agent = {r.data["agent"]: r.data for r in meta["outcomes_by_agent"].value.records}
    assert by_agent["planner"] == {"agent": "planner", "sessions": 3, "failed_pct": 33.3, "partial_pct": 0.0}
    cost = {r.data["agent"]: r.data for r in meta["cost_by_agent"].value.records}
    assert cost["planner"] == {"agent": "planner", "tokens": "0→0", "cost_usd": None}
    assert by_agent["coder bot"]["partial_pct"] == 50.0 and by_agent["coder bot"]["failed_pct"] == 0.0
    by_workflow = {r.data["workflow"]: r.data["sessions"] for r in meta["outcomes_by_workflow"].value.records}
    assert by_workflow == {"trips": 3, "fixes": 2}

    [failing] = [r.data for r in meta["failing_activities"].value.records]
    assert failing == {"activity": "Call tool search", "failed": "3 (60.0 %)",
                       "most_common_errors": f"3× TimeoutError: {slow}"}
    # The sessions to open: links to their pages, in tables that render inline.
    slowest = meta["slowest_sessions"].value.splitlines()
    assert slowest[:2] == ["| session | agent | s |", "|---|---|---|"]
    link = "[{0}](/assets/signavio_export?view=partitions&partition={0})"
    assert slowest[2] == f"| {link.format(keys['c-long'])} | coder bot | {300 * 1.5 / 2:.1f} |"
    assert slowest[3].startswith(f"| {link.format(keys['c-partial'])} |")
    assert meta["failed_sessions"].value.splitlines()[2:] == [
        f"| {link.format(keys['p-fail'])} | planner | TimeoutError: {slow} |"]
    assert all(len(meta[name].value) <= MAX_INLINE_MARKDOWN for name in ("slowest_sessions", "failed_sessions"))
    names = list(meta)
    assert names.index("outcomes") < names.index("process_map"), "what the agents did comes first"

    # Each session's materialisation carries its agent, workflow and outcome as tags (values Dagster accepts).
    records = instance.fetch_materializations(EXPORT, limit=10).records
    tags = {r.partition_key: r.event_log_entry.asset_materialization.tags for r in records}
    assert tags[keys["p-fail"]] == {"agent": "planner", "workflow": "trips", "outcome": "failed"}
    assert tags[keys["c-partial"]] == {"agent": "coder_bot", "workflow": "fixes", "outcome": "partial"}


def assert_readable(layout: MapLayout) -> None:
    """No two pieces of text overlap, and no arc runs through text: a level run crosses no text box, and a
    curve between two points stays in their rectangle (its control points do), which holds no text."""
    labels = layout.labels
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert not a.overlaps(b), f"labels overlap: {a.text} and {b.text}"
    for route in layout.routes:
        for (x1, y1), (x2, y2) in itertools.pairwise(route.points):
            e = 0.01  # px: where an arc meets a box's side (float noise, not a crossing)
            if abs(x1 - x2) < 0.5:  # straight down (or up)
                area = Box(x1 - 0.5, min(y1, y2) + e, 1.0, abs(y2 - y1) - 2 * e)
            else:
                area = Box(min(x1, x2), min(y1, y2) + e, abs(x2 - x1), abs(y2 - y1) - 2 * e)
            crossed = [b.text for b in labels if area.overlaps(b)]
            assert not crossed, f"arc {route.source} -> {route.target} runs through {crossed}"


def test_process_map_draws_loops_and_pseudo_activities_readably():
    edges = [Edge(START, "A", 5, None), Edge("A", "A", 2, 10.0), Edge("A", "B", 5, 1500.0),
             Edge("B", "A", 1, 70_000.0), Edge("B", END, 5, 0.0)]
    activities = [ActivityFigures("A", 7, 5, 0.0, 12.0), ActivityFigures("B", 5, 5, 0.2, None)]
    drawn = draw_process_map(edges, activities)
    layout = drawn.layout
    assert set(layout.nodes) == {START, "A", "B", END}
    assert layout.nodes["A"].text == ("A", "7× · median 12 ms · ↻ 2"), "a self-loop is a count in the box"
    assert [(r.source, r.target, r.back) for r in layout.routes if r.back] == [("B", "A", True)]
    assert any("↻ n" in line for line in layout.legend.text), "the legend explains ↻"
    assert layout.title.text == ("2 of 2 activities shown (the busiest), 4 of their transitions",)
    assert_readable(layout)
    assert drawn.svg.startswith("<svg") and drawn.svg.count("<rect") == 5  # background + 4 boxes
    assert layout_process_map([], []).width <= MAX_WIDTH, "an empty window still draws (an empty map)"


def test_a_busy_process_map_shows_the_busiest_activities_and_stays_readable():
    names = [f"Call tool {tool}_{i}" for i, tool in enumerate(["search_web", "read_file", "query_erp"] * 10)][:28]
    activities = [ActivityFigures(n, 1000 - 30 * i, 100, 0.1, 100.0 * i) for i, n in enumerate(names)]
    edges = [Edge(START, names[0], 100, None), Edge(START, names[5], 20, None)]
    for i, source in enumerate(names):  # forward arcs, skips, back arcs and self-loops everywhere
        edges += [Edge(source, names[(i + 1) % 28], 300 - 10 * i, 500.0), Edge(source, names[(i + 3) % 28], 40, 9e4),
                  Edge(source, names[(i * 7) % 28], 15, 3e6), Edge(source, source, 50 - i, 20.0)]
        edges.append(Edge(source, END, 5 + i, 0.0))
    layout = draw_process_map(edges, activities).layout

    assert layout.activities_shown == 12 and layout.activities_total == 28
    assert layout.nodes[START].text[1] == "120 cases", "every case, though not every arc from the start is drawn"
    assert layout.title.text[0].startswith("12 of 28 activities shown")
    assert layout.width <= MAX_WIDTH, "it fits the UI's dialog at 100 %"
    assert any(r.back for r in layout.routes) and len(layout.routes) > 20
    for name in layout.nodes:  # every activity drawn has its arrows
        assert name == END or any(r.source == name for r in layout.routes), f"nothing leaves {name}"
        assert name == START or any(r.target == name for r in layout.routes), f"nothing reaches {name}"
    assert_readable(layout)


def test_failing_activities_and_arrows_out_of_failures_are_marked():
    edges = [Edge(START, "Plan", 10, None), Edge("Plan", "Call tool pay", 10, 300.0),
             Edge("Call tool pay", "Call tool pay", 4, 50.0), Edge("Call tool pay", "Apologise", 3, 90.0, failures=3),
             Edge("Call tool pay", END, 7, 0.0), Edge("Apologise", END, 3, 0.0)]
    activities = [ActivityFigures("Plan", 10, 10, 0.0, 100.0), ActivityFigures("Call tool pay", 14, 10, 3 / 14, 40.0),
                  ActivityFigures("Apologise", 3, 3, 0.0, 10.0)]
    drawn = draw_process_map(edges, activities)
    assert drawn.layout.failing == {"Call tool pay"}
    assert drawn.layout.nodes["Call tool pay"].text[2] == "✗ 3 failed (21.4 %)"
    [out] = [r for r in drawn.layout.routes if r.target == "Apologise"]
    assert out.failures == 3 and out.label.text == ("3", "90 ms · ✗ 3")
    assert drawn.svg.count('stroke="#b3261e"') == 1, "one failing box"
    assert_readable(drawn.layout)

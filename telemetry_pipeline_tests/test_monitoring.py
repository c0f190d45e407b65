"""What the UI shows: each session at a glance, data-quality checks, the process overview, CLI progress."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import struct

import dagster as dg
import pandas as pd
import pytest

from telemetry_pipeline import cli, quality
from telemetry_pipeline.assets import process_overview
from telemetry_pipeline.canonical.activity import span_activity
from telemetry_pipeline.overview import END, START
from telemetry_pipeline.process_map import draw_process_map
from telemetry_pipeline.settings import Secret
from telemetry_pipeline_tests.conftest import Pipeline
from telemetry_pipeline_tests.source_double import SourceDouble

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
    assert (values["input_tokens"], values["output_tokens"]) == (140, 20)  # prompt 40 + model call 100
    assert values["first_error"] == "permission denied"
    timeline = values["timeline"]
    rows = timeline.splitlines()[2:]
    assert len(rows) == 5, timeline  # prompt, model change, three paired tool calls
    assert "User prompt" in rows[0] and "Call tool tool_2" in rows[4] and "failed" in rows[4]
    assert len(timeline) < 1000, "short enough for the UI to render the table inline"
    # The contract's fields stay (INTERFACE.md).
    for name in ("execution_id", "execution_ids", "ingestion_status", "runs_table", "events_table", "runs_rows",
                 "events_rows", "destination"):
        assert name in meta
    assert "first_error" not in latest_metadata(instance, other), "only what is known is shown"


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
        events = pd.DataFrame({"event_id": ["e1"], "case_id": ["case-1"], "activity": [label], "event_time": [1],
                               "end_time": [None]})
        (alphabet,) = [o for o in quality.check_upload(pd.DataFrame({"agent_run_id": ["case-1"]}), events, 10)
                       if o.name == "activity_alphabet"]
        return bool(alphabet.metadata["id_like_sample"])

    named = span_activity(None, None, None, None, None, None, name)
    assert not flagged(named), named
    assert flagged(name) == (named != name), named

def test_quality_checks_find_each_defect_and_pass_clean_uploads():
    runs = pd.DataFrame({"agent_run_id": ["a", "b"]})
    clean = pd.DataFrame({
        "event_id": ["e1", "e2", "e3"], "case_id": ["a", "a", "b"],
        "activity": ["User prompt", "Call tool x", "User prompt"],
        "event_time": [1, 2, 3], "end_time": [None, 5, None],
    })
    assert all(o.passed for o in quality.check_upload(runs, clean, alphabet_limit=5))

    bad = pd.DataFrame({
        "event_id": ["e1", "e1", "e3", "e4", "e5"],
        "case_id": ["a", "a", "ghost", "b", "b"],
        "activity": ["User prompt", "Call tool x", "Fetch 5f0c1e2a-9b7d-4c3e-8a1f-2b3c4d5e6f70", "Step b for case b",
                     "Other"],
        "event_time": [1, 2, None, 9, 4],
        "end_time": [None, None, None, 3, None],
    })
    outcomes = {o.name: o for o in quality.check_upload(runs, bad, alphabet_limit=4)}
    unique = outcomes["event_id_unique"].metadata
    assert unique["duplicates"] == 1 and unique["sample"] == ["e1"]
    assert outcomes["events_have_case"].metadata["sample"] == ["ghost"]
    times = outcomes["event_times_valid"].metadata
    assert (times["without_time"], times["end_before_start"]) == (1, 1)
    alphabet = outcomes["activity_alphabet"].metadata
    assert alphabet["distinct_activities"] == 5 and len(alphabet["id_like_sample"]) == 1
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
    assert all(passed for passed, _ in results.values()), results


@pytest.mark.parametrize("store", ["duckdb", "postgres"])
def test_process_overview_figures_and_picture(
    pipeline: Pipeline, instance: dg.DagsterInstance, source_double: SourceDouble, store: str,
    request: pytest.FixtureRequest,
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
    assert [v.data["cases"] for v in variants] == [3] and variants[0].data["steps"] == 4
    models = meta["tokens_by_model"].value.records
    assert [(m.data["model"], m.data["input_tokens"]) for m in models] == [("gpt-4o", 300)]

    image = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", meta["process_map"].value)
    assert image, "markdown holding one PNG as a data: URL"
    png = base64.b64decode(image.group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 300 and height > 200

    empty = dg.materialize(
        [process_overview], instance=instance, resources=pipeline.defs().resources,
        run_config={"ops": {"process_overview": {"config": {"window_hours": 1e-9}}}},
    )
    assert empty.asset_materializations_for_node("process_overview")[0].metadata["cases"].value == 0


def test_process_map_draws_loops_and_pseudo_activities_without_error():
    from telemetry_pipeline.overview import ActivityFigures, Edge

    edges = [Edge(START, "A", 5, None), Edge("A", "A", 2, 10.0), Edge("A", "B", 5, 1500.0),
             Edge("B", "A", 1, 70_000.0), Edge("B", END, 5, 0.0)]
    activities = [ActivityFigures("A", 7, 5, 0.0, 12.0), ActivityFigures("B", 5, 5, 0.2, None)]
    assert draw_process_map(edges, activities)[:4] == b"\x89PNG"
    assert draw_process_map([], [])[:4] == b"\x89PNG", "an empty window still draws (an empty map)"

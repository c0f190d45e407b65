"""The pipeline end to end on a temporary instance: sources (local HTTP) -> Dagster -> outbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from telemetry_pipeline_tests.conftest import Pipeline, outbox_uploads, read_upload, uploads_by_table
from telemetry_pipeline_tests.source_double import SourceDouble, agent_event, good_events
from telemetry_pipeline_tests.test_agora_otlp import raw_rows

EXPORT = dg.AssetKey("signavio_export")


def run_sensor_tick(
    pipeline: Pipeline, instance: dg.DagsterInstance, cursor: str | None = None
) -> tuple[dg.SensorResult, list]:
    """One sensor tick as the daemon does it: apply its partition requests, then run its requests."""
    defs = pipeline.defs()
    sensor = defs.resolve_sensor_def("new_sessions_sensor")
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    runs = [defs.resolve_job_def(r.job_name).execute_in_process(instance=instance, tags=r.tags, raise_on_error=False)
            for r in result.run_requests]
    return result, runs


@pytest.mark.fast  # one export end to end in the quick subset
def test_sensor_discovers_and_exports_to_outbox(
    pipeline: Pipeline, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble
):
    keys = [source_double.add_good("extract", f"ex-{i}", n_tools=3) for i in range(3)]
    keys += [source_double.add_good("agent_telemetry", f"at-{i}", fail_last=True) for i in range(2)]

    result, runs = run_sensor_tick(pipeline, instance)

    assert sorted(instance.get_dynamic_partitions("agent_sessions")) == sorted(keys)
    assert len(result.run_requests) == 1, "five new sessions fit in one batched run"
    assert all(r.success for r in runs)
    assert instance.get_materialized_partitions(EXPORT) == set(keys)
    for stage in ("raw_telemetry", "telemetry_events", "signavio_csv"):  # table assets: one record per run
        event = instance.get_latest_materialization_event(dg.AssetKey(stage))
        assert event.asset_materialization.metadata["sessions"].value == 5

    uploads = outbox_uploads(home)
    assert len(uploads) == 2, "one upload per table for the whole run"
    tables = uploads_by_table(home)
    runs_rows = {r["agent_run_id"]: r for r in tables["agent_telemetry_runs"]}
    assert set(runs_rows) == {"ex-0", "ex-1", "ex-2", "at-0", "at-1"}
    assert runs_rows["ex-0"]["status"] == "completed"
    assert runs_rows["at-0"]["status"] == "failed", "the run ended on a failed tool call"
    assert runs_rows["ex-0"]["service_name"] == "extract-service"
    assert runs_rows["at-0"]["agent_name"] == "test-agent"
    assert runs_rows["ex-0"]["start_time"] == "1736937000000" and runs_rows["ex-0"]["end_time"] == "1736937007000"
    assert json.loads(runs_rows["ex-0"]["tools_used"])[0]["call_count"] >= 1

    events = [e for e in tables["agent_telemetry_events"] if e["case_id"] == "ex-0"]
    # prompt, model change and three paired tool calls (started+completed -> one activity each)
    assert [e["activity"] for e in events] == [
        "User prompt", "Change model", "Call tool tool_0", "Call tool tool_1", "Call tool tool_2",
    ]
    tool = events[2]
    assert tool["event_time"] == "1736937002000" and tool["end_time"] == "1736937003000"
    assert tool["status"] == "success" and tool["latency_ms"] == "900" and tool["tool_name"] == "tool_0"
    assert tool["resource"] == "test-agent", "the agent that called the tool (AGENT_NAME: the data names none)"
    assert events[0]["resource"] == "user"
    failed = [e for e in tables["agent_telemetry_events"] if e["case_id"] == "at-0" and e["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] == "permission denied"

    # Sessions were exported after process_overview's last materialisation (never, here) and no export is running:
    # the next tick refreshes it once (a new user sees it now, not at the hourly refresh); the first tick had nothing
    # to show yet.
    assert [r.job_name for r in result.run_requests] == ["export_sessions"]
    assert instance.get_latest_materialization_event(dg.AssetKey("process_overview")) is None
    again, runs = run_sensor_tick(pipeline, instance, result.cursor)
    [refresh] = again.run_requests
    assert refresh.job_name == "refresh_process_overview" and refresh.run_key.startswith("overview:")
    assert all(r.success for r in runs) and not again.dynamic_partitions_requests
    overview = instance.get_latest_materialization_event(dg.AssetKey("process_overview")).asset_materialization
    assert overview.metadata["cases"].value == 5

    # the sensor's cursor, the known keys and an overview newer than every export mean the next tick requests nothing
    last, _ = run_sensor_tick(pipeline, instance, again.cursor)
    assert not last.run_requests and not last.dynamic_partitions_requests

    # A later export (here by hand) makes the overview stale: the tick after it refreshes it, with a new run key.
    assert pipeline.cli("export", "--force", "extract:ex-0")[0] == 0
    later, _ = run_sensor_tick(pipeline, instance, last.cursor)
    assert [r.job_name for r in later.run_requests] == ["refresh_process_overview"]
    assert later.run_requests[0].run_key != refresh.run_key


def test_outbox_upload_is_exactly_the_request(
    pipeline: Pipeline, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble
):
    key = source_double.add_good("extract", "s1")
    code, out = pipeline.cli("export", key)
    assert code == 0 and out["exported_count"] == 1

    for folder in outbox_uploads(home):
        schema, primary_keys, rows = read_upload(folder)
        assert schema["type"] == "record" and schema["name"] in {"agent_telemetry_runs", "agent_telemetry_events"}
        fields = [f["name"] for f in schema["fields"]]
        assert list(rows[0].keys()) == fields, "CSV header = schema field names, in order"
        assert set(primary_keys) <= set(fields)
        assert (folder / "delimiter.txt").read_text().strip() == ","
        types = {f["name"]: f["type"] for f in schema["fields"]}
        if schema["name"].endswith("_runs"):
            assert types["start_time"] == ["null", {"type": "long", "logicalType": "timestamp-millis"}]
            assert primary_keys == ["agent_run_id"]
        else:
            assert types["event_time"] == {"type": "long", "logicalType": "timestamp-millis"}
            assert primary_keys == ["event_id"]


def test_bad_payloads_fail_alone_and_keep_raw(
    pipeline: Pipeline, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble
):
    good = source_double.add_good("agent_telemetry", "good")
    not_json = source_double.add("agent_telemetry", "not-json", b'{"events": [')
    no_events = source_double.add("agent_telemetry", "no-events", {"session_id": "no-events", "evts": []})
    bad_time = source_double.add(
        "agent_telemetry", "bad-time", {"events": [agent_event("yesterday-ish", "user_prompt")]}
    )
    unknown = source_double.add(
        "agent_telemetry",
        "unknown-type",
        {
            "events": [
                *good_events(),
                agent_event("2025-01-15T10:31:00Z", "memory_write", bytes=12, step_name="Store memory"),
                agent_event(1736937100, "brand_new_kind", what={"nested": [1, 2]}),
            ]
        },
    )
    missing = "agent_telemetry:never-heard-of-it"

    code, out = pipeline.cli("export", good, not_json, no_events, bad_time, unknown, missing)

    assert code == 1
    by_key = {r["session_id"]: r for r in out["results"]}
    assert by_key[good]["status"] == by_key[unknown]["status"] == "exported"
    assert "not valid JSON" in by_key[not_json]["error"] and not_json in by_key[not_json]["error"]
    assert 'no "events" list' in by_key[no_events]["error"]
    assert "timestamp" in by_key[bad_time]["error"] and "yesterday-ish" in by_key[bad_time]["error"]
    assert by_key[missing]["error"].startswith("not registered: ") and "no such session" in by_key[missing]["error"]
    assert out["exported_count"] == 2 and out["failed_count"] == 4
    known = instance.get_dynamic_partitions("agent_sessions")
    assert missing not in known and not_json in known, "a key its source does not know (a typo): removed again"

    assert instance.get_materialized_partitions(EXPORT) == {good, unknown}
    raw = instance.get_latest_materialization_event(dg.AssetKey("raw_telemetry")).asset_materialization
    assert raw.metadata["sessions"].value == 5 and raw.metadata["fetch_failures"].value == 1
    normalised = instance.get_latest_materialization_event(dg.AssetKey("telemetry_events")).asset_materialization
    assert normalised.metadata["sessions"].value == 2 and normalised.metadata["normalise_failures"].value == 3
    stored = {k for (k,) in raw_rows(home, "SELECT session_key FROM raw_telemetry")}
    assert stored == {good, unknown, not_json, no_events, bad_time}, "raw kept even when parsing fails"
    assert raw_rows(home, "SELECT body FROM raw_telemetry WHERE session_key = ?", [not_json]) == [(b'{"events": [',)]
    events = [e for e in uploads_by_table(home)["agent_telemetry_events"] if e["case_id"] == "unknown-type"]
    kinds = {e["event_type"]: e for e in events}
    assert kinds["memory_write"]["activity"] == "Store memory"
    assert kinds["brand_new_kind"]["activity"] == "Brand new kind"
    assert json.loads(kinds["brand_new_kind"]["attributes"]) == {"what": {"nested": [1, 2]}}

    # history shows the failure: the run failed, naming the sessions
    failed_runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert len(failed_runs) == 1


def test_reexport_is_idempotent_and_skips_unless_forced(pipeline: Pipeline, home: Path, instance: dg.DagsterInstance,
                                                        source_double: SourceDouble):
    keys = [source_double.add_good("extract", f"s{i}") for i in range(3)]
    assert pipeline.cli("export", *keys)[1]["exported_count"] == 3
    code, out = pipeline.cli("export", *keys)
    assert code == 0 and out["skipped_count"] == 3 and len(outbox_uploads(home)) == 2

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        before = con.execute("SELECT event_id FROM events ORDER BY event_id").fetchall()
    code, out = pipeline.cli("export", "--force", *keys)
    assert code == 0 and out["exported_count"] == 3
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        after = con.execute("SELECT event_id FROM events ORDER BY event_id").fetchall()
        assert con.execute("SELECT count(*) FROM sessions").fetchone()[0] == 3
    assert before == after, "same events, same ids, no duplicates in the canonical model"

    ids = [e["event_id"] for e in uploads_by_table(home)["agent_telemetry_events"]]
    assert len(ids) == 2 * len(set(ids)), "the re-upload carries exactly the same event ids"


@pytest.mark.processes
def test_status_and_sessions_survive_a_restart(
    pipeline: Pipeline, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble
):
    done = source_double.add_good("extract", "done")
    code, _ = pipeline.cli("export", done)
    assert code == 0
    pending = "extract:later"
    instance.add_dynamic_partitions("agent_sessions", [pending])

    # a new process reading the same home
    env = pipeline.environment()
    typo = "extract:d0ne"
    proc = subprocess.run([sys.executable, "-m", "telemetry_pipeline", "status", done, pending, typo],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, "a key nobody registered (a typo?) is not a plain 'not exported'"
    status = {s["session_id"]: s for s in json.loads(proc.stdout)}
    assert status[done]["exported"] is True and status[done]["ingestion_status"] == "OUTBOX"
    assert status[done]["execution_id"] in {p.name for p in outbox_uploads(home)}
    assert status[pending] == {"session_id": pending, "known": True, "exported": False, "exported_at": None,
                               "execution_id": None, "ingestion_status": None}
    assert status[typo]["known"] is False and status[typo]["exported"] is False
    assert status[done]["known"] is True

    code, rows = pipeline.cli("sessions", "--pending")
    assert [r["session_id"] for r in rows] == [pending]
    code, rows = pipeline.cli("sessions", "--source", "extract")
    assert {r["session_id"]: r["exported"] for r in rows} == {done: True, pending: False}


def test_transient_source_errors_are_retried(
    pipeline: Pipeline, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble
):
    flaky = source_double.add_good("extract", "flaky")
    source_double.fail("extract", "flaky", 503, times=2, retry_after="0")
    down = source_double.add_good("extract", "down")
    source_double.fail("extract", "down", 500)  # never recovers

    _code, out = pipeline.cli("export", flaky, down)

    by_key = {r["session_id"]: r for r in out["results"]}
    assert by_key[flaky]["status"] == "exported"
    assert source_double.hits[flaky] == 3, "two 503s then a success"
    assert by_key[down]["status"] == "failed" and "HTTP 500" in by_key[down]["error"]
    assert source_double.hits[down] == 3, "SOURCE_MAX_RETRIES=2: three attempts, then a clear error"


def test_discover_command_and_manual_keys(pipeline: Pipeline, home: Path, source_double: SourceDouble,
                                         instance: dg.DagsterInstance):
    for i in range(5):
        source_double.add_good("agent_telemetry", f"d{i}")
    code, out = pipeline.cli("discover")
    assert code == 0 and out["new_count"] == 5
    code, out = pipeline.cli("discover")
    assert code == 0 and out["new_count"] == 0, "the watermark and known keys make discovery incremental"

    code, out = pipeline.cli("export", "nosource:abc", "extract:", "no-prefix", "agora:not-configured")
    assert code == 2, "bad usage, refused before anything changes"
    assert out["error"].count("invalid session key") == 3 and "'no-prefix'" in out["error"]
    assert "source 'agora' is not configured" in out["error"]
    assert pipeline.cli("export")[0] == 2, "no keys and no --pending is bad usage"
    assert not instance.get_runs(dg.RunsFilter(job_name="export_sessions"))
    assert instance.get_dynamic_partitions("agent_sessions") == sorted(
        f"agent_telemetry:d{i}" for i in range(5))

    code, out = pipeline.cli("export", "agent_telemetry:typo")
    assert code == 1 and out["results"][0]["error"].startswith("not registered: ")
    assert "agent_telemetry:typo" not in instance.get_dynamic_partitions("agent_sessions")
    [run] = instance.get_runs(dg.RunsFilter(job_name="export_sessions"))
    assert run.status == dg.DagsterRunStatus.SUCCESS, "a key its source does not know is no failure of the run"
    seen = [r.asset_observation.metadata for r in instance.fetch_observations(dg.AssetKey("signavio_export"), limit=9)
            .records]
    assert any("agent_telemetry:typo" in m["sessions_not_found"].value for m in seen if "sessions_not_found" in m)
    code, out = pipeline.cli("export", "--pending")
    assert code == 0 and out["exported_count"] == 5


def test_a_source_without_a_listing_endpoint_is_exported_by_hand(pipeline: Pipeline, home: Path,
                                                                 source_double: SourceDouble):
    # this Extract service has no discovery endpoint
    pipeline.configure(sources={"extract_list_path": "", "agent_telemetry_url": None})
    key = source_double.add_good("extract", "by-hand")
    code, out = pipeline.cli("discover")
    assert code == 0 and out["new_count"] == 0, "nothing listed, and no error for a source without a listing"
    code, out = pipeline.cli("export", key)
    assert code == 0 and out["results"] == [{"session_id": key, "status": "exported"}]
    code, out = pipeline.cli("check")
    assert code == 0 and out["checks"][0]["name"] == "source:extract" and out["checks"][0]["ok"]


def test_sensor_reexports_a_session_that_continued_after_its_export(
    pipeline: Pipeline, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble
):
    import datetime as dt
    import time

    from telemetry_pipeline.canonical.time import format_time

    key = source_double.add_good("agent_telemetry", "ongoing", n_tools=1)
    first, _ = run_sensor_tick(pipeline, instance)
    assert instance.get_materialized_partitions(EXPORT) == {key}
    exported_events = len([e for e in uploads_by_table(home)["agent_telemetry_events"] if e["case_id"] == "ongoing"])

    time.sleep(0.05)  # the agent goes on after the export: three more tool calls, a newer last event
    source_double.add("agent_telemetry", "ongoing", {"events": good_events(n_tools=4)},
                      last_event_at=format_time(dt.datetime.now(dt.UTC)))
    second, runs = run_sensor_tick(pipeline, instance, first.cursor)
    assert [r.job_name for r in second.run_requests] == ["export_sessions"], "the overview waits for the export"
    assert all(r.success for r in runs)
    assert not second.dynamic_partitions_requests, "a known key is not added again"
    rows = [e for e in uploads_by_table(home)["agent_telemetry_events"] if e["case_id"] == "ongoing"]
    assert len(rows) == exported_events + exported_events + 3, "the second upload carries the whole session"
    assert len({e["event_id"] for e in rows}) == exported_events + 3, "earlier events keep their ids"

    third, _ = run_sensor_tick(pipeline, instance, second.cursor)
    assert [r.job_name for r in third.run_requests] == ["refresh_process_overview"], (
        "exported after its last event: nothing more to export, the overview refreshed now that it is done")


@pytest.mark.processes
def test_the_cli_in_another_shell_works_on_what_make_run_started_and_says_little(
    tmp_path: Path, source_double: SourceDouble
):
    """`make run` starts Dagster through `python -m telemetry_pipeline.instance`, which writes the settings it
    runs with to `<home>/settings.env` (secrets named, not written). A CLI in a new shell, with none of those
    variables, works on the same sources; a secret it lacks is named; it is quiet (no DEBUG run events, no
    alembic), a failed run is one line naming the run."""
    home = tmp_path / "home"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SIGNAVIO_", "EXTRACT_", "AGENT_", "AGORA_", "WAREHOUSE_", "DAGSTER_", "TELEMETRY_"))}
    shell = {**clean, "TELEMETRY_PIPELINE_HOME": str(home)}
    started = {**shell, "EXTRACT_SERVICE_URL": source_double.url, "SOURCE_MAX_RETRIES": "0"}
    subprocess.run([sys.executable, "-m", "telemetry_pipeline.instance"], env=started, check=True, timeout=120)
    written = (home / "settings.env").read_text()
    assert f"EXTRACT_SERVICE_URL={source_double.url}" in written

    good = source_double.add_good("extract", "from-another-shell")
    broken = source_double.add("extract", "broken", b'{"events": [')
    done = subprocess.run([sys.executable, "-m", "telemetry_pipeline", "export", good, broken],
                          env=shell, capture_output=True, text=True, timeout=120)
    out = json.loads(done.stdout)
    assert done.returncode == 1 and out["exported_count"] == 1, (out, done.stderr[-2000:])
    assert "DEBUG" not in done.stderr and "alembic" not in done.stderr, done.stderr[-2000:]
    [failed_line] = [line for line in done.stderr.splitlines() if "failed (" in line]
    assert "its whole log: that run in the Dagster UI" in failed_line

    token = "sgv-settings-file-token-do-not-leak"
    with_secret = {**started, "SIGNAVIO_API_URL": "http://127.0.0.1:9/ingest", "SIGNAVIO_API_KEY": token}
    subprocess.run([sys.executable, "-m", "telemetry_pipeline.instance"], env=with_secret, check=True, timeout=120)
    assert token not in (home / "settings.env").read_text()
    refused = subprocess.run([sys.executable, "-m", "telemetry_pipeline", "sessions"], env=shell,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "SIGNAVIO_API_KEY" in json.loads(refused.stdout)["error"], refused.stdout

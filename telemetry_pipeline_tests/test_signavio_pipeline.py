"""Issue 3 at the pipeline level: sources (local HTTP) -> Dagster -> the Signavio Ingestion API double.

The client itself is covered by test_signavio_client.py; here the CLI and the job run against the double
as an operator would set them up (environment only), and the outcomes are read where an operator reads
them: the double's loaded tables, the CLI's JSON, and the Dagster instance's history.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from telemetry_pipeline import cli
from telemetry_pipeline.settings import HttpSettings, Secret, from_environment
from telemetry_pipeline_tests.conftest import TOKEN, Pipeline
from telemetry_pipeline_tests.signavio_double import STATES, SignavioDouble
from telemetry_pipeline_tests.source_double import SourceDouble

RUNS, EVENTS = "agent_telemetry_runs", "agent_telemetry_events"
EXPORT = dg.AssetKey("signavio_export")
RAW = dg.AssetKey("raw_telemetry")
NIL_STATUS_PATH = "/spi/ingestions/v1/00000000-0000-0000-0000-000000000000/status"


def add_sessions(source_double: SourceDouble) -> list[str]:
    """Three sessions over both HTTP sources, one of them with a failed tool call."""
    return [
        source_double.add_good("extract", "ex-0", n_tools=3),
        source_double.add_good("extract", "ex-1"),
        source_double.add_good("agent_telemetry", "at-0", fail_last=True),
    ]


def session_id(key: str) -> str:
    return key.partition(":")[2]


def export_metadata(instance: dg.DagsterInstance, key: str) -> list[dict[str, Any]]:
    """Every `signavio_export` materialisation of `key`, newest first, as plain values."""
    page = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=EXPORT, asset_partitions=[key]), limit=50, ascending=False
    )
    metas = []
    for record in page.records:
        mat = record.event_log_entry.asset_materialization
        assert mat is not None and mat.partition == key
        metas.append({name: value.value for name, value in mat.metadata.items()})
    return metas


def posted_tables(api: SignavioDouble) -> list[str]:
    """The target table of every upload POST, in order (the record name of the schema form field)."""
    return [json.loads(post.form_value("schema") or "{}").get("name") for post in api.posts()]


def step_failures(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        entry.dagster_event.step_failure_data.error.message
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    ]


# -- 1. the happy path ------------------------------------------------------------------------------------


@pytest.mark.fast  # one export end to end in the quick subset
def test_export_loads_both_tables_and_history_records_the_confirmed_load(pipeline: Pipeline,
    signavio: SignavioDouble, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    keys = add_sessions(source_double)

    code, out = pipeline.cli("export", *keys)

    assert code == 0 and out["status"] == "ok" and out["exported_count"] == 3
    assert posted_tables(signavio) == [RUNS, EVENTS], "one upload per table for the whole batched run"
    runs = {row["agent_run_id"]: row for row in signavio.rows(RUNS)}
    assert sorted(runs) == ["at-0", "ex-0", "ex-1"], "the case table has every session, keyed by its id"
    assert runs["ex-0"]["source"] == "extract" and runs["at-0"]["source"] == "agent_telemetry"
    assert runs["ex-0"]["start_time"] == 1736937000000, "timestamp-millis arrives as epoch milliseconds"
    events = signavio.rows(EVENTS)
    per_case = Counter(row["case_id"] for row in events)
    assert set(per_case) == set(runs), "every event row belongs to an exported case"
    assert len({row["event_id"] for row in events}) == len(events)
    ex0 = [row["activity"] for row in events if row["case_id"] == "ex-0"]
    assert ex0 == ["User prompt", "Change model", "Call tool tool_0", "Call tool tool_1", "Call tool tool_2"]

    code, status = pipeline.cli("status", *keys)
    assert code == 0
    for entry in status:
        assert entry["exported"] is True and entry["ingestion_status"] == "COMPLETED"
        execution = signavio.executions[entry["execution_id"]]
        assert (execution.table, execution.state) == (EVENTS, "COMPLETED"), "the events-table upload's id"

    for key in keys:
        [meta] = export_metadata(instance, key)
        ids = meta["execution_ids"]
        assert set(ids) == {RUNS, EVENTS}
        assert {table: signavio.executions[eid].table for table, eid in ids.items()} == {RUNS: RUNS, EVENTS: EVENTS}
        assert meta["execution_id"] == ids[EVENTS] == next(s for s in status if s["session_id"] == key)["execution_id"]
        assert meta["ingestion_status"] == "COMPLETED"
        assert (meta["runs_table"], meta["events_table"]) == (RUNS, EVENTS)
        assert meta["runs_rows"] == 1 and meta["events_rows"] == per_case[session_id(key)]
        assert meta["destination"] == signavio.url
        assert TOKEN not in json.dumps(meta, default=str)
    assert instance.get_materialized_partitions(dg.AssetKey("signavio_export")) == set(keys)
    for stage in ("raw_telemetry", "telemetry_events", "signavio_csv"):  # table assets: one record per run
        stage_meta = instance.get_latest_materialization_event(dg.AssetKey(stage)).asset_materialization.metadata
        assert stage_meta["sessions"].value == len(keys)


# -- 2. transient failures ----------------------------------------------------------------------------------


def test_a_flapping_endpoint_still_loads_every_session_once(pipeline: Pipeline,
    signavio: SignavioDouble, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    keys = add_sessions(source_double)
    signavio.fail_next(2, 503)
    signavio.fail_next(1, 429, retry_after=0)  # 3 refused attempts: exactly SIGNAVIO_MAX_RETRIES
    signavio.status_fail_next(2, 503)

    code, out = pipeline.cli("export", *keys)

    assert code == 0 and out["exported_count"] == 3, out
    assert posted_tables(signavio) == [RUNS] * 4 + [EVENTS], "three refused attempts, then one accepted per table"
    polls_per_load = math.ceil((len(STATES) - 1) / signavio.steps_per_poll)
    gets = [r for r in signavio.requests if r.method == "GET"]
    assert len(gets) == 2 * polls_per_load + 2, "each refused status check was asked again, once"
    assert sorted(e.table for e in signavio.executions.values()) == [EVENTS, RUNS], (
        "exactly one accepted upload per table: a retry never re-sent an already accepted table"
    )
    assert sorted(row["agent_run_id"] for row in signavio.rows(RUNS)) == ["at-0", "ex-0", "ex-1"]
    events = signavio.rows(EVENTS)
    [accepted] = [e for e in signavio.executions.values() if e.table == EVENTS]
    assert len(events) == len(accepted.rows) and {row["case_id"] for row in events} == {"at-0", "ex-0", "ex-1"}
    assert instance.get_materialized_partitions(EXPORT) == set(keys)
    assert {export_metadata(instance, k)[0]["ingestion_status"] for k in keys} == {"COMPLETED"}


# -- 3. permanent refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spoil", "expected", "loaded_tables"),
    [
        pytest.param(
            lambda api, pipeline: pipeline.configure(signavio={"api_key": Secret("not-the-token")}),
            ["REJECTED", "HTTP 401 Unauthorized", "The provided token is invalid or missing"],
            set(),
            id="401-wrong-token",
        ),
        pytest.param(
            lambda api, env: api.fail_next(1, 400),
            [f"{RUNS}: REJECTED", "HTTP 400 Bad Request: injected fault"],
            {EVENTS},  # the other table's upload was fine; the session still is not exported
            id="400-bad-request",
        ),
    ],
)
def test_a_permanent_refusal_is_not_retried_and_names_the_cause(pipeline: Pipeline,
    signavio: SignavioDouble, instance: dg.DagsterInstance, source_double: SourceDouble,
    spoil: Callable[[SignavioDouble, pytest.MonkeyPatch], None], expected: list[str], loaded_tables: set[str],
):
    keys = add_sessions(source_double)
    spoil(signavio, pipeline)

    code, out = pipeline.cli("export", *keys)

    assert code == 1 and out["status"] == "failed" and out["failed_count"] == 3
    for result in out["results"]:
        assert result["status"] == "failed"
        for text in expected:
            assert text in result["error"]
    assert posted_tables(signavio) == [RUNS, EVENTS], "one POST per table: a 4xx is never retried"
    assert {table for table in (RUNS, EVENTS) if signavio.rows(table)} == loaded_tables
    assert instance.get_materialized_partitions(EXPORT) == set()
    assert all(export_metadata(instance, k) == [] for k in keys)
    raw = instance.get_latest_materialization_event(RAW).asset_materialization
    assert raw.metadata["sessions"].value == len(keys), "the raw payload was kept all the same"
    [run] = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE


# -- 4. an accepted upload whose load fails -------------------------------------------------------------------


def test_a_failed_load_marks_nothing_exported_and_a_later_export_loads_it(pipeline: Pipeline,
    signavio: SignavioDouble, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    keys = add_sessions(source_double)[:2]
    signavio.fail_load(EVENTS, "FILE_CONVERSION_FAILED", "record 3: cannot convert event_time")

    code, out = pipeline.cli("export", *keys)

    assert code == 1 and out["failed_count"] == 2
    for result in out["results"]:
        assert "FILE_CONVERSION_FAILED" in result["error"]
        assert "record 3: cannot convert event_time" in result["error"]
    assert sorted(r["agent_run_id"] for r in signavio.rows(RUNS)) == ["ex-0", "ex-1"]
    assert signavio.rows(EVENTS) == [], "the failed load left no rows"
    assert instance.get_materialized_partitions(EXPORT) == set()
    assert all(export_metadata(instance, k) == [] for k in keys)
    for stage in ("raw_telemetry", "telemetry_events", "signavio_csv"):  # the stages before the load did run
        stage_meta = instance.get_latest_materialization_event(dg.AssetKey(stage)).asset_materialization.metadata
        assert stage_meta["sessions"].value == len(keys), stage
    [run] = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE
    [failure] = step_failures(instance, run.run_id)
    assert "FILE_CONVERSION_FAILED" in failure and "record 3: cannot convert event_time" in failure
    code, status = pipeline.cli("status", *keys)
    assert [s["exported"] for s in status] == [False, False]
    code, pending = pipeline.cli("sessions", "--pending")
    assert sorted(p["session_id"] for p in pending) == sorted(keys)

    signavio.load_failures.clear()
    code, out = pipeline.cli("export", "--force", *keys)

    assert code == 0 and out["exported_count"] == 2
    assert {row["case_id"] for row in signavio.rows(EVENTS)} == {"ex-0", "ex-1"}
    assert instance.get_materialized_partitions(EXPORT) == set(keys)
    code, status = pipeline.cli("status", *keys)
    assert [s["ingestion_status"] for s in status] == ["COMPLETED", "COMPLETED"]


# -- 5. re-export -----------------------------------------------------------------------------------------


def test_forced_reexport_replaces_rows_instead_of_duplicating_them(pipeline: Pipeline,
    signavio: SignavioDouble, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    keys = add_sessions(source_double)
    assert pipeline.cli("export", *keys)[0] == 0
    before = {table: len(signavio.rows(table)) for table in (RUNS, EVENTS)}
    event_ids = sorted(row["event_id"] for row in signavio.rows(EVENTS))
    assert not [row for row in signavio.rows(EVENTS) if row["case_id"] == "ex-1" and row["error"]]

    code, out = pipeline.cli("export", *keys)
    assert code == 0 and out["skipped_count"] == 3 and len(signavio.posts()) == 2, "no upload without --force"

    source_double.add_good("extract", "ex-1", fail_last=True)  # the session's data changed since
    code, out = pipeline.cli("export", "--force", *keys)

    assert code == 0 and out["exported_count"] == 3
    assert len(signavio.posts()) == 4 and len(signavio.executions) == 4
    assert {table: len(signavio.rows(table)) for table in (RUNS, EVENTS)} == before
    assert sorted(row["event_id"] for row in signavio.rows(EVENTS)) == event_ids, "same events, same ids"
    [failed_call] = [row for row in signavio.rows(EVENTS) if row["case_id"] == "ex-1" and row["error"]]
    assert (failed_call["status"], failed_call["error"]) == ("failed", "permission denied"), "row replaced"
    assert {r["agent_run_id"]: r["status"] for r in signavio.rows(RUNS)}["ex-1"] != "completed", "row replaced"
    newest, first = export_metadata(instance, "extract:ex-1")
    assert newest["execution_id"] != first["execution_id"]
    assert signavio.executions[newest["execution_id"]].state == "COMPLETED"


# -- 6. dataset override ----------------------------------------------------------------------------------


def test_dataset_override_from_the_cli_and_from_run_config(pipeline: Pipeline,
    signavio: SignavioDouble, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    by_cli = source_double.add_good("extract", "by-cli")
    by_config = source_double.add_good("extract", "by-config")

    code, out = pipeline.cli("export", "--dataset", "custom-set", by_cli)

    assert code == 0 and out["exported_count"] == 1
    assert posted_tables(signavio) == ["custom_set_runs", "custom_set_events"]
    assert [r["agent_run_id"] for r in signavio.rows("custom_set_runs")] == ["by-cli"]
    assert {r["case_id"] for r in signavio.rows("custom_set_events")} == {"by-cli"}
    [meta] = export_metadata(instance, by_cli)
    assert (meta["runs_table"], meta["events_table"]) == ("custom_set_runs", "custom_set_events")
    assert set(meta["execution_ids"]) == {"custom_set_runs", "custom_set_events"}

    instance.add_dynamic_partitions("agent_sessions", [by_config])
    job = pipeline.defs().resolve_job_def("export_sessions")
    result = job.execute_in_process(
        instance=instance, partition_key=by_config,
        run_config={"ops": {"session_export": {"config": {"dataset": "x"}}}},
    )

    assert result.success
    assert [r["agent_run_id"] for r in signavio.rows("x_runs")] == ["by-config"]
    assert {r["case_id"] for r in signavio.rows("x_events")} == {"by-config"}
    [meta] = export_metadata(instance, by_config)
    assert (meta["runs_table"], meta["events_table"]) == ("x_runs", "x_events")
    assert meta["ingestion_status"] == "COMPLETED"
    assert not signavio.rows(RUNS) and not signavio.rows(EVENTS), "the default dataset was never written"


# -- 7. check -----------------------------------------------------------------------------------------------


def checks_by_name(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in out["checks"]}


def test_check_is_healthy_with_reachable_sources_and_accepted_token(pipeline: Pipeline,
    signavio: SignavioDouble
):
    code, out = pipeline.cli("check")

    assert code == 0 and out["healthy"] is True
    checks = checks_by_name(out)
    assert set(checks) == {"source:extract", "source:agent_telemetry", "warehouse", "signavio"}
    assert all(c["ok"] for c in checks.values())
    assert checks["warehouse"]["detail"].startswith("DuckDB file "), "the embedded default, named"
    assert checks["signavio"]["detail"] == "reachable, token accepted"
    assert [(r.method, r.path) for r in signavio.requests] == [("GET", NIL_STATUS_PATH)], "probed, never uploaded"


def test_check_reports_a_refused_token(pipeline: Pipeline,
    signavio: SignavioDouble
):
    pipeline.configure(signavio={"api_key": Secret("not-the-token")})

    code, out = pipeline.cli("check")

    assert code == 1 and out["healthy"] is False
    checks = checks_by_name(out)
    assert checks["signavio"]["ok"] is False and "token refused" in checks["signavio"]["detail"]
    assert checks["source:extract"]["ok"] and checks["source:agent_telemetry"]["ok"]
    assert not signavio.posts()


def test_check_reports_a_destination_that_is_down(pipeline: Pipeline,
    signavio: SignavioDouble
):
    with SignavioDouble(token=TOKEN) as gone:
        pass  # stopped: its port no longer answers
    pipeline.configure(signavio={"api_url": gone.url, "http": HttpSettings(max_retries=1, retry_wait_initial=0.01)})

    code, out = pipeline.cli("check")

    assert code == 1 and out["healthy"] is False
    signavio_check = checks_by_name(out)["signavio"]
    assert signavio_check["ok"] is False and signavio_check["detail"].startswith("unreachable")


def test_check_without_an_endpoint_checks_the_outbox(pipeline: Pipeline,
    signavio: SignavioDouble, home: Path
):
    pipeline.configure(signavio={"api_url": None})

    code, out = pipeline.cli("check")

    assert code == 0 and out["healthy"] is True
    checks = checks_by_name(out)
    assert "signavio" not in checks and checks["outbox"]["ok"] is True
    assert str(home / "outbox") in checks["outbox"]["detail"]
    assert not signavio.requests


# -- 8. configuration errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "key_value"),
    [(["export", "extract:s1"], None), (["check"], "   ")],
    ids=["export-token-unset", "check-token-blank"],
)
def test_an_endpoint_without_a_token_is_a_configuration_error(pipeline: Pipeline,
    signavio: SignavioDouble, instance: dg.DagsterInstance, source_double: SourceDouble,
    capsys: pytest.CaptureFixture[str],
    command: list[str], key_value: str | None,
):
    source_double.add_good("extract", "s1")
    # Through the environment, as an operator would configure it.
    environment = pipeline.environment()
    if key_value is None:
        del environment["SIGNAVIO_API_KEY"]
    else:
        environment["SIGNAVIO_API_KEY"] = key_value

    capsys.readouterr()
    code = cli.main(command, settings=from_environment(environment))
    out, err = capsys.readouterr()

    assert code == 2, "bad configuration is bad usage"
    error = json.loads(out)["error"]
    assert "configuration error" in error and "SIGNAVIO_API_KEY" in error
    assert "Traceback" not in err
    assert not signavio.requests and not instance.get_runs()
    assert instance.get_dynamic_partitions("agent_sessions") == [], "nothing was changed before the refusal"


# -- 9. the token stays secret --------------------------------------------------------------------------------


def test_the_token_appears_nowhere(
    signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    # The one test configured through the process environment, as an operator does: the token is read
    # where Dagster binds it (EnvVar), so the process environment must hold it.
    for name, value in pipeline.environment().items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    keys = add_sessions(source_double)
    seen: list[str] = []  # everything a person or a log shipper could read

    def cli_run(*argv: str) -> tuple[int, Any]:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        seen.extend([out, err])
        return code, json.loads(out)

    signavio.fail_next(2, 503)  # retried, then accepted
    signavio.fail_load(EVENTS, "FILE_UPLOAD_FAILED", "storage full")
    code, out = cli_run("export", *keys)
    assert code == 1 and all("storage full" in r["error"] for r in out["results"])
    signavio.load_failures.clear()
    assert cli_run("export", *keys)[0] == 0
    assert cli_run("check")[0] == 0
    cli_run("status", *keys)
    cli_run("sessions")

    seen += [caplog.text] + [repr(r.args) + repr(r.__dict__) for r in caplog.records]
    runs = instance.get_runs()
    assert len(runs) == 2
    for run in runs:
        seen.append(json.dumps(run.run_config, default=str))
        seen.append(dg.serialize_value(run))
        seen.append(dg.serialize_value(instance.get_job_snapshot(run.job_snapshot_id)))
        seen.append(dg.serialize_value(instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)))
        seen += [dg.serialize_value(entry) for entry in instance.all_logs(run.run_id)]
    for key in keys:
        seen += [json.dumps(meta, default=str) for meta in export_metadata(instance, key)]
    files = [p for p in home.rglob("*") if p.is_file()]
    blobs = {str(p.relative_to(home)): p.read_bytes() for p in files}

    # The search covered what it claims to: the failure, the retries, the loads and the stores.
    text = "".join(seen)
    assert "Signavio accepted" in caplog.text and "retry_scheduled" in caplog.text, "pipeline logs were captured"
    assert "storage full" in text and "FILE_UPLOAD_FAILED" in text and signavio.url in text
    assert any(name.endswith(".db") for name in blobs) and "warehouse.duckdb" in blobs
    assert any(signavio.url.encode() in blob for blob in blobs.values()), "history files are searchable as bytes"
    assert len(signavio.posts()) == 6, "two refused + two accepted, then two more accepted"
    assert {r.headers["authorization"] for r in signavio.requests} == {f"Bearer {TOKEN}"}, "the token was in use"

    assert [i for i, chunk in enumerate(seen) if TOKEN in chunk] == []
    assert [name for name, blob in blobs.items() if TOKEN.encode() in blob] == []

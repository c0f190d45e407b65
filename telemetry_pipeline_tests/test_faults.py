"""Issue 6: nothing is lost and nothing is duplicated through faults, crashes, restarts and overlapping runs.

Crashes are real: `python -m telemetry_pipeline export ...` runs as a subprocess against the source double
and the Signavio double, and is killed with SIGKILL at a chosen stage (no cleanup code runs). The next
`export` then has to finish the job, and the invariants are checked where they matter:
- every session ends exported (a `signavio_export` materialisation);
- Signavio holds exactly one row per primary key: every session's case row and every one of its events,
  nothing missing and nothing extra (an orphaned upload that completes late replaces rows, it adds none);
- nothing is marked exported that Signavio did not confirm (every execution id in the history is COMPLETED).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import httpx
import pytest

from telemetry_pipeline.settings import HttpSettings, Secret
from telemetry_pipeline.warehouse import DuckDBWarehouse
from telemetry_pipeline_tests.conftest import Pipeline
from telemetry_pipeline_tests.signavio_double import SignavioDouble
from telemetry_pipeline_tests.source_double import Fault, SourceDouble

RUNS, EVENTS = "agent_telemetry_runs", "agent_telemetry_events"
EXPORT = dg.AssetKey("signavio_export")
N_TOOLS = 2
EVENTS_PER_SESSION = 2 + N_TOOLS  # prompt, model change, one activity per paired tool call


# -- helpers ------------------------------------------------------------------------------------------------


@dataclass
class Export:
    """A `python -m telemetry_pipeline export ...` process; its stdout and stderr go to files."""

    proc: subprocess.Popen[bytes]
    out: Path

    def result(self, timeout: float = 60) -> dict[str, Any]:
        self.proc.wait(timeout=timeout)
        text = self.out.read_text()
        assert text.strip(), self.out.with_suffix(".err").read_text()[-3000:]
        return json.loads(text)


def start_export(pipeline: Pipeline, tmp_path: Path, *args: str) -> Export:
    """`python -m telemetry_pipeline export ARGS` in a new process, with this test's settings."""
    n = len(list(tmp_path.glob("export-*.out")))
    out, err = tmp_path / f"export-{n}.out", tmp_path / f"export-{n}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:  # files, not pipes: a full pipe would block it
        proc = subprocess.Popen(
            [sys.executable, "-m", "telemetry_pipeline", "export", *args],
            stdout=stdout, stderr=stderr, env=pipeline.environment(),
        )
    return Export(proc, out)


def wait_for(condition: Callable[[], bool], export: Export, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if export.proc.poll() is not None:
            err = export.out.with_suffix(".err").read_text()[-3000:]
            raise AssertionError(f"the export exited ({export.proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# Short enough to wait out after a kill, long enough that a live run's renewals (every third of it) never
# miss it on a loaded 2-core machine: a missed renewal would hand a live run's sessions to another.
LEASE_SECONDS = 4.0


@pytest.fixture(autouse=True)
def short_lease(pipeline: Pipeline) -> None:
    pipeline.configure(warehouse={"lease_seconds": LEASE_SECONDS})


def sigkill(export: Export) -> None:
    """Kill it (and reap it). Its run record still says STARTED and its claims are left behind; the next
    export on this host must see at once that the process is gone, without waiting out the lease."""
    os.kill(export.proc.pid, signal.SIGKILL)
    assert export.proc.wait(timeout=10) == -signal.SIGKILL


def assert_marked_failed(instance: dg.DagsterInstance, run_id: str, pid: int) -> None:
    """The dead run was marked failed, saying why, by the export that took its sessions over."""
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    [failure] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"pid {pid} on " in (failure.message or "") and "is gone" in (failure.message or ""), failure.message


def claims(home: Path) -> dict[str, str]:
    with duckdb.connect(str(home / "warehouse-claims.duckdb"), read_only=True) as con:  # the claims' own file
        return dict(con.execute("SELECT session_key, run_id FROM export_claims").fetchall())


def posted_rows(api: SignavioDouble, table: str) -> list[list[dict[str, str]]]:
    """The CSV rows of every upload POST of `table` (accepted or not), in order."""
    uploads = []
    for post in api.posts():
        if json.loads(post.form_value("schema") or "{}").get("name") != table:
            continue
        text = b"".join(p.data for p in post.parts if p.name == "files").decode()
        uploads.append(list(csv.DictReader(io.StringIO(text, newline=""))))
    return uploads


def complete_orphans(api: SignavioDouble, execution_ids: list[str]) -> None:
    """Signavio finishes uploads whose client is gone: poll them to a final state, as the service would."""
    with httpx.Client(headers={"Authorization": f"Bearer {api.token}"}) as client:
        for eid in execution_ids:
            for _ in range(20):
                state = client.get(f"{api.base_url}/spi/ingestions/v1/{eid}/status").json()["payload"]["status"]
                if state == "COMPLETED":
                    break
            assert state == "COMPLETED"


def assert_delivered_exactly_once(api: SignavioDouble, instance: dg.DagsterInstance, keys: list[str]) -> None:
    ids = sorted(k.partition(":")[2] for k in keys)
    runs = api.rows(RUNS)
    assert sorted(r["agent_run_id"] for r in runs) == ids, "one case row per session: none missing, none extra"
    events = api.rows(EVENTS)
    per_case = Counter(e["case_id"] for e in events)
    assert per_case == dict.fromkeys(ids, EVENTS_PER_SESSION), "every event once: deterministic ids replaced rows"
    assert instance.get_materialized_partitions(EXPORT) == set(keys), "every session ends exported"
    assert_nothing_unconfirmed(api, instance)


def assert_nothing_unconfirmed(api: SignavioDouble, instance: dg.DagsterInstance) -> None:
    """Every materialisation ever recorded names executions that Signavio completed."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=EXPORT), limit=10_000).records
    for record in records:
        meta = record.event_log_entry.asset_materialization.metadata
        assert meta["ingestion_status"].value == "COMPLETED"
        for joined in meta["execution_ids"].value.values():
            for eid in joined.split(","):
                assert api.executions[eid].state == "COMPLETED", (record.partition_key, eid)


def add_good(source_double: SourceDouble, n: int, prefix: str) -> list[str]:
    return [source_double.add_good("extract", f"{prefix}-{i:03d}", n_tools=N_TOOLS) for i in range(n)]


# The claims themselves, as plain code, on both stores: test_warehouse.py.


# -- two real runs overlapping on the same sessions -----------------------------------------------------------


@pytest.mark.processes
def test_overlapping_runs_upload_each_session_once(pipeline: Pipeline,
    signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
    tmp_path: Path,
):
    keys = add_good(source_double, 8, "c")
    first, second = keys[:6], keys[2:]  # they overlap on keys[2:6]
    for key in first:
        source_double.slow("extract", key.partition(":")[2], 60)

    a = start_export(pipeline, tmp_path, *first)
    wait_for(lambda: all(source_double.hits[k] for k in first), a, "run A fetching its sessions")
    code_b, out_b = pipeline.cli("export", *second)  # B, in this process: what A does not hold, while A fetches
    b_done = dt.datetime.now(dt.UTC)
    for key in first:
        source_double.slow("extract", key.partition(":")[2], 0)
    out_a = a.result()

    [run_a] = [r for r in instance.get_runs() if r.tags.get("dagster/asset_partition_range_start") == first[0]]
    assert out_a["exported_count"] == 6 and out_a["status"] == "ok"
    by_key = {r["session_id"]: r for r in out_b["results"]}
    assert code_b == 3, "not everything asked for was exported: some sessions are left to another run"
    assert out_b["status"] == "partial" and out_b["exported_count"] == 2 and out_b["skipped_count"] == 4
    assert out_b["held_count"] == 4
    for key in keys[2:6]:
        held_by = by_key[key].pop("held_by")
        assert by_key[key] == {
            "session_id": key,
            "status": "skipped",
            "reason": f"being exported by run {run_a.run_id}",
        }
        assert held_by["run_id"] == run_a.run_id and held_by["alive"] == "alive", held_by
        lease_left = dt.datetime.fromisoformat(held_by["lease_until"]) - b_done
        assert dt.timedelta(0) < lease_left <= dt.timedelta(seconds=LEASE_SECONDS)
        assert source_double.hits[key] == 1, "B never even fetched a session A was exporting"
    uploaded = Counter(r["agent_run_id"] for rows in posted_rows(signavio, RUNS) for r in rows)
    assert uploaded == {k.partition(":")[2]: 1 for k in keys}, "each session in exactly one upload"
    for key in keys:
        page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=EXPORT, asset_partitions=[key]), limit=5)
        assert len(page.records) == 1, key
    assert_delivered_exactly_once(signavio, instance, keys)
    assert claims(home) == {}, "both runs released their claims"


@pytest.mark.processes
def test_export_wait_waits_for_the_run_holding_its_sessions(pipeline: Pipeline,
    signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
    tmp_path: Path,
):
    keys = add_good(source_double, 4, "w")
    for key in keys[:2]:
        source_double.slow("extract", key.partition(":")[2], 60)
    a = start_export(pipeline, tmp_path, *keys[:2])
    wait_for(lambda: all(source_double.hits[k] for k in keys[:2]), a, "run A fetching its sessions")

    b = start_export(pipeline, tmp_path, "--wait", *keys)  # B exports the other two, then waits for A's
    wait_for(lambda: instance.get_materialized_partitions(EXPORT) == set(keys[2:]), b, "B exporting its own")
    assert b.proc.poll() is None, "B is still waiting for A"
    for key in keys[:2]:
        source_double.slow("extract", key.partition(":")[2], 0)
    out_a, out_b = a.result(), b.result()

    assert a.proc.returncode == 0 and out_a["exported_count"] == 2, out_a
    assert b.proc.returncode == 0 and out_b["status"] == "ok" and out_b["held_count"] == 0, out_b
    by_key = {r["session_id"]: r["status"] for r in out_b["results"]}
    assert by_key == {keys[0]: "skipped", keys[1]: "skipped", keys[2]: "exported", keys[3]: "exported"}, (
        "what A exported meanwhile is already exported: B does not send it again"
    )
    assert_delivered_exactly_once(signavio, instance, keys)
    assert claims(home) == {}


# -- SIGKILL at each stage; the next export finishes the job ----------------------------------------------------


@pytest.mark.processes
def test_killed_while_fetching(pipeline: Pipeline,
    signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
    tmp_path: Path,
):
    keys = add_good(source_double, 4, "a")
    source_double.slow("extract", "a-003", 60)

    proc = start_export(pipeline, tmp_path, *keys)
    wait_for(lambda: source_double.hits[keys[3]] >= 1, proc, "the fetch of the slow session")
    sigkill(proc)

    assert not signavio.posts() and instance.get_materialized_partitions(EXPORT) == set()
    [dead] = instance.get_runs()
    assert dead.status == dg.DagsterRunStatus.STARTED, "nobody recorded its end: its record says STARTED"
    assert claims(home) == dict.fromkeys(keys, dead.run_id), "its claims were left behind"
    source_double.slow("extract", "a-003", 0)

    code, out = pipeline.cli("export", "--pending")  # at once: no lease to wait out

    assert code == 0 and out["exported_count"] == 4, out
    assert_delivered_exactly_once(signavio, instance, keys)
    assert claims(home) == {}
    assert_marked_failed(instance, dead.run_id, proc.proc.pid)


@pytest.mark.processes
def test_killed_after_the_upload_was_accepted_before_it_was_confirmed(pipeline: Pipeline,
    signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
    tmp_path: Path,
):
    keys = add_good(source_double, 5, "b")
    signavio.steps_per_poll = 0  # accepted uploads never finish while this holds

    proc = start_export(pipeline, tmp_path, *keys)
    wait_for(lambda: len(signavio.executions) == 2 and any(r.method == "GET" for r in signavio.requests), proc,
             "both uploads accepted and polled")
    sigkill(proc)

    orphans = list(signavio.executions)
    assert not signavio.rows(RUNS) and not signavio.rows(EVENTS)
    assert instance.get_materialized_partitions(EXPORT) == set(), "accepted is not loaded: nothing is exported"
    signavio.steps_per_poll = 2

    code, out = pipeline.cli("export", *keys)

    assert code == 0 and out["exported_count"] == 5, out
    assert_delivered_exactly_once(signavio, instance, keys)
    complete_orphans(signavio, orphans)  # the dead run's uploads are finished by Signavio after all
    assert_delivered_exactly_once(signavio, instance, keys)
    assert len(posted_rows(signavio, RUNS)) == 2, "sent twice (at least once), loaded once per key"


@pytest.mark.processes
@pytest.mark.parametrize("store", ["duckdb", "postgres"])
def test_killed_with_the_case_table_loaded_and_the_event_log_not_the_next_run_sends_both_at_once(
    pipeline: Pipeline, signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance,
    source_double: SourceDouble, tmp_path: Path, request: pytest.FixtureRequest, store: str,
):
    if store == "postgres":
        pipeline.configure(warehouse={"url": Secret(request.getfixturevalue("postgres_url"))})
    keys = add_good(source_double, 5, "h")
    signavio.stalled.add(EVENTS)  # the event log's load stays in progress

    proc = start_export(pipeline, tmp_path, *keys)
    wait_for(lambda: len(signavio.rows(RUNS)) == 5, proc, "the case table loaded, the event log still loading")
    sigkill(proc)
    [dead] = instance.get_runs()

    assert not signavio.rows(EVENTS), "half delivered: cases without their events"
    assert instance.get_materialized_partitions(EXPORT) == set(), "not confirmed, so not exported"
    signavio.stalled.clear()

    code, out = pipeline.cli("export", *keys)  # at once: no lease to wait out

    assert code == 0 and out["exported_count"] == 5 and out["status"] == "ok", out
    assert_delivered_exactly_once(signavio, instance, keys)
    assert len(posted_rows(signavio, EVENTS)) == 2, "the event log was sent again by the next run"
    assert_marked_failed(instance, dead.run_id, proc.proc.pid)


@pytest.mark.processes
def test_killed_while_recording_materialisations(pipeline: Pipeline,
    signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
    tmp_path: Path,
):
    keys = add_good(source_double, 40, "m")

    proc = start_export(pipeline, tmp_path, *keys)
    wait_for(lambda: len(instance.get_materialized_partitions(EXPORT)) > 0, proc, "the first materialisation")
    sigkill(proc)

    recorded = instance.get_materialized_partitions(EXPORT)
    assert 0 < len(recorded) < len(keys), "killed part-way through the materialisations"
    loaded = {r["agent_run_id"] for r in signavio.rows(RUNS)}
    assert {k.partition(":")[2] for k in recorded} <= loaded, "what was recorded had been confirmed"
    assert_nothing_unconfirmed(signavio, instance)

    code, out = pipeline.cli("export", "--pending")

    assert code == 0 and out["exported_count"] == len(keys) - len(recorded), out
    [_, resent] = posted_rows(signavio, RUNS)
    assert {r["agent_run_id"] for r in resent} == {k.partition(":")[2] for k in set(keys) - recorded}, (
        "only the sessions without a materialisation were sent again"
    )
    assert_delivered_exactly_once(signavio, instance, keys)


# -- discovery never skips a session ------------------------------------------------------------------------


def sensor_tick(pipeline: Pipeline, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    defs = pipeline.defs()
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        return defs.resolve_sensor_def("new_sessions_sensor")(context)


@pytest.mark.processes
def test_the_sensor_exports_again_the_sessions_of_a_run_that_was_killed_without_waiting_a_lease(pipeline: Pipeline,
    signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
    tmp_path: Path,
):
    """A run killed with its host's process (SIGKILL: OOM, `kill -9`, a container restarted): nothing records its
    end. The sensor's next tick sees its process gone, marks it failed, and requests its unexported sessions;
    a run interrupted Dagster's way (`UNEXPECTED_TERMINATION`, a Ctrl-C of `make run`) is recovered the same way,
    a run whose sessions failed (`STEP_FAILURE`) is left to the hourly schedule."""
    first = sensor_tick(pipeline, instance, None)  # nothing listed yet
    keys = add_good(source_double, 6, "r")
    source_double.slow("extract", "r-005", 60)
    proc = start_export(pipeline, tmp_path, *keys)
    wait_for(lambda: source_double.hits[keys[5]] >= 1, proc, "the run fetching")
    sigkill(proc)
    source_double.slow("extract", "r-005", 0)
    [dead] = instance.get_runs()
    assert dead.status == dg.DagsterRunStatus.STARTED

    tick = sensor_tick(pipeline, instance, first.cursor)

    assert_marked_failed(instance, dead.run_id, proc.proc.pid)
    recover = [r for r in tick.run_requests if r.run_key and r.run_key.startswith("recover:")]
    assert [r.tags["telemetry_pipeline/recovers"] for r in recover] == [dead.run_id]
    assert recover[0].tags["telemetry_pipeline/recovery_attempt"] == "1"
    assert (recover[0].tags["dagster/asset_partition_range_start"],
            recover[0].tags["dagster/asset_partition_range_end"]) == (keys[0], keys[-1])
    job = pipeline.defs().resolve_job_def("export_sessions")
    assert job.execute_in_process(instance=instance, tags=recover[0].tags).success
    assert_delivered_exactly_once(signavio, instance, keys)

    again = sensor_tick(pipeline, instance, tick.cursor)
    assert not [r for r in again.run_requests if r.run_key and r.run_key.startswith("recover:")], (
        "a cut-off run is recovered once"
    )


@pytest.mark.processes
def test_the_sensor_exports_again_the_sessions_of_an_interrupted_run_not_those_of_a_failed_one(pipeline: Pipeline,
    signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
    tmp_path: Path,
):
    first = sensor_tick(pipeline, instance, None)
    broken = source_double.add("extract", "i-broken", b'{"events": [')
    code, out = pipeline.cli("export", broken)  # its session fails: the run fails, Dagster's way
    assert code == 1 and out["failed_count"] == 1
    [failed] = instance.get_runs()
    assert failed.tags["dagster/failure_reason"] == "STEP_FAILURE"
    keys = add_good(source_double, 3, "i")
    signavio.steps_per_poll = 0  # the uploads stay in progress
    proc = start_export(pipeline, tmp_path, *keys)
    wait_for(lambda: any(r.method == "GET" for r in signavio.requests), proc, "the run waiting for Signavio")
    os.kill(proc.proc.pid, signal.SIGINT)  # Ctrl-C
    assert proc.proc.wait(timeout=60) != 0
    signavio.steps_per_poll = 2
    interrupted = instance.get_run_by_id(next(r.run_id for r in instance.get_runs() if r.run_id != failed.run_id))
    assert interrupted is not None and interrupted.status == dg.DagsterRunStatus.FAILURE
    assert interrupted.tags["dagster/failure_reason"] != "STEP_FAILURE", interrupted.tags

    tick = sensor_tick(pipeline, instance, first.cursor)

    recover = [r for r in tick.run_requests if r.run_key and r.run_key.startswith("recover:")]
    assert [r.tags["telemetry_pipeline/recovers"] for r in recover] == [interrupted.run_id], (
        "the interrupted run's sessions go again at once; the failed session is the hourly schedule's"
    )
    assert pipeline.defs().resolve_job_def("export_sessions").execute_in_process(
        instance=instance, tags=recover[0].tags).success
    assert_delivered_exactly_once(signavio, instance, keys)


def stored_watermarks(instance: dg.DagsterInstance) -> dict[str, str]:
    """The one watermark store: the latest `discovered_sessions` record (the sensor's or the asset's)."""
    record = instance.get_latest_materialization_event(dg.AssetKey("discovered_sessions"))
    assert record is not None and record.asset_materialization is not None
    return record.asset_materialization.metadata["watermarks"].value


def export_ranges(result: dg.SensorResult | list[dg.RunRequest]) -> list[tuple[str, str]]:
    requests = result.run_requests if isinstance(result, dg.SensorResult) else result
    return [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
            for r in requests if "dagster/asset_partition_range_start" in r.tags]


def test_discovery_never_moves_a_watermark_past_a_session_it_did_not_register(pipeline: Pipeline,
    home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    old = [source_double.add_good("extract", f"old-{i}") for i in range(2)]
    first = sensor_tick(pipeline, instance, None)
    assert sorted(instance.get_dynamic_partitions("agent_sessions")) == sorted(old), "registered by the tick"
    marks = stored_watermarks(instance)

    newer_ex = source_double.add("extract", "new-ex", {"events": []}, last_event_at="2025-01-16T00:00:00Z")
    newer_at = source_double.add("agent_telemetry", "new-at", {"events": []}, last_event_at="2025-01-16T00:00:00Z")

    # 1. extract's listing fails (every attempt), agent_telemetry's works: only the latter's mark moves.
    source_double.list_faults["extract"] = Fault(503, remaining=10**6)
    failed = sensor_tick(pipeline, instance, first.cursor)
    assert newer_at in instance.get_dynamic_partitions("agent_sessions")
    assert newer_ex not in instance.get_dynamic_partitions("agent_sessions")
    assert export_ranges(failed) == [(newer_at, newer_at)]
    assert stored_watermarks(instance)["extract"] == marks["extract"], "the failed source's watermark stayed put"
    assert stored_watermarks(instance)["agent_telemetry"] == "2025-01-16T00:00:00Z"

    # 2. The tick's result is lost (the process died before its runs were launched, its cursor not stored): its
    #    keys are registered, so they are pending, and the hourly schedule requests them. The next tick, from the
    #    old cursor, lists extract again and requests only what it registers now.
    del source_double.list_faults["extract"]
    schedule = pipeline.defs().resolve_schedule_def("hourly_export_schedule")
    tick = dt.datetime(2026, 1, 1, 5)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as ctx:
        pending = export_ranges(schedule.evaluate_tick(ctx).run_requests or [])
    assert pending == [(old[0], newer_at)], "nothing was exported yet: every registered key, the lost tick's too"
    again = sensor_tick(pipeline, instance, first.cursor)
    assert export_ranges(again) == [(newer_ex, newer_ex)]
    assert stored_watermarks(instance) == {"extract": "2025-01-16T00:00:00Z", "agent_telemetry": "2025-01-16T00:00:00Z"}

    # 3. The asset and the sensor share the watermarks: neither finds anything new now.
    assert not sensor_tick(pipeline, instance, again.cursor).run_requests
    code, out = pipeline.cli("discover")
    assert code == 0 and out["new_count"] == 0


def test_a_hung_listing_is_cut_at_its_deadline_and_the_other_sources_are_discovered(pipeline: Pipeline,
    home: Path, source_double: SourceDouble,
):
    from telemetry_pipeline.defs.discovery import discover
    from telemetry_pipeline.sources.source_set import SourceSet

    source_double.add_good("extract", "stuck")
    found_key = source_double.add_good("agent_telemetry", "found")
    source_double.hang_listing("extract")
    started = time.monotonic()
    with SourceSet(pipeline.settings.sources) as sources:
        found = discover(sources, {}, set(), deadline=dt.timedelta(seconds=1))
    assert time.monotonic() - started < 10, "the deadline, not the listing, ended the pass"
    assert found.new_keys == [found_key]
    assert "listing still not done after" in found.errors["extract"] and list(found.errors) == ["extract"]
    assert "extract" not in found.watermarks, "the hung source's watermark did not move"


def test_the_sensor_takes_over_the_watermarks_an_older_version_kept_in_its_cursor(pipeline: Pipeline,
    home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    source_double.add("extract", "seen", {"events": []}, last_event_at="2025-01-10T00:00:00Z")
    new = source_double.add("extract", "new", {"events": []}, last_event_at="2025-01-16T00:00:00Z")
    legacy = json.dumps({"watermarks": {"extract": "2025-01-15T00:00:00Z"}, "failed_runs_after": 0.0})
    tick = sensor_tick(pipeline, instance, legacy)
    assert instance.get_dynamic_partitions("agent_sessions") == [new], "listed since the cursor's watermark"
    assert stored_watermarks(instance)["extract"] == "2025-01-16T00:00:00Z"
    assert "watermarks" not in json.loads(tick.cursor), "one store: the record"


def test_discover_keeps_the_watermark_of_a_source_whose_listing_failed(pipeline: Pipeline,
    home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    source_double.add_good("extract", "e1")
    source_double.list_faults.update(extract=Fault(500, remaining=10**6), agent_telemetry=Fault(500, remaining=10**6))
    code, out = pipeline.cli("discover")
    assert code == 1 and set(out["source_errors"]) == {"extract", "agent_telemetry"}
    assert out["new_count"] == 0
    meta = instance.get_latest_materialization_event(dg.AssetKey("discovered_sessions")).asset_materialization.metadata
    assert meta["watermarks"].value == {}, "no watermark moved"

    source_double.list_faults.clear()
    code, out = pipeline.cli("discover")
    assert code == 0 and out["new_keys"] == ["extract:e1"]


# -- sources that are down or slow ---------------------------------------------------------------------------


def test_a_source_that_is_down_fails_only_its_sessions(pipeline: Pipeline,
    home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    with SourceDouble() as gone:
        pass  # stopped: its port refuses connections
    pipeline.configure(sources={"extract_url": gone.url})
    down = ["extract:d1", "extract:d2"]
    up = [source_double.add_good("agent_telemetry", f"u{i}") for i in range(2)]

    code, out = pipeline.cli("export", *down, *up)

    assert code == 1 and out["status"] == "partial" and out["exported_count"] == 2
    by_key = {r["session_id"]: r for r in out["results"]}
    for key in down:
        error = by_key[key]["error"]
        assert by_key[key]["status"] == "failed"
        assert f"session '{key.partition(':')[2]}'" in error and "source unavailable" in error
        assert "ConnectError" in error and "after 3 attempts" in error, "SOURCE_MAX_RETRIES=2: bounded"
    assert instance.get_materialized_partitions(EXPORT) == set(up)


def test_a_slow_source_times_out_per_session(
    pipeline: Pipeline, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    pipeline.configure(sources={"http": HttpSettings(timeout=0.3, max_retries=1, retry_wait_initial=0.01)})
    slow = source_double.add_good("extract", "slow")
    source_double.slow("extract", "slow", 20)
    fine = [source_double.add_good("extract", f"fine{i}") for i in range(3)]

    started = time.monotonic()
    code, out = pipeline.cli("export", slow, *fine)
    elapsed = time.monotonic() - started

    by_key = {r["session_id"]: r for r in out["results"]}
    assert code == 1 and out["exported_count"] == 3
    assert "ReadTimeout" in by_key[slow]["error"] and "after 2 attempts" in by_key[slow]["error"]
    assert source_double.hits[slow] == 2
    assert elapsed < 20, "two attempts of 0.3 s, not the source's 20 s"
    assert instance.get_materialized_partitions(EXPORT) == set(fine)


# -- Signavio faults at the pipeline level ------------------------------------------------------------------------


def test_a_burst_longer_than_the_retries_exports_nothing_then_the_next_export_does(pipeline: Pipeline,
    signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    keys = add_good(source_double, 3, "r")
    signavio.fail_next(4, 429, retry_after=0)  # SIGNAVIO_MAX_RETRIES=3: four attempts for the first table
    signavio.fail_next(4, 503)  # and four for the second

    code, out = pipeline.cli("export", *keys)

    assert code == 1 and out["failed_count"] == 3
    for result in out["results"]:
        assert "UNREACHABLE" in result["error"] and "HTTP 429" in result["error"] and "HTTP 503" in result["error"]
    assert len(signavio.posts()) == 8 and not signavio.executions, "bounded: 4 attempts per table, none accepted"
    assert instance.get_materialized_partitions(EXPORT) == set()
    # As if the failed run had died holding its claims, in this very process (whose pid is alive):
    # only the run's own status can tell that they are over.
    [failed] = instance.get_runs()
    assert failed.status == dg.DagsterRunStatus.FAILURE
    DuckDBWarehouse(home / "warehouse.duckdb").claim(keys, failed.run_id)

    code, out = pipeline.cli("export", *keys)

    assert code == 0 and out["exported_count"] == 3
    assert_delivered_exactly_once(signavio, instance, keys)


def test_an_upload_that_hangs_past_the_timeout_but_is_accepted_later_duplicates_nothing(pipeline: Pipeline,
    signavio: SignavioDouble, instance: dg.DagsterInstance, source_double: SourceDouble,
):
    pipeline.configure(signavio={"http": dataclasses.replace(pipeline.settings.signavio.http, timeout=0.3)})
    keys = add_good(source_double, 3, "h")
    signavio.hang_next(1, 1.0)  # the first POST is answered after the client gave up, but still processed

    code, out = pipeline.cli("export", *keys)

    assert code == 0 and out["exported_count"] == 3
    deadline = time.monotonic() + 5
    while len(signavio.executions) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    confirmed = {eid for eid, e in signavio.executions.items() if e.state == "COMPLETED"}
    [orphan] = set(signavio.executions) - confirmed
    assert signavio.executions[orphan].table == RUNS
    complete_orphans(signavio, [orphan])
    assert_delivered_exactly_once(signavio, instance, keys)


def test_a_batch_cut_off_again_and_again_is_left_to_the_hourly_schedule(
    instance: dg.DagsterInstance, source_double: SourceDouble
):
    """A batch whose every run is cut off (killed for its memory each time, say) is not sent round for ever."""
    from telemetry_pipeline.instance.recovery import MAX_RECOVERY_ATTEMPTS, recoveries

    keys = add_good(source_double, 2, "again")
    instance.add_dynamic_partitions("agent_sessions", keys)

    def cut_off(attempt: int) -> dg.DagsterRun:
        run = instance.create_run_for_job(dg.GraphDefinition(name="g").to_job(), tags={
            "dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1],
            "telemetry_pipeline/recovery_attempt": str(attempt),
        })
        instance.report_run_failed(run, "cut off")
        return run

    [again] = recoveries(instance, [cut_off(MAX_RECOVERY_ATTEMPTS - 1)], keys, 500)
    assert again.attempt == MAX_RECOVERY_ATTEMPTS and again.ranges[0].keys == tuple(keys)
    assert recoveries(instance, [cut_off(MAX_RECOVERY_ATTEMPTS)], keys, 500) == []

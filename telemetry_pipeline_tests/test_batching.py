"""Batched runs (sensor, schedule, CLI, backfill policy) and retention, on a temporary instance."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from telemetry_pipeline.cli import ALREADY_EXPORTED
from telemetry_pipeline.instance import open_instance
from telemetry_pipeline.instance.history import exported_keys, pending_keys
from telemetry_pipeline.instance.partitions import KeyRange, agent_sessions, batched_ranges
from telemetry_pipeline.instance.retention import apply_retention, prunable_keys
from telemetry_pipeline.instance.runs import run_range
from telemetry_pipeline.names import PENDING_AS_OF_TAG, PID_TAG
from telemetry_pipeline.settings import configured_warehouse
from telemetry_pipeline_tests.conftest import Pipeline, uploads_by_table
from telemetry_pipeline_tests.source_double import SourceDouble
from telemetry_pipeline_tests.test_faults import RUNS

EXPORT = dg.AssetKey("signavio_export")


@pytest.mark.fast
def test_batched_ranges_are_contiguous_and_bounded():
    keys = [f"extract:{i}" for i in range(10)]
    wanted = {keys[i] for i in (0, 1, 2, 3, 5, 6, 9)}
    ranges = batched_ranges(keys, wanted, max_per_run=3)
    assert [r.keys for r in ranges] == [
        tuple(keys[0:3]), (keys[3],), tuple(keys[5:7]), (keys[9],),
    ], "a range never spans a key that is not wanted, and holds at most max_per_run keys"
    assert ranges[0].tags == {
        "dagster/asset_partition_range_start": keys[0],
        "dagster/asset_partition_range_end": keys[2],
    }


@pytest.mark.fast
def test_sensor_requests_one_run_per_batch(pipeline: Pipeline, home: Path, source_double: SourceDouble):
    pipeline.configure(batch_size=4)
    for i in range(10):
        source_double.add_good("agent_telemetry", f"s{i:02d}")
    defs = pipeline.defs()
    with dg.instance_for_test() as instance:
        sensor = defs.resolve_sensor_def("new_sessions_sensor")
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            result = sensor(context)
        keys = instance.get_dynamic_partitions("agent_sessions")  # registered by the tick, in listing order
    sizes = []
    for request in result.run_requests:
        start, end = keys.index(request.tags["dagster/asset_partition_range_start"]), keys.index(
            request.tags["dagster/asset_partition_range_end"])
        sizes.append(end - start + 1)
    assert sizes == [4, 4, 2]
    assert len({r.run_key for r in result.run_requests}) == 3


@pytest.mark.fast
def test_backfill_policy_batches_ui_backfills(pipeline: Pipeline, home: Path):
    pipeline.configure(batch_size=250)
    asset = pipeline.defs().resolve_assets_def(EXPORT)
    assert asset.backfill_policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=250)


def test_hourly_schedule_exports_pending_and_previously_failed(
    pipeline: Pipeline, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble
):
    done = [source_double.add_good("extract", f"done{i}") for i in range(2)]
    assert pipeline.cli("export", *done)[0] == 0
    broken = source_double.add("extract", "broken", b"not json")
    assert pipeline.cli("export", broken)[0] == 1
    later = source_double.add_good("extract", "later")
    instance.add_dynamic_partitions("agent_sessions", [later])
    source_double.add_good("extract", "broken")  # the source fixed its payload
    unseen = source_double.add_good("agent_telemetry", "unseen")  # only the source knows it yet

    defs = pipeline.defs()
    schedule = defs.resolve_schedule_def("hourly_export_schedule")
    tick = dt.datetime(2026, 1, 1, 5)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick, resources=defs.resources) as ctx:
        requests = schedule.evaluate_tick(ctx).run_requests
    overview = [r for r in requests if r.asset_selection == [dg.AssetKey("process_overview")]]
    assert len(overview) == 1, "every tick refreshes process_overview"
    requests = [r for r in requests if r not in overview]
    assert all(r.asset_selection == [EXPORT] for r in requests), "export runs leave the overview alone"
    assert unseen not in instance.get_dynamic_partitions("agent_sessions"), "discovery is the sensor's alone"
    assert len(requests) == 1, "broken and later are adjacent partitions: one batched run"
    tags = requests[0].tags
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (broken, later)

    job = defs.resolve_job_def("export_sessions")
    assert job.execute_in_process(instance=instance, tags=tags).success
    assert instance.get_materialized_partitions(EXPORT) == {*done, broken, later}
    later_tick = tick + dt.timedelta(hours=1)
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=later_tick, resources=defs.resources
    ) as ctx:
        left = schedule.evaluate_tick(ctx).run_requests
    assert [r.asset_selection for r in left] == [[dg.AssetKey("process_overview")]], "nothing left to export"
    _code, out = pipeline.cli("discover")
    assert out["new_keys"] == [unseen], "the schedule listed no source and moved no watermark"


def test_a_failed_re_export_leaves_the_session_exported(
    pipeline: Pipeline, instance: dg.DagsterInstance, source_double: SourceDouble
):
    """Dagster's partition status shows the latest attempt: FAILED after a failed re-export, though Signavio
    still holds the rows it confirmed the first time. The session stays exported, not pending."""
    key = source_double.add_good("extract", "twice")
    assert pipeline.cli("export", key)[0] == 0
    source_double.fail("extract", "twice", 503)
    code, out = pipeline.cli("export", "--force", key)
    assert code == 1 and out["failed_count"] == 1, out
    assert instance.get_status_by_partition(EXPORT, [key], agent_sessions) == {key: dg.AssetPartitionStatus.FAILED}
    assert pending_keys(instance, [key]) == []
    assert pipeline.cli("export", key)[1]["results"] == [{"session_id": key, "status": "skipped",
                                                          "reason": ALREADY_EXPORTED}]
    assert pipeline.cli("sessions", "--pending")[1] == []


def test_prune_removes_old_exported_partitions_and_status_still_answers(pipeline: Pipeline,
    home: Path, instance: dg.DagsterInstance, source_double: SourceDouble
):
    old = source_double.add_good("extract", "old")
    assert pipeline.cli("export", old)[0] == 0
    pending = "extract:pending"
    instance.add_dynamic_partitions("agent_sessions", [pending])

    assert prunable_keys(instance, 1) == [], "exported just now: not old enough"
    assert prunable_keys(instance, 1, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2)) == [old]

    code, out = pipeline.cli("prune", "--older-than-days", "0", "--raw-older-than-days", "0")
    assert code == 0 and out["pruned_keys"] == [old]
    assert out["raw_payloads_deleted"] == 1, "the exported session's payload: content's lifetime is over"
    assert (out["deleted_runs"], out["archived_records"]) == (1, 1), "its run exported nothing still known"
    assert instance.get_dynamic_partitions("agent_sessions") == [pending], "pending sessions are never pruned"
    assert not instance.get_run_records(dg.RunsFilter(job_name="export_sessions")), "the export run is deleted"
    assert instance.get_materialized_partitions(EXPORT) == set(), "and with it the history the UI rebuilds from"
    code, status = pipeline.cli("status", old)
    assert status[0]["exported"] is True and status[0]["ingestion_status"] == "OUTBOX", "the archive answers"
    code, again = pipeline.cli("export", old)
    assert again["results"] == [{"session_id": old, "status": "skipped", "reason": ALREADY_EXPORTED}], (
        "an archived export counts as done")
    assert instance.get_dynamic_partitions("agent_sessions") == [pending], "and is not registered again"


def test_retention_keeps_a_run_while_it_exported_a_session_still_known(pipeline: Pipeline,
    home: Path, instance: dg.DagsterInstance, source_double: SourceDouble
):
    first, second = source_double.add_good("extract", "a"), source_double.add_good("extract", "b")
    assert pipeline.cli("export", first, second)[0] == 0  # one run: both sessions
    between = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    assert pipeline.cli("export", "--force", second)[0] == 0  # a later run exports `second` again
    warehouse = configured_warehouse(pipeline.settings)
    runs = [r.dagster_run.run_id for r in instance.get_run_records(dg.RunsFilter(job_name="export_sessions"))]
    newer, older = runs  # newest first

    out = apply_retention(instance, warehouse, 0, now=between)
    assert out.pruned_keys == [first], "`second` was exported again after the cut-off"
    assert out.deleted_runs == [], "the first run also exported `second`, which is still known"
    assert pipeline.cli("status", first)[1][0]["exported"] is True, "its record is still Dagster's"

    out = apply_retention(instance, warehouse, 0, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert out.pruned_keys == [second] and sorted(out.deleted_runs) == sorted([newer, older])
    archived = warehouse.archived_exports([first, second])
    assert (archived[first].run_id, archived[second].run_id) == (older, newer), "each session's newest export"
    code, status = pipeline.cli("status", first, second, "extract:never")
    assert [s["exported"] for s in status] == [True, True, False]
    assert [s["known"] for s in status] == [True, True, False], "pruned keys are known through the archive"
    assert code == 1


@pytest.mark.fast
def test_retention_schedule_is_off_by_default(pipeline: Pipeline, home: Path):
    schedule = pipeline.defs().resolve_schedule_def("retention_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert (
        pipeline.defs().resolve_schedule_def("hourly_export_schedule").default_status
        == dg.DefaultScheduleStatus.RUNNING
    )


def test_export_runs_its_batches_side_by_side_in_worker_processes(
    pipeline: Pipeline, home: Path, source_double: SourceDouble
):
    """EXPORT_WORKERS=2: while one process's run is stuck on a slow session, the other (this process, or the helper
    it started) exports the other batches, each in a run of its own; then every session is exported once."""
    pipeline.configure(batch_size=2, export_workers=2)
    for i in range(6):
        source_double.add_good("agent_telemetry", f"w{i:02d}")
    assert pipeline.cli("discover")[0] == 0
    with open_instance(pipeline.settings.dagster_home) as instance:
        keys = instance.get_dynamic_partitions("agent_sessions")
        first, others = keys[:2], keys[2:]
        source_double.slow("agent_telemetry", first[0].partition(":")[2], 120)  # holds up run 1, in this process
        overlapped = threading.Event()

        def release_when_the_others_are_exported() -> None:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if exported_keys(instance, others) == set(others):
                    overlapped.set()
                    break
                time.sleep(0.2)
            source_double.slow("agent_telemetry", first[0].partition(":")[2], 0)

        watcher = threading.Thread(target=release_when_the_others_are_exported)
        watcher.start()
        code, out = pipeline.cli("export", "--pending")
        watcher.join()
        assert code == 0, out
        assert out["exported_count"] == 6 and out["status"] == "ok", out
        assert overlapped.is_set(), "the other batches waited for the slow one"
        runs = instance.get_run_records(dg.RunsFilter(job_name="export_sessions"))
        pid_of = {r.dagster_run.tags["dagster/asset_partition_range_start"]: r.dagster_run.tags[PID_TAG]
                  for r in runs}
    assert len(runs) == 3, "one run per batch"
    slow_pid, other_pids = pid_of[first[0]], {pid_of[others[0]], pid_of[others[2]]}
    assert len(other_pids) == 1 and slow_pid not in other_pids, "the other batches ran in the other process"
    assert str(os.getpid()) in other_pids | {slow_pid}, "this process is one of the two"
    uploaded = Counter(r["agent_run_id"] for r in uploads_by_table(home)[RUNS])
    assert uploaded == Counter(k.partition(":")[2] for k in keys), "every session uploaded once"


def test_a_killed_worker_process_fails_its_batch_only_and_the_next_export_carries_on(
    pipeline: Pipeline, source_double: SourceDouble
):
    pipeline.configure(batch_size=2, export_workers=2)
    ids = [f"k{i:02d}" for i in range(4)]
    for session_id in ids:
        source_double.add_good("agent_telemetry", session_id)
        source_double.slow("agent_telemetry", session_id, 120)  # both runs under way before anything is fetched
    assert pipeline.cli("discover")[0] == 0
    with open_instance(pipeline.settings.dagster_home) as instance:
        killed: list[str] = []

        def kill_the_helper_then_answer() -> None:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not killed:
                for record in instance.get_run_records(dg.RunsFilter(job_name="export_sessions")):
                    pid = record.dagster_run.tags.get(PID_TAG)
                    if pid and pid != str(os.getpid()):
                        os.kill(int(pid), signal.SIGKILL)
                        killed.append(record.dagster_run.run_id)
                time.sleep(0.1)
            for session_id in ids:
                source_double.slow("agent_telemetry", session_id, 0)

        killer = threading.Thread(target=kill_the_helper_then_answer)
        killer.start()
        code, out = pipeline.cli("export", "--pending")
        killer.join()
        assert killed, "a helper process ran a batch"
        assert code == 1 and out["exported_count"] == 2 and out["failed_count"] == 2, out
        assert all("export worker process failed" in r["error"] for r in out["results"] if r["status"] == "failed")
        killed_run = instance.get_run_by_id(killed[0])
        assert killed_run is not None and killed_run.status == dg.DagsterRunStatus.FAILURE, "not left STARTED"
        # Whatever it had claimed is taken at once (its process is gone): the next export exports the batch.
        code, out = pipeline.cli("export", "--pending")
        assert code == 0 and out["exported_count"] == 2, out


def test_a_session_exported_by_another_run_since_the_command_saw_it_pending_is_not_exported_again(
    pipeline: Pipeline, source_double: SourceDouble
):
    """`export` tags its runs with when it saw their sessions unexported; a run that claims a session another
    run exported since then (and released after recording it) leaves it: no second fetch, no second upload."""
    key = source_double.add_good("agent_telemetry", "meanwhile")
    seen_pending = time.time()
    code, out = pipeline.cli("export", key)  # the "other run"
    assert code == 0 and out["exported_count"] == 1, out
    defs = pipeline.defs()
    job = defs.resolve_job_def("export_sessions")
    with open_instance(pipeline.settings.dagster_home) as instance:
        first = instance.get_run_records(dg.RunsFilter(job_name="export_sessions"))[0].dagster_run.run_id
        # The CLI's batch, before its run is created: the session is left out, so no run plans it (a planned
        # partition with no materialisation after it would show as failed in the UI).
        outcome = run_range(job, instance, {}, KeyRange((key,)), {PENDING_AS_OF_TAG: repr(seen_pending)})
        assert outcome.results == {key: {"session_id": key, "status": "skipped",
                                         "reason": f"exported meanwhile by run {first}"}}
        assert len(instance.get_run_records(dg.RunsFilter(job_name="export_sessions"))) == 1, "no run created"
        status = instance.get_status_by_partition(EXPORT, [key], agent_sessions)
        assert status == {key: dg.AssetPartitionStatus.MATERIALIZED}
        # A run created before that export finished (the same tag): the run itself leaves the session.
        result = job.execute_in_process(
            instance=instance, partition_key=key, tags={PENDING_AS_OF_TAG: repr(seen_pending)})
        assert result.success
        assert not result.asset_materializations_for_node("session_export"), "not exported a second time"
        [observation] = result.asset_observations_for_node("session_export")
        assert observation.metadata["exported_meanwhile"].value == {key: first}
        # Without the tag the run counts from its own creation: an explicit re-export exports.
        again = job.execute_in_process(instance=instance, partition_key=key)
        assert again.success
        assert [m.partition for m in again.asset_materializations_for_node("session_export")
                if m.asset_key == EXPORT] == [key]
    assert source_double.hits[key] == 2, "fetched by the first export and the explicit re-export only"
    uploads = uploads_by_table(pipeline.settings.home)
    assert [r["agent_run_id"] for r in uploads[RUNS]] == ["meanwhile", "meanwhile"]

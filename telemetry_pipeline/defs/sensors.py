"""`new_sessions_sensor`, the one place that discovers on its own: add only really new keys, request their export in
batches; export again the sessions of export runs that were cut off (`recovery`); and `process_overview` once the
exports since its last materialisation have finished (the hourly schedule refreshes it too)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from typing import Any

import dagster as dg

from telemetry_pipeline.defs.discovery import register_new_sessions
from telemetry_pipeline.defs.loggers import LOGGER_CONFIG
from telemetry_pipeline.defs.resources import ContentResource, SourcesResource
from telemetry_pipeline.instance.history import latest_exports
from telemetry_pipeline.instance.keys import DISCOVERED_SESSIONS_KEY, PROCESS_OVERVIEW_KEY, SIGNAVIO_EXPORT_KEY
from telemetry_pipeline.instance.partitions import batched_ranges
from telemetry_pipeline.instance.recovery import cut_off_runs, mark_dead_runs, recoveries
from telemetry_pipeline.names import (
    AGENT_SESSIONS,
    EXPORT_JOB,
    NEW_SESSIONS_SENSOR,
    OVERVIEW_JOB,
    RECOVERS_TAG,
    RECOVERY_ATTEMPT_TAG,
)
from telemetry_pipeline.sources.base import SessionRef

RECOVERY_LOOKBACK_S = 24 * 3600
# Dagster fails a sensor evaluation that takes over 60 s (DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS), and with it every
# source's discovery and the crash recovery of that tick. The sources list side by side, each for this long at
# most; the rest of the minute is for registering keys, recovery and the run requests.
LISTING_DEADLINE = dt.timedelta(seconds=30)


def build_new_sessions_sensor(batch_size: int, interval: int, jobs: Sequence[Any]) -> dg.SensorDefinition:
    """`jobs`: `export_sessions` and `refresh_process_overview`, the two it launches (as `define_asset_job`
    returns them: a type Dagster does not export)."""

    @dg.sensor(
        name=NEW_SESSIONS_SENSOR,
        jobs=jobs,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Discovers new finished sessions, adds them to `agent_sessions` and requests their export.",
    )
    def new_sessions_sensor(
        context: dg.SensorEvaluationContext, sources: SourcesResource, content: ContentResource
    ) -> dg.SensorResult:
        # The cursor holds what recovery has seen; the watermarks are in the `discovered_sessions` record, the one
        # store every discovery pass reads and moves (`discovery`). Older versions kept them in the cursor, alone
        # or under "watermarks": those count for a source the record does not know yet.
        cursor_in = json.loads(context.cursor) if context.cursor else {}
        if cursor_in and not {"watermarks", "failed_runs_after"} & cursor_in.keys():
            cursor_in = {"watermarks": cursor_in}
        with sources.open() as source_set:
            found, metadata = register_new_sessions(
                context.instance, source_set, dt.timedelta(seconds=sources.settle_seconds), content.governance(),
                LISTING_DEADLINE, fallback=cursor_in.get("watermarks"),
            )
        if found.moved:  # a record per tick that changed something, not per tick
            context.instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key=DISCOVERED_SESSIONS_KEY, metadata={**metadata, "by": NEW_SESSIONS_SENSOR}
            ))
        for source, error in found.errors.items():
            context.log.warning("source %s could not be listed: %s", source, error)
        new_keys = found.new_keys
        updated = _updated_since_export(context.instance, found.relisted)
        dead = mark_dead_runs(context.instance)
        for run_id in dead:
            context.log.warning("export run %s: its process is gone; marked failed, its sessions go again", run_id)
        # A first tick (or one after an upgrade) looks back a day, not over the whole history: older failures
        # are the hourly schedule's to retry.
        since = cursor_in.get("failed_runs_after", time.time() - RECOVERY_LOOKBACK_S)
        cut_off, failed_after = cut_off_runs(context.instance, since)
        # Every known key, in order (new ones included), read once and only when a range has to be found in it.
        all_keys = context.instance.get_dynamic_partitions(AGENT_SESSIONS) if cut_off or updated else []
        again = recoveries(context.instance, cut_off, all_keys, batch_size)
        cursor = json.dumps({"failed_runs_after": failed_after})
        if not new_keys and not updated and not again:
            overview = _overview_refresh(context.instance)
            if overview:
                return dg.SensorResult(run_requests=overview, cursor=cursor)
            return dg.SensorResult(cursor=cursor, skip_reason="no new sessions")
        # New keys were appended in this order, so they form contiguous ranges at the end of the list. Were this
        # tick cut off before its runs are launched, the keys are known and pending: the hourly schedule's.
        runs = [
            dg.RunRequest(run_key=f"new:{r.start}..{r.end}:{len(r.keys)}", tags=r.tags, job_name=EXPORT_JOB,
                          run_config=LOGGER_CONFIG)
            for r in batched_ranges(new_keys, new_keys, batch_size)
        ]
        if updated:  # exported before their last events: export again (rows are replaced, not added)
            stamp = max(updated.values())
            runs += [
                dg.RunRequest(run_key=f"updated:{r.start}..{r.end}:{len(r.keys)}:{stamp}", tags=r.tags,
                              job_name=EXPORT_JOB, run_config=LOGGER_CONFIG)
                for r in batched_ranges(all_keys, updated, batch_size)
            ]
        runs += [  # one run key per cut-off run: it is exported again once, whatever happens to this tick
            dg.RunRequest(run_key=f"recover:{r.run_id}:{n}",
                          tags={**key_range.tags, RECOVERS_TAG: r.run_id, RECOVERY_ATTEMPT_TAG: str(r.attempt)},
                          job_name=EXPORT_JOB, run_config=LOGGER_CONFIG)
            for r in again for n, key_range in enumerate(r.ranges)
        ]
        context.log.info("%d new and %d updated sessions, %d cut-off runs to export again -> %d runs",
                         len(new_keys), len(updated), len(again), len(runs))
        return dg.SensorResult(run_requests=runs, cursor=cursor)

    return new_sessions_sensor


_IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]


def _overview_refresh(instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    """`process_overview` when sessions were exported after its last materialisation and neither an export nor an
    overview is queued or running: the overview says what the exports did once they are done (not every tick of a
    long backfill, and never taking a run slot from an export). Its run key, the newest export's storage id, makes
    the daemon launch it once."""
    exports = instance.fetch_materializations(SIGNAVIO_EXPORT_KEY, limit=1).records
    if not exports:
        return []  # nothing to show yet
    overviews = instance.fetch_materializations(PROCESS_OVERVIEW_KEY, limit=1).records
    newest = exports[0].storage_id
    if overviews and overviews[0].storage_id > newest:
        return []  # it counts every export there is
    busy = instance.get_runs(dg.RunsFilter(statuses=_IN_FLIGHT))
    if any(run.job_name in (EXPORT_JOB, OVERVIEW_JOB)
           or {SIGNAVIO_EXPORT_KEY, PROCESS_OVERVIEW_KEY} & set(run.asset_selection or ()) for run in busy):
        return []
    return [dg.RunRequest(run_key=f"overview:{newest}", job_name=OVERVIEW_JOB, run_config=LOGGER_CONFIG)]


def _updated_since_export(instance: dg.DagsterInstance, relisted: list[SessionRef]) -> dict[str, str]:
    """{key: last event} of the exported sessions whose source reports events after their export."""
    last_event = {r.key: r.last_event_at for r in relisted if r.last_event_at is not None}
    exports = latest_exports(instance, list(last_event))
    return {
        key: at.isoformat() for key, at in last_event.items() if key in exports and at > exports[key].exported_at
    }

"""`new_sessions_sensor`: discover, add only really new keys, request their export in batches; and the first
`process_overview` as soon as there is something to show (the hourly schedule refreshes it afterwards)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg

from telemetry_pipeline.discovery import discover
from telemetry_pipeline.history import latest_exports
from telemetry_pipeline.names import (
    AGENT_SESSIONS,
    EXPORT_JOB,
    NEW_SESSIONS_SENSOR,
    OVERVIEW_JOB,
    PROCESS_OVERVIEW_KEY,
    SIGNAVIO_EXPORT_KEY,
)
from telemetry_pipeline.partitions import agent_sessions, batched_ranges
from telemetry_pipeline.resources import SourcesResource
from telemetry_pipeline.sources.base import SessionRef

if TYPE_CHECKING:  # what `define_asset_job` returns; not exported by `dagster`
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition


def build_new_sessions_sensor(
    batch_size: int, interval: int, jobs: Sequence[UnresolvedAssetJobDefinition]
) -> dg.SensorDefinition:
    """`jobs`: `export_sessions` and `refresh_process_overview`, the two it launches."""

    @dg.sensor(
        name=NEW_SESSIONS_SENSOR,
        jobs=jobs,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Discovers new finished sessions, adds them to `agent_sessions` and requests their export.",
    )
    def new_sessions_sensor(context: dg.SensorEvaluationContext, sources: SourcesResource) -> dg.SensorResult:
        # The cursor holds each source's watermark; it only moves in the same result that adds the
        # partitions, so a crash between the two cannot skip a session.
        watermarks = json.loads(context.cursor) if context.cursor else {}
        known = set(context.instance.get_dynamic_partitions(AGENT_SESSIONS))
        with sources.open() as source_set:
            found = discover(source_set, watermarks, known, dt.timedelta(seconds=sources.settle_seconds))
        for source, error in found.errors.items():
            context.log.warning("source %s could not be listed: %s", source, error)
        new_keys = found.new_keys
        updated = _updated_since_export(context.instance, found.relisted)
        cursor = json.dumps(found.watermarks, sort_keys=True)
        first_overview = _first_overview(context.instance)
        if not new_keys and not updated:
            if first_overview:
                return dg.SensorResult(run_requests=first_overview, cursor=cursor)
            return dg.SensorResult(cursor=cursor, skip_reason="no new sessions")
        # New keys are appended in this order, so they form contiguous ranges at the end of the list.
        runs = [
            dg.RunRequest(run_key=f"new:{r.start}..{r.end}:{len(r.keys)}", tags=r.tags, job_name=EXPORT_JOB)
            for r in batched_ranges(new_keys, new_keys, batch_size)
        ]
        if updated:  # exported before their last events: export again (rows are replaced, not added)
            stamp = max(updated.values())
            runs += [
                dg.RunRequest(run_key=f"updated:{r.start}..{r.end}:{len(r.keys)}:{stamp}", tags=r.tags,
                              job_name=EXPORT_JOB)
                for r in batched_ranges(
                    context.instance.get_dynamic_partitions(AGENT_SESSIONS), updated, batch_size
                )
            ]
        context.log.info("%d new and %d updated sessions -> %d runs", len(new_keys), len(updated), len(runs))
        return dg.SensorResult(
            run_requests=runs + first_overview,
            dynamic_partitions_requests=[agent_sessions.build_add_request(new_keys)] if new_keys else None,
            cursor=cursor,
        )

    return new_sessions_sensor


def _first_overview(instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    """`process_overview` once the first sessions are exported, if it was never materialised: a new user
    sees it within a tick or two, not at the first hourly refresh. The fixed run key makes the daemon
    launch it once (it skips a key it has launched before)."""
    if instance.get_latest_materialization_event(PROCESS_OVERVIEW_KEY) is not None:
        return []
    if instance.get_latest_materialization_event(SIGNAVIO_EXPORT_KEY) is None:
        return []  # nothing to show yet
    return [dg.RunRequest(run_key="overview:first", job_name=OVERVIEW_JOB)]


def _updated_since_export(instance: dg.DagsterInstance, relisted: list[SessionRef]) -> dict[str, str]:
    """{key: last event} of the exported sessions whose source reports events after their export."""
    last_event = {r.key: r.last_event_at for r in relisted if r.last_event_at is not None}
    exports = latest_exports(instance, list(last_event))
    return {
        key: at.isoformat() for key, at in last_event.items() if key in exports and at > exports[key].exported_at
    }

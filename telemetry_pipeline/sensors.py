"""`new_sessions_sensor`: discover, add only really new keys, request their export in batches."""

import datetime as dt
import json

import dagster as dg

from telemetry_pipeline.discovery import discover
from telemetry_pipeline.history import latest_exports
from telemetry_pipeline.names import AGENT_SESSIONS, EXPORT_JOB, NEW_SESSIONS_SENSOR
from telemetry_pipeline.partitions import agent_sessions, batched_ranges
from telemetry_pipeline.resources import SourcesResource
from telemetry_pipeline.sources.base import SessionRef


def build_new_sessions_sensor(batch_size: int, interval: int) -> dg.SensorDefinition:
    @dg.sensor(
        name=NEW_SESSIONS_SENSOR,
        job_name=EXPORT_JOB,
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
        if not new_keys and not updated:
            return dg.SensorResult(cursor=cursor, skip_reason="no new sessions")
        # New keys are appended in this order, so they form contiguous ranges at the end of the list.
        runs = [
            dg.RunRequest(run_key=f"new:{r.start}..{r.end}:{len(r.keys)}", tags=r.tags)
            for r in batched_ranges(new_keys, new_keys, batch_size)
        ]
        if updated:  # exported before their last events: export again (rows are replaced, not added)
            stamp = max(updated.values())
            runs += [
                dg.RunRequest(run_key=f"updated:{r.start}..{r.end}:{len(r.keys)}:{stamp}", tags=r.tags)
                for r in batched_ranges(
                    context.instance.get_dynamic_partitions(AGENT_SESSIONS), updated, batch_size
                )
            ]
        context.log.info("%d new and %d updated sessions -> %d runs", len(new_keys), len(updated), len(runs))
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=[agent_sessions.build_add_request(new_keys)] if new_keys else None,
            cursor=cursor,
        )

    return new_sessions_sensor


def _updated_since_export(instance: dg.DagsterInstance, relisted: list[SessionRef]) -> dict[str, str]:
    """{key: last event} of the exported sessions whose source reports events after their export."""
    last_event = {r.key: r.last_event_at for r in relisted if r.last_event_at is not None}
    exports = latest_exports(instance, list(last_event))
    return {
        key: at.isoformat() for key, at in last_event.items() if key in exports and at > exports[key].exported_at
    }

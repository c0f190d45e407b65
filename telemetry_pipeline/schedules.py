"""`hourly_export_schedule`: every known partition not exported yet (new or failed before), batched."""

import dagster as dg

from telemetry_pipeline.history import pending_keys
from telemetry_pipeline.partitions import agent_sessions, batched_ranges


def build_hourly_export_schedule(job_name: str, batch_size: int) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="hourly_export_schedule",
        job_name=job_name,
        cron_schedule="0 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Hourly: exports every known session that is not exported yet, in batches.",
    )
    def hourly_export_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        all_keys = context.instance.get_dynamic_partitions(agent_sessions.name)
        pending = pending_keys(context.instance, all_keys)
        if not pending:
            return dg.SkipReason("every known session is exported")
        tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "manual"
        return [
            dg.RunRequest(run_key=f"hourly:{tick}:{r.start}..{r.end}:{len(r.keys)}", tags=r.tags)
            for r in batched_ranges(all_keys, pending, batch_size)
        ]

    return hourly_export_schedule

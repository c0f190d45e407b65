"""`hourly_export_schedule`: every known partition not exported yet (new or failed before), batched, and a
refresh of `process_overview`. It discovers nothing itself: discovery is the sensor's (or `discovered_sessions`,
run by hand), so a slow source never delays the schedule's tick;
`retention_schedule` (off by default) and its job."""

import dagster as dg

from telemetry_pipeline.defs.loggers import LOGGER_CONFIG
from telemetry_pipeline.defs.resources import WarehouseResource
from telemetry_pipeline.instance.history import pending_keys
from telemetry_pipeline.instance.keys import PROCESS_OVERVIEW_KEY, SIGNAVIO_EXPORT_KEY
from telemetry_pipeline.instance.partitions import batched_ranges
from telemetry_pipeline.instance.retention import apply_retention
from telemetry_pipeline.names import (
    AGENT_SESSIONS,
    HOURLY_EXPORT_SCHEDULE,
    RETENTION_JOB,
    RETENTION_OP,
    RETENTION_SCHEDULE,
)
from telemetry_pipeline.settings import Settings


def build_hourly_export_schedule(batch_size: int) -> dg.ScheduleDefinition:
    # A schedule launches one job: targeting both assets gives it one whose runs each select one of
    # them (an export range, or the overview), so an export run never pays for the overview.
    @dg.schedule(
        name=HOURLY_EXPORT_SCHEDULE,
        target=dg.AssetSelection.assets(SIGNAVIO_EXPORT_KEY, PROCESS_OVERVIEW_KEY),
        cron_schedule="0 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Hourly: exports every known session not exported yet (new ones and ones that failed "
        "before) in batches, and refreshes `process_overview`. New sessions are the sensor's to discover.",
    )
    def hourly_export_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        all_keys = context.instance.get_dynamic_partitions(AGENT_SESSIONS)
        pending = pending_keys(context.instance, all_keys)
        tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "manual"
        refresh = dg.RunRequest(run_key=f"overview:{tick}", asset_selection=[PROCESS_OVERVIEW_KEY],
                                run_config=LOGGER_CONFIG)
        if not pending:
            return [refresh]
        return [
            dg.RunRequest(run_key=f"hourly:{tick}:{r.start}..{r.end}:{len(r.keys)}", tags=r.tags,
                          asset_selection=[SIGNAVIO_EXPORT_KEY], run_config=LOGGER_CONFIG)
            for r in batched_ranges(all_keys, pending, batch_size)
        ] + [refresh]

    return hourly_export_schedule


class RetentionConfig(dg.Config):
    older_than_days: float = Settings.retention_days  # the schedule passes RETENTION_DAYS
    raw_older_than_days: float = Settings.raw_retention_days  # and RAW_RETENTION_DAYS


@dg.op(name=RETENTION_OP, description="Removes partitions of `agent_sessions` exported more than N days ago, "
       "and the export runs left with none (their export records are archived in the warehouse first); deletes the "
       "raw payloads of sessions exported more than RAW_RETENTION_DAYS ago.")
def apply_retention_op(context: dg.OpExecutionContext, config: RetentionConfig, warehouse: WarehouseResource) -> None:
    out = apply_retention(context.instance, warehouse.warehouse(), config.older_than_days,
                          raw_older_than_days=config.raw_older_than_days)
    context.log.info("pruned %d exported partitions older than %s days; deleted %d export runs, archived %d records; "
                     "deleted %d raw payloads exported more than %s days ago", len(out.pruned_keys),
                     config.older_than_days, len(out.deleted_runs), out.archived, out.raw_pruned,
                     config.raw_older_than_days)


@dg.job(name=RETENTION_JOB, description="Retention for `agent_sessions` (run by `retention_schedule`, or by hand).",
        config=LOGGER_CONFIG)
def retention_job() -> None:
    apply_retention_op()


def build_retention_schedule(older_than_days: float, raw_older_than_days: float) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=RETENTION_SCHEDULE,
        job=retention_job,
        cron_schedule="30 3 * * *",
        default_status=dg.DefaultScheduleStatus.STOPPED,  # opt-in: deleting partitions is an operator's call
        run_config={**LOGGER_CONFIG, "ops": {RETENTION_OP: {"config": {"older_than_days": older_than_days,
                                                      "raw_older_than_days": raw_older_than_days}}}},
        description="Daily, off by default: prunes sessions exported more than RETENTION_DAYS days ago, and raw "
                    "payloads exported more than RAW_RETENTION_DAYS ago.",
    )

"""The only place that builds `Definitions`: from a `Settings` object (settings.py), which `defs` reads from the
environment when Dagster asks for it. Tests call `build_definitions` with settings they build directly."""

from __future__ import annotations

import dagster as dg

from telemetry_pipeline import names
from telemetry_pipeline.canonical.content import govern_logs
from telemetry_pipeline.defs.assets import STAGE_SPECS, discovered_sessions, process_overview, session_export
from telemetry_pipeline.defs.loggers import LOGGER_CONFIG, one_line_console
from telemetry_pipeline.defs.resources import (
    ContentResource,
    MonitoringResource,
    PlaybooksResource,
    SignavioResource,
    SourcesResource,
    WarehouseResource,
)
from telemetry_pipeline.defs.schedules import build_hourly_export_schedule, build_retention_schedule, retention_job
from telemetry_pipeline.defs.sensors import build_new_sessions_sensor
from telemetry_pipeline.policy.playbooks import load_playbooks
from telemetry_pipeline.settings import Settings, from_environment


def build_definitions(settings: Settings) -> dg.Definitions:
    settings.signavio.check()
    settings.warehouse.check()
    load_playbooks(settings.playbooks_file)  # an invalid file is refused here, naming the playbook and the rule
    govern_logs(settings.content)  # this process's log records leave governed, as everything else does
    backfill = dg.BackfillPolicy.multi_run(max_partitions_per_run=settings.batch_size)
    export_assets = session_export.with_attributes(backfill_policy=backfill)
    export_sessions = dg.define_asset_job(
        names.EXPORT_JOB,
        selection=dg.AssetSelection.assets(export_assets),  # partitioned by agent_sessions, as the job is
        description="raw_telemetry -> signavio_export for a set of sessions (a contiguous range per run).",
        config=LOGGER_CONFIG,
    )
    refresh_overview = dg.define_asset_job(
        names.OVERVIEW_JOB, selection=dg.AssetSelection.assets(process_overview),
        description="process_overview alone (the sensor's first one; the hourly schedule refreshes it).",
        config=LOGGER_CONFIG,
    )
    return dg.Definitions(
        assets=[discovered_sessions, *STAGE_SPECS, export_assets, process_overview],
        jobs=[export_sessions, refresh_overview, retention_job],
        sensors=[build_new_sessions_sensor(
            settings.batch_size, settings.sensor_interval_seconds, [export_sessions, refresh_overview]
        )],
        schedules=[
            build_hourly_export_schedule(settings.batch_size),
            build_retention_schedule(settings.retention_days, settings.raw_retention_days),
        ],
        loggers={"console": one_line_console},  # every run's: one line per event, stack traces in the UI only
        resources={
            "sources": SourcesResource.from_settings(settings.sources),
            "warehouse": WarehouseResource.from_settings(settings),
            "monitoring": MonitoringResource(
                activity_alphabet_limit=settings.activity_alphabet_limit,
                overview_window_hours=settings.overview_window_hours,
                overview_dir=str(settings.home / "overview"),
            ),
            "signavio": SignavioResource.from_settings(settings.signavio, settings.outbox_dir),
            "content": ContentResource.from_settings(settings.content),
            "playbooks": PlaybooksResource(path=str(settings.playbooks_file) if settings.playbooks_file else None),
        },
    )


def export_job(settings: Settings) -> dg.JobDefinition:
    """`export_sessions` as `settings` build it: what a CLI export runs, in its process and in its helpers."""
    return build_definitions(settings).resolve_job_def(names.EXPORT_JOB)


def __getattr__(name: str) -> dg.Definitions:
    """`defs` is built when Dagster asks for it (workspace.yaml names the attribute), not on import:
    importing this module must not fail on an unrelated setting."""
    if name == "defs":
        return build_definitions(from_environment())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The only place that builds `Definitions` and reads the environment (INTERFACE.md, Configuration).
Optional settings are read here with `os.environ`; the secrets (`SIGNAVIO_API_KEY`, `AGORA_API_TOKEN`) are bound
with `EnvVar`, so their value never appears in run config, the UI or the definitions snapshot.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg

from telemetry_pipeline.assets import discovered_sessions, session_export
from telemetry_pipeline.http import parse_duration
from telemetry_pipeline.partitions import agent_sessions
from telemetry_pipeline.resources import SignavioResource, SourcesResource, WarehouseResource
from telemetry_pipeline.schedules import build_hourly_export_schedule, build_retention_schedule, prune_exported_sessions
from telemetry_pipeline.sensors import build_new_sessions_sensor

DEFAULT_HOME = "./.telemetry_pipeline"
DEFAULT_BATCH_SIZE = 500


def pipeline_home() -> Path:
    return Path(os.environ.get("TELEMETRY_PIPELINE_HOME") or DEFAULT_HOME).resolve()


def dagster_home() -> Path:
    """The Dagster instance: `$DAGSTER_HOME` when set (e.g. a Postgres-backed production instance),
    else `<home>/dagster_home`."""
    return Path(os.environ.get("DAGSTER_HOME") or pipeline_home() / "dagster_home").resolve()


def batch_size() -> int:
    return int(os.environ.get("EXPORT_BATCH_SIZE") or DEFAULT_BATCH_SIZE)


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def _secret(name: str) -> dg.EnvVar | None:
    return dg.EnvVar(name) if _env(name) else None


def make_definitions() -> dg.Definitions:
    home = pipeline_home()
    api_url = _env("SIGNAVIO_API_URL")
    if api_url and not _env("SIGNAVIO_API_KEY"):
        raise ValueError("configuration error: SIGNAVIO_API_URL is set but SIGNAVIO_API_KEY is empty")
    size = batch_size()
    backfill = dg.BackfillPolicy.multi_run(max_partitions_per_run=size)
    export_assets = session_export.with_attributes(backfill_policy=backfill)
    export_sessions = dg.define_asset_job(
        "export_sessions",
        selection=dg.AssetSelection.assets(export_assets),
        partitions_def=agent_sessions,
        description="raw_telemetry -> signavio_export for a set of sessions (a contiguous range per run).",
    )
    return dg.Definitions(
        assets=[discovered_sessions, export_assets],
        jobs=[export_sessions, prune_exported_sessions],
        sensors=[build_new_sessions_sensor(export_sessions.name, size, int(_env("SENSOR_INTERVAL_SECONDS", "30")))],
        schedules=[
            build_hourly_export_schedule(export_sessions.name, size),
            build_retention_schedule(float(_env("RETENTION_DAYS", "30"))),
        ],
        resources={
            "sources": SourcesResource(
                extract_url=_env("EXTRACT_SERVICE_URL"),
                agent_telemetry_url=_env("AGENT_METRICS_BASE_URL"),
                extract_list_path=os.environ.get("EXTRACT_SESSIONS_PATH"),
                agent_telemetry_list_path=os.environ.get("AGENT_METRICS_SESSIONS_PATH"),
                agora_url=_env("AGORA_PLATFORM_URL"),
                agora_token=_secret("AGORA_API_TOKEN"),
                otlp_dir=_env("OTLP_INBOX_DIR") or (str(home / "inbox") if (home / "inbox").is_dir() else None),
                timeout=_env("SOURCE_TIMEOUT", "30s"),
                max_retries=int(_env("SOURCE_MAX_RETRIES", "3")),
                retry_wait_initial=float(_env("HTTP_RETRY_WAIT_INITIAL", "0.5")),
                max_in_flight=int(_env("FETCH_CONCURRENCY", "16")),
                settle_seconds=float(_env("SESSION_SETTLE_SECONDS", "0")),
                agent_name_fallback=_env("AGENT_NAME") or _env("SERVICE_NAME") or socket.gethostname() or "agent",
            ),
            "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
            "signavio": SignavioResource(
                api_url=api_url,
                api_key=_secret("SIGNAVIO_API_KEY"),
                status_url=_env("SIGNAVIO_STATUS_URL"),
                dataset=_env("SIGNAVIO_DATASET", "agent_telemetry"),
                timeout=_env("SIGNAVIO_TIMEOUT", "30s"),
                max_retries=int(_env("SIGNAVIO_MAX_RETRIES", "3")),
                retry_wait_initial=float(_env("HTTP_RETRY_WAIT_INITIAL", "0.5")),
                tenant_id=_env("SIGNAVIO_TENANT_ID"),
                poll_interval=parse_duration(_env("SIGNAVIO_POLL_INTERVAL", "1s")),
                poll_deadline=_env("SIGNAVIO_POLL_DEADLINE", "10m"),
                max_body_mb=float(_env("SIGNAVIO_MAX_BODY_MB", "50")),
                outbox_dir=str(home / "outbox"),
            ),
        },
    )


def __getattr__(name: str) -> dg.Definitions:
    """`defs` is built when Dagster asks for it (workspace.yaml names the attribute), not on import:
    importing this module for `dagster_home()` must not fail on an unrelated setting."""
    if name == "defs":
        return make_definitions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

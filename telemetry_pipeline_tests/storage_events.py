"""Raw event-log entries (planned, materialised, observed; Dagster has no public constructor for them) for the tests
that compare our instances' storages with Dagster's own on the same history."""

from __future__ import annotations

import logging
import time

import dagster as dg
from dagster._core.events import AssetMaterializationPlannedData, AssetObservationData, StepMaterializationData

PLANNED = dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
DONE = dg.DagsterEventType.ASSET_MATERIALIZATION
SEEN = dg.DagsterEventType.ASSET_OBSERVATION

# Planned events, materialisations of two runs and observations, of a partitioned asset and of two others.
HISTORY = (
    (PLANNED, "signavio_export", "a", "run-1"), (PLANNED, "signavio_export", "b", "run-1"),
    (DONE, "signavio_export", "a", "run-1"), (DONE, "raw_telemetry", None, "run-1"),
    (SEEN, "signavio_export", "b", "run-1"), (PLANNED, "signavio_export", "b", "run-2"),
    (DONE, "signavio_export", "b", "run-2"), (DONE, "raw_telemetry", None, "run-2"),
    (SEEN, "telemetry_events", None, "run-2"),
)
# What the UI's asset pages read first: each asset's latest materialisation, run and time.
ASSET_KEYS_ROWS = (
    "SELECT asset_key, last_materialization, last_run_id, last_materialization_timestamp, wipe_timestamp, "
    "asset_details, tags, cached_status_data FROM asset_keys ORDER BY asset_key"
)


def storage_event(kind: dg.DagsterEventType, asset: str, partition: str | None, run_id: str,
                  at: float | None = None) -> dg.EventLogEntry:
    key = dg.AssetKey(asset)
    if kind == PLANNED:
        data: object = AssetMaterializationPlannedData(key, partition=partition)
    elif kind == DONE:
        data = StepMaterializationData(dg.AssetMaterialization(key, partition=partition, metadata={"rows": 3}))
    else:
        data = AssetObservationData(dg.AssetObservation(key, partition=partition, metadata={"why": "gone"}))
    event = dg.DagsterEvent(kind.value, job_name="export_sessions", event_specific_data=data)  # type: ignore[arg-type]
    return dg.EventLogEntry(error_info=None, level=logging.INFO, user_message="", run_id=run_id,
                            timestamp=time.time() if at is None else at, dagster_event=event)


def history_events() -> list[dg.EventLogEntry]:
    """HISTORY's entries, a second apart (both storages of a comparison get the same objects)."""
    now = time.time()
    return [storage_event(kind, asset, partition, run, now + i)
            for i, (kind, asset, partition, run) in enumerate(HISTORY)]

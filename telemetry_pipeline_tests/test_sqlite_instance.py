"""The embedded default's event log (`instance/sqlite_storage.py`) against Dagster's own SQLite event log, on the
same events: what ours writes differently (kept engines, one upsert per asset event) must read back the same."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import dagster as dg
from dagster._core.events import AssetMaterializationPlannedData, AssetObservationData, StepMaterializationData
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from telemetry_pipeline.instance.sqlite_storage import PooledSqliteEventLogStorage

PLANNED = dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
DONE = dg.DagsterEventType.ASSET_MATERIALIZATION
SEEN = dg.DagsterEventType.ASSET_OBSERVATION


def _event(kind: dg.DagsterEventType, asset: str, partition: str | None, run_id: str, at: float) -> dg.EventLogEntry:
    key = dg.AssetKey(asset)
    data = {
        PLANNED: lambda: AssetMaterializationPlannedData(key, partition=partition),
        DONE: lambda: StepMaterializationData(dg.AssetMaterialization(key, partition=partition,
                                                                      metadata={"rows": 3})),
        SEEN: lambda: AssetObservationData(dg.AssetObservation(key, partition=partition, metadata={"why": "x"})),
    }[kind]()
    event = dg.DagsterEvent(kind.value, job_name="export_sessions", event_specific_data=data)
    return dg.EventLogEntry(error_info=None, level=logging.INFO, user_message="", run_id=run_id, timestamp=at,
                            dagster_event=event)


def test_the_latest_asset_events_read_back_as_on_dagsters_own_storage(tmp_path: Path) -> None:
    """`asset_keys` holds each asset's latest materialisation, run and time (the UI's asset pages read it): after
    planned events, materialisations of two runs and an observation, ours (one upsert per event, the table's
    columns looked up once) has the same rows as Dagster's (an INSERT, and on its IntegrityError an UPDATE)."""
    now = time.time()
    history = [
        (PLANNED, "signavio_export", "a", "run-1"), (PLANNED, "signavio_export", "b", "run-1"),
        (DONE, "signavio_export", "a", "run-1"), (DONE, "raw_telemetry", None, "run-1"),
        (SEEN, "signavio_export", "b", "run-1"), (PLANNED, "signavio_export", "b", "run-2"),
        (DONE, "signavio_export", "b", "run-2"), (DONE, "raw_telemetry", None, "run-2"),
        (SEEN, "telemetry_events", None, "run-2"),
    ]
    events = [_event(kind, asset, partition, run, now + i) for i, (kind, asset, partition, run) in enumerate(history)]
    rows = {}
    for name, storage_type in (("dagster", SqliteEventLogStorage), ("ours", PooledSqliteEventLogStorage)):
        storage = storage_type(str(tmp_path / name))
        try:
            for event in events:
                storage.store_event(event)
            records = {r.asset_entry.asset_key.to_user_string(): r.asset_entry for r in storage.get_asset_records()}
        finally:
            storage.dispose()
        with sqlite3.connect(tmp_path / name / "index.db") as con:
            rows[name] = con.execute(
                "SELECT asset_key, last_materialization, last_run_id, last_materialization_timestamp, wipe_timestamp, "
                "asset_details, tags, cached_status_data FROM asset_keys ORDER BY asset_key"
            ).fetchall()
        latest = records["signavio_export"].last_materialization
        assert latest is not None and latest.dagster_event is not None
        assert (latest.run_id, latest.dagster_event.partition) == ("run-2", "b")
        assert records["telemetry_events"].last_materialization is None, "an observation is no materialisation"
    assert len(rows["ours"]) == 3
    assert rows["ours"] == rows["dagster"]

"""The embedded default's event log (`instance/sqlite_storage.py`) against Dagster's own SQLite event log, on the
same events: what ours writes differently (kept engines, one upsert per asset event, a materialisation serialised
once) must read back the same."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from telemetry_pipeline.instance.sqlite_storage import PooledSqliteEventLogStorage
from telemetry_pipeline_tests.storage_events import ASSET_KEYS_ROWS, history_events


def test_the_latest_asset_events_read_back_as_on_dagsters_own_storage(tmp_path: Path) -> None:
    """`asset_keys` after planned events, materialisations of two runs and observations: ours (one upsert per event,
    the table's columns looked up once, the record built from the event's row text) has the same rows, byte for
    byte, as Dagster's (a column lookup, an INSERT, on its IntegrityError an UPDATE, the event serialised twice)."""
    events = history_events()
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
            rows[name] = con.execute(ASSET_KEYS_ROWS).fetchall()
        latest = records["signavio_export"].last_materialization
        assert latest is not None and latest.dagster_event is not None
        assert (latest.run_id, latest.dagster_event.partition) == ("run-2", "b")
        assert records["telemetry_events"].last_materialization is None, "an observation is no materialisation"
    assert len(rows["ours"]) == 3
    assert rows["ours"] == rows["dagster"]

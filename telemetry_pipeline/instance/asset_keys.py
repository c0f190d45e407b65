"""What both instances' event-log storages do once where Dagster (1.13) repeats it for `asset_keys`, the table the
UI's asset pages read first. A mixin of `sqlite_storage.PooledSqliteEventLogStorage` and
`pooled_postgres.PooledEventLogStorage`; test_sqlite_instance.py and test_postgres_instance.py compare the rows
with Dagster's own storages'.

- The table's columns are looked up once: Dagster reflects them at every asset event (twice a session) and at
  several asset reads (~35 ms each on PostgreSQL). Columns are only ever added (by `dagster instance migrate`), so
  one found present is remembered.
- A materialisation is serialised once: Dagster serialises an event for its event-log row (`_event_to_row`) and a
  materialisation again inside the `EventLogRecord` that `asset_keys.last_materialization` holds. An export
  session's materialisation carries its summary (24 metadata entries, ~6 KB): 0.4 ms each time. The record's text
  is the row's text with the storage id beside it (`serialize_value` writes sorted keys), so it is built from that.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from dagster._core.events.log import EventLogEntry
from dagster._time import datetime_from_timestamp


def record_text(entry_text: str, storage_id: int) -> str:
    """`serialize_value(EventLogRecord(storage_id, entry))`, given `serialize_value(entry)`."""
    return f'{{"__class__": "EventLogRecord", "event_log_entry": {entry_text}, "storage_id": {storage_id}}}'


class AssetKeysOnce:
    """Mixin for a `SqlEventLogStorage`, before it in the bases."""

    _last_row = threading.local()  # (event, its row's text): the event this thread last turned into a row

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._asset_key_columns: set[str] = set()
        super().__init__(*args, **kwargs)

    def has_asset_key_col(self, column_name: str) -> bool:
        # Known present: no connection checked out; else Dagster's lookup, which goes through the method below.
        return column_name in self._asset_key_columns or super().has_asset_key_col(column_name)  # type: ignore[misc]

    def _has_asset_key_col_on_connection(self, conn: sa.Connection, column_name: str) -> bool:
        if column_name not in self._asset_key_columns:
            if not super()._has_asset_key_col_on_connection(conn, column_name):  # type: ignore[misc]
                return False
            self._asset_key_columns.add(column_name)
        return True

    def _event_to_row(self, event: EventLogEntry) -> dict[str, Any]:
        row: dict[str, Any] = super()._event_to_row(event)  # type: ignore[misc]
        self._last_row.value = (event, row["event"])
        return row

    def _get_asset_entry_values(
        self, event: EventLogEntry, event_id: int, has_asset_key_index_cols: bool
    ) -> dict[str, Any]:
        last = getattr(self._last_row, "value", None)
        dagster_event = event.dagster_event
        if last is None or last[0] is not event or dagster_event is None or not dagster_event.is_step_materialization:
            return super()._get_asset_entry_values(event, event_id, has_asset_key_index_cols)  # type: ignore[misc]
        values: dict[str, Any] = {"last_materialization": record_text(last[1], event_id), "last_run_id": event.run_id}
        if has_asset_key_index_cols:
            values["last_materialization_timestamp"] = datetime_from_timestamp(event.timestamp)
        return values

"""A materialisation serialised once, not twice, by the event-log storages of both instances.

Dagster (1.13) serialises an event for its event-log row (`_event_to_row`) and, for a materialisation, again inside
the `EventLogRecord` that `asset_keys.last_materialization` holds (what the UI's asset pages read first). An export
session's materialisation carries its summary (24 metadata entries, ~6 KB): 0.4 ms each time. The record's text is
the row's text with the storage id beside it (`serialize_value` writes sorted keys), so it is built from that.
test_sqlite_instance.py and test_postgres_instance.py compare the rows with Dagster's own storages'.
"""

from __future__ import annotations

import threading
from typing import Any

from dagster._core.events.log import EventLogEntry
from dagster._time import datetime_from_timestamp


def record_text(entry_text: str, storage_id: int) -> str:
    """`serialize_value(EventLogRecord(storage_id, entry))`, given `serialize_value(entry)`."""
    return f'{{"__class__": "EventLogRecord", "event_log_entry": {entry_text}, "storage_id": {storage_id}}}'


class SerializedOnce:
    """Mixin for a `SqlEventLogStorage`: remembers the text of the event it last turned into a row (per thread) and
    reuses it for that event's `asset_keys` values."""

    _last_row = threading.local()

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

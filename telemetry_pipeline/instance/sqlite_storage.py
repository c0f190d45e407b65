"""Dagster's embedded SQLite storage with its event-log connections kept open.

Dagster (1.13) opens a new engine and connection for every event it writes to SQLite, and disposes of them after
the commit; an asset event is written twice (the run's shard and the cross-run index), so each session of an
export run paid four engine set-ups besides its commits. This storage is Dagster's own, with the same files,
schema, transactions and locks, except that each shard's engine is kept: the index's for the life of the process,
the most recent runs' shards in a small cache (a long-lived daemon or webserver sees runs without end, and each
engine holds a file open), that it commits with `synchronous=NORMAL` (below), and that an asset's latest event
goes into `asset_keys` in one upsert (Dagster: an INSERT, its IntegrityError and an UPDATE, at every asset event),
with its columns looked up once and a materialisation serialised once (`asset_keys.py`). Named in the embedded default's
`dagster.yaml` (`LOCAL_INSTANCE_YAML`):

    storage:
      custom:
        module: telemetry_pipeline.instance.sqlite_storage
        class: PooledSqliteStorage
        config:
          base_dir: <the instance's directory>

Written against dagster 1.13: it replaces `SqliteEventLogStorage._connect`, through which every read and write of
the event log reaches its shards, `store_event_batch` for a run's planned events, and `_store_asset_event`
(test_sqlite_instance.py compares the rows with Dagster's own storage's).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from dagster import StringSource
from dagster._config.config_schema import UserConfigSchema
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import AssetKeyTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from sqlalchemy.dialects import sqlite

from telemetry_pipeline.instance.asset_keys import AssetKeysOnce

RUN_SHARDS_KEPT = 4  # runs whose shard stays open: the one being written, and a few being read next to it


class PooledSqliteEventLogStorage(AssetKeysOnce, SqliteEventLogStorage):
    """`SqliteEventLogStorage` whose shards keep their engine (one pooled connection each) between calls."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, sa.Engine] = OrderedDict()
        super().__init__(base_dir, inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sa.Connection]:
        with self._db_lock, self._engine(shard).connect() as conn, conn.begin():
            yield conn

    def _engine(self, shard: str) -> sa.Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        # The connection may be used from the thread after the one that opened it (the pool hands it over, the
        # storage's lock keeps it to one at a time), hence check_same_thread off.
        engine = sa.create_engine(
            self.conn_string_for_shard(shard), pool_size=1, max_overflow=2,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        sa.event.listen(engine, "connect", _synchronous_normal)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        runs = [name for name in self._engines if name != INDEX_SHARD_NAME]
        for old in runs[:-RUN_SHARDS_KEPT]:
            self._engines.pop(old).dispose()
        return engine

    def _store_asset_event(self, conn: sa.Connection, event: EventLogEntry, event_id: int) -> None:
        """An asset's latest event in `asset_keys` in one upsert, as dagster-postgres writes it. Dagster's SQLite
        storage tries an INSERT and, on the IntegrityError that every event of an asset but its first raises,
        UPDATEs: two statements and an exception per event."""
        asset_key = event.dagster_event.asset_key if event.dagster_event else None
        if asset_key is None:
            return
        values = self._get_asset_entry_values(event, event_id, self._has_asset_key_index_cols_on_connection(conn))
        if values:
            conn.execute(
                sqlite.insert(AssetKeyTable).values(asset_key=asset_key.to_string(), **values)
                .on_conflict_do_update(index_elements=[AssetKeyTable.c.asset_key], set_=values)
            )

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """A run's planned events (one per session, and one per check: the one batch Dagster hands over, with
        DAGSTER_EVENT_BATCH_SIZE set): the sessions' in one transaction per shard instead of two per event, the
        rest as Dagster writes them."""
        kind = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        planned = [e for e in events if e.dagster_event is not None and e.dagster_event.event_type == kind
                   and e.dagster_event.asset_key is not None]
        if planned and len({e.run_id for e in planned}) == 1:
            statements = [self.prepare_insert_event(event) for event in planned]
            with self.run_connection(planned[0].run_id) as conn:
                for statement in statements:
                    conn.execute(statement)
            with self.index_transaction() as conn:  # mirrored in the cross-run index, as `store_event` does
                ids = [_inserted_id(conn, statement) for statement in statements]
                self._store_asset_event_tags(conn, planned, ids)
                for event, event_id in zip(planned, ids, strict=True):
                    self._store_asset_event(conn, event, event_id)
            written = {id(e) for e in planned}
            events = [e for e in events if id(e) not in written]
        super().store_event_batch(events)

    def dispose(self) -> None:
        super().dispose()
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()


def _inserted_id(conn: sa.Connection, statement: Any) -> int:
    key = conn.execute(statement).inserted_primary_key
    if not key or key[0] is None:
        raise RuntimeError("the event log returned no id for an event it stored")
    return int(key[0])


def _synchronous_normal(dbapi_connection: Any, _record: Any) -> None:
    """WAL (Dagster's journal mode) with `synchronous=NORMAL`: a commit is written to the log, not flushed to the
    disk. A process that dies (kill -9, OOM) loses nothing committed; only a power loss or an OS crash may take the
    last commits back (the file stays consistent), and a session whose materialisation went that way is pending
    again and exported once more (the tables' primary keys make that an update). Dagster's default, FULL, pays a
    flush per event, most of an export's bookkeeping on SQLite."""
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


class PooledSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (runs, event log, schedules under `base_dir`) with the pooled event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(base_dir, inst_data)
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {"base_dir": StringSource}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
                          ) -> PooledSqliteStorage:
        return cls(inst_data=inst_data, **config_value)

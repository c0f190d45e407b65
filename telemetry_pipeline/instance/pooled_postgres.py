"""Dagster's PostgreSQL storage with one bounded connection pool per process.

dagster-postgres (0.29) gives its run, event-log and schedule storages each an engine with `NullPool`:
every storage call opens a new connection (TCP + authentication + backend start), and an export run
writes several thousand events. The webserver switches to `pool_size=1` plus an overflow per storage.
Dagster has no option for a pool, so this class, named in `dagster.yaml`, builds the same three
storages and gives them ONE shared engine with a bounded pool (size, overflow, pre-ping, recycle from
`dagster.yaml`). Every process that builds the instance from that file gets it: the CLI, runs and their
steps, the daemon, the webserver, the code server.

    storage:
      custom:
        module: telemetry_pipeline.instance.pooled_postgres
        class: PooledPostgresStorage
        config:
          postgres_url: {env: DAGSTER_POSTGRES_URL}
          pool: {size: 5, max_overflow: 5, pre_ping: true, recycle_seconds: 3600, timeout_seconds: 30}

Written against dagster 1.13 / dagster-postgres 0.29: it swaps the storages' `_engine`, the one attribute
through which they reach the database; the tests build it from `deploy/dagster.yaml` against a real server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import yaml
from dagster import AssetKey, Enum, EnumValue, Field, IntSource, StringSource
from dagster._config.config_schema import UserConfigSchema
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import DynamicPartitionsTable, SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import set_pg_statement_timeout

from telemetry_pipeline.instance.asset_keys import AssetKeysOnce

PLAIN_SCHEME = "postgresql://"
# SQLAlchemy 2.x maps a bare `postgresql://` to psycopg (3); the driver installed with dagster-postgres is psycopg2.
DRIVER_SCHEME = "postgresql+psycopg2://"
# PostgreSQL's default; deploy/dagster.yaml ships "off" (see there and docs/OPERATING.md, "Running it in production").
SYNCHRONOUS_COMMIT = "on"
_SYNCHRONOUS_COMMIT_VALUES = ("on", "off", "local", "remote_write", "remote_apply")


@dataclass(frozen=True)
class PoolSettings:
    size: int = 5
    max_overflow: int = 5
    pre_ping: bool = True
    recycle_seconds: int = 3600
    timeout_seconds: int = 30

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> PoolSettings:
        return cls(**(config or {}))

    @property
    def limit(self) -> int:
        """The most connections one process holds at once."""
        return self.size + self.max_overflow


def driver_url(url: str) -> str:
    """`postgresql://…` (the form users write, INTERFACE.md) → the psycopg2 form SQLAlchemy 2 needs."""
    return DRIVER_SCHEME + url[len(PLAIN_SCHEME):] if url.startswith(PLAIN_SCHEME) else url


def pooled_engine(url: str, pool: PoolSettings, synchronous_commit: str = SYNCHRONOUS_COMMIT) -> sa.Engine:
    """`synchronous_commit`: PostgreSQL's setting, for these connections only."""
    # AUTOCOMMIT like dagster-postgres' engines: its storages open their own transactions where they need one.
    return sa.create_engine(
        driver_url(url),
        connect_args={"options": f"-c synchronous_commit={synchronous_commit}"},  # set as the session starts
        isolation_level="AUTOCOMMIT",
        pool_size=pool.size,
        max_overflow=pool.max_overflow,
        pool_pre_ping=pool.pre_ping,
        pool_recycle=pool.recycle_seconds,
        pool_timeout=pool.timeout_seconds,
    )


class SharedEngine:
    """The process's one pooled engine, held by the three storages."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._statement_timeout_ms: int | None = None
        sa.event.listen(engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        if self._statement_timeout_ms is not None:
            set_pg_statement_timeout(dbapi_connection, self._statement_timeout_ms)

    def for_webserver(self, statement_timeout_ms: int) -> None:
        """The webserver's statement timeout applies to every connection from now on; the pool stays as
        configured (dagster-postgres would replace it with pool_size=1 + an overflow, per storage)."""
        if self._statement_timeout_ms != statement_timeout_ms:
            self._statement_timeout_ms = statement_timeout_ms
            self.engine.dispose()  # connections opened before had no timeout


class _Pooled:
    """Mixin for the three dagster-postgres storages: use the shared engine instead of their own."""

    _engine: sa.Engine
    _shared: SharedEngine

    def use(self, shared: SharedEngine) -> None:
        self._engine.dispose()
        self._engine = shared.engine
        self._shared = shared

    def optimize_for_webserver(self, statement_timeout: int, pool_recycle: int, max_overflow: int) -> None:
        self._shared.for_webserver(statement_timeout)

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._shared.engine.dispose()


class PooledRunStorage(_Pooled, PostgresRunStorage):
    pass


class PooledEventLogStorage(_Pooled, AssetKeysOnce, PostgresEventLogStorage):
    """dagster-postgres' event log with fewer round trips per event. Measured on Dagster's floor for our export
    (bench/floor.py, 2,000 sessions in runs of 500, RUN_BOOKKEEPING=full): 17.6 s as dagster-postgres writes
    them, 14.5 s with the first change, 11.3 s with both (`lean`, one planned event per run: 8.9 s).
    - An event and its asset index rows are written in ONE transaction on one pooled connection (dagster-postgres
      checks out two and also sends a NOTIFY that nothing listens to: it polls for new events).
    - A batch of "planned" events (one per partition of a run, which `create_run` hands over as one batch
      when DAGSTER_EVENT_BATCH_SIZE is set) is one multi-row INSERT, as dagster-postgres already does for a
      batch of materialisations, instead of one write per partition.
    - `asset_keys`' columns are looked up once, and a materialisation is serialised once (`asset_keys.py`)."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True) -> None:
        self._partitions_read: dict[str, tuple[tuple[Any, ...], tuple[str, ...]]] = {}  # name -> (version, keys)
        super().__init__(postgres_url, should_autocreate_tables)

    def store_event(self, event: EventLogEntry) -> None:
        insert = self.prepare_insert_event(event).returning(SqlEventLogStorageTable.c.id)
        with self.index_transaction() as conn:
            event_id = int(conn.execute(insert).scalar_one())
            if _is_asset_event(event):
                self._store_asset_event_tags(conn, [event], [event_id])
                self._store_asset_event(conn, event, event_id)
        if event.is_dagster_event and event.dagster_event_type in ASSET_CHECK_EVENTS:
            self.store_asset_check_event(event, event_id)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        planned = [e for e in events if e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED]
        if planned and all(_is_asset_event(e) for e in planned):
            self._store_asset_events_at_once(planned)
            events = [e for e in events if e.dagster_event_type != DagsterEventType.ASSET_MATERIALIZATION_PLANNED]
        if events:
            super().store_event_batch(events)

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        """Every key, in the order added. Runs, the sensor, the schedule and the status rebuild each read them
        several times (100,000 keys: ~0.2 s a read); this process keeps the last read and reads again only when
        the partitions changed. Their (max id, count) says so: ids are serial and never reused, so any insert
        raises the max id and a delete alone lowers the count."""
        self._check_partitions_table()
        table = DynamicPartitionsTable
        mine = table.c.partitions_def_name == partitions_def_name
        with self.index_connection() as conn:
            version = tuple(conn.execute(sa.select(sa.func.max(table.c.id), sa.func.count()).where(mine)).one())
            cached = self._partitions_read.get(partitions_def_name)
            if cached is None or cached[0] != version:
                keys = tuple(conn.execute(sa.select(table.c.partition).where(mine).order_by(table.c.id)).scalars())
                cached = self._partitions_read[partitions_def_name] = (version, keys)
        return list(cached[1])

    def get_existing_dynamic_partitions(self, partitions_def_name: str, partition_keys: Sequence[str]) -> set[str]:
        """Which of `partition_keys` are partitions. The partition-status rebuild asks this for every key ever
        materialised (the whole history), which dagster-postgres answers with one IN query per 1,000 keys;
        past the number of partitions, one read of all partitions and a set intersection is far cheaper."""
        wanted = set(partition_keys)
        if len(wanted) <= _MEMBERSHIP_BY_QUERY:
            return set(super().get_existing_dynamic_partitions(partitions_def_name, list(wanted)))
        return wanted.intersection(self.get_dynamic_partitions(partitions_def_name))

    def get_latest_asset_partition_materialization_attempts_without_materializations(
        self, asset_key: AssetKey, after_storage_id: int | None = None
    ) -> dict[str, tuple[str, int]]:
        """{partition: (run id, storage id)} of the partitions whose latest planned event has no materialisation
        after it (in progress, or failed). The status rebuild asks this for the whole history; dagster-postgres
        fetches the latest planned AND the latest materialisation of every partition (two rows per session ever
        exported) and compares them in Python. Here one grouped query returns only the unfinished ones."""
        table = SqlEventLogStorageTable
        planned = DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value
        done = DagsterEventType.ASSET_MATERIALIZATION.value
        latest = sa.select(
            table.c.partition,
            sa.func.max(table.c.id).filter(table.c.dagster_event_type == planned).label("planned"),
            sa.func.max(table.c.id).filter(table.c.dagster_event_type == done).label("done"),
        ).where(
            table.c.asset_key == asset_key.to_string(), table.c.partition.is_not(None),
            table.c.dagster_event_type.in_([planned, done]),
        )
        if after_storage_id is not None:
            latest = latest.where(table.c.id > after_storage_id)
        latest = self._add_assets_wipe_filter_to_query(
            latest.group_by(table.c.partition), self._get_assets_details([asset_key]), [asset_key]
        ).subquery()
        query = (
            sa.select(latest.c.partition, table.c.run_id, table.c.id)
            .join(table, table.c.id == latest.c.planned)
            .where(sa.or_(latest.c.done.is_(None), latest.c.done < latest.c.planned))
        )
        with self.index_connection() as conn:
            return {partition: (run_id, event_id) for partition, run_id, event_id in conn.execute(query)}

    def _store_asset_events_at_once(self, events: Sequence[EventLogEntry]) -> None:
        insert = self.prepare_insert_event_batch(events).returning(SqlEventLogStorageTable.c.id)
        with self.index_transaction() as conn:
            ids = [int(row[0]) for row in conn.execute(insert)]
            self._store_asset_event_tags(conn, events, ids)
            last = {e.get_dagster_event().asset_key: (e, i) for e, i in zip(events, ids, strict=True)}
            for event, event_id in last.values():  # the asset table keeps the latest event per asset
                self._store_asset_event(conn, event, event_id)


_MEMBERSHIP_BY_QUERY = 1000  # up to this many keys, dagster-postgres' own IN query (one round trip)


def _is_asset_event(event: EventLogEntry) -> bool:
    dagster_event = event.dagster_event
    return (dagster_event is not None and dagster_event.event_type in ASSET_EVENTS
            and dagster_event.asset_key is not None)


class PooledScheduleStorage(_Pooled, PostgresScheduleStorage):
    pass


class PooledPostgresStorage(DagsterPostgresStorage):
    """dagster-postgres' storage whose run, event-log and schedule storages share one bounded pool.
    `synchronous_commit` applies to the pool's connections only (never to the warehouse's): "off" acknowledges
    a commit before its WAL reaches the disk, so a crash of the database server (not of our processes) can take
    back the last ~0.6 s of Dagster's records; the database stays consistent."""

    def __init__(
        self,
        postgres_url: str,
        pool: PoolSettings | None = None,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        synchronous_commit: str = SYNCHRONOUS_COMMIT,
    ) -> None:
        url = driver_url(postgres_url)
        self.pool = pool or PoolSettings()
        self.postgres_url = url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        # Each constructor checks (and on a new database creates) its tables over a short connection of its own.
        self._run_storage = PooledRunStorage(url, should_autocreate_tables)
        self._event_log_storage = PooledEventLogStorage(url, should_autocreate_tables)
        self._schedule_storage = PooledScheduleStorage(url, should_autocreate_tables)
        shared = SharedEngine(pooled_engine(url, self.pool, synchronous_commit))
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            storage.use(shared)
        self._shared = shared

    @property
    def engine(self) -> sa.Engine:
        return self._shared.engine

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {
            "postgres_url": StringSource,
            "should_autocreate_tables": Field(bool, is_required=False, default_value=True),
            "synchronous_commit": Field(
                # PostgreSQL's values; quoted in YAML, where a bare off is false
                Enum("SynchronousCommit", [EnumValue(v) for v in _SYNCHRONOUS_COMMIT_VALUES]),
                is_required=False, default_value=SYNCHRONOUS_COMMIT,
            ),
            "pool": Field(
                {
                    "size": Field(IntSource, is_required=False, default_value=PoolSettings.size),
                    "max_overflow": Field(IntSource, is_required=False, default_value=PoolSettings.max_overflow),
                    "pre_ping": Field(bool, is_required=False, default_value=PoolSettings.pre_ping),
                    "recycle_seconds": Field(
                        IntSource, is_required=False, default_value=PoolSettings.recycle_seconds
                    ),
                    "timeout_seconds": Field(
                        IntSource, is_required=False, default_value=PoolSettings.timeout_seconds
                    ),
                },
                is_required=False,
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresStorage:
        return cls(
            postgres_url=config_value["postgres_url"],
            pool=PoolSettings.from_config(config_value.get("pool")),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
            synchronous_commit=config_value.get("synchronous_commit", SYNCHRONOUS_COMMIT),
        )

    # Something that rebuilds one storage alone gets it through this whole class (the way Dagster's
    # `instance_ref` does for a custom storage), so it is pooled too.
    def _legacy(self, class_name: str) -> ConfigurableClassData | None:
        data = self.inst_data
        if data is None:
            return None
        wrapped = {"module_name": data.module_name, "class_name": data.class_name, "config_yaml": data.config_yaml}
        return ConfigurableClassData("dagster._core.storage.legacy_storage", class_name, yaml.safe_dump(wrapped))

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        return self._legacy("LegacyEventLogStorage")

    @property
    def run_storage_data(self) -> ConfigurableClassData | None:
        return self._legacy("LegacyRunStorage")

    @property
    def schedule_storage_data(self) -> ConfigurableClassData | None:
        return self._legacy("LegacyScheduleStorage")

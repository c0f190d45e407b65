"""The embedded default: the warehouse in a DuckDB file, `<home>/warehouse.duckdb`, the export claims in one of their
own, `<home>/warehouse-claims.duckdb`, and the raw payloads in a SQLite file, `<home>/warehouse-raw.sqlite`
(`raw_file` says why).

DuckDB allows one writing process at a time, so connections are short-lived and opening one waits, bounded, while
another process holds the file (`_ProcessTurn`). A run computes in a workspace of its own in memory (normalising,
pricing, governing, rendering) and opens the file only to store what it fetched and to save what it computed, a
bulk write each: other runs wait for those, never for its work. Claims are in a file of their own, so a claim, a
renewal or a release takes milliseconds whatever the other runs are writing (issue 33: a renewal had waited 10 s
behind another run's normalise, and the second of two runs normalised in 36 s what the first did in 15).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from telemetry_pipeline.canonical.model import DEVIATIONS, EVENTS, SESSIONS, Table
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.replace import duckdb_transaction, replace_rows
from telemetry_pipeline.warehouse import engine, migrations, schema
from telemetry_pipeline.warehouse.base import (
    DEFAULT_LEASE_SECONDS,
    Claim,
    HolderCheck,
    Warehouse,
    WarehouseBusy,
    WarehouseError,
    lease_decides,
    standing,
)
from telemetry_pipeline.warehouse.raw_file import RawFile, sqlite_row
from telemetry_pipeline.warehouse.schema import RAW_TELEMETRY

_MIGRATE_LOCK = threading.Lock()  # two first connections of one process would conflict on CREATE
_CLAIMS_LOCK = threading.Lock()  # claims of one process's connections never interleave (see `claim`)
_TURNS_LOCK = threading.Lock()


def migrate(con: duckdb.DuckDBPyConnection, raw: RawFile | None = None) -> None:
    """Apply the missing migrations in one transaction. Other processes wait on the file lock; other
    connections of this process on `_MIGRATE_LOCK`. Before migration 6 drops the file's payloads, they are
    copied to `raw` (again, should a crash have cut the last attempt: the copy replaces by key)."""
    with _MIGRATE_LOCK, duckdb_transaction(con):
        con.execute(migrations.SCHEMA_VERSION_DDL)
        applied = {v for (v,) in con.execute("SELECT version FROM schema_version").fetchall()}
        for migration in migrations.pending(applied):
            if migration.version == _RAW_MOVED and raw is not None:
                _move_raw(con, raw)
            for statement in migration.statements["duckdb"]:
                con.execute(statement)
            con.execute("INSERT INTO schema_version VALUES (?, ?, now())", [migration.version, migration.description])


_NOW = "coalesce($now::TIMESTAMPTZ, now())"  # `Warehouse.clock`'s time, else the database's
_RAW_MOVED = 6  # the migration after which the payloads live in the SQLite file


def _move_raw(con: duckdb.DuckDBPyConnection, raw: RawFile) -> None:
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'raw_telemetry'").fetchone()
    if not exists or not exists[0]:
        return
    cursor = con.execute(f"SELECT {RAW_TELEMETRY.column_list()} FROM raw_telemetry")
    raw.store_rows([sqlite_row(row) for row in part] for part in iter(lambda: cursor.fetchmany(64), []))


def create_canonical(con: duckdb.DuckDBPyConnection) -> None:
    """The canonical tables in a DuckDB database (an in-run workspace)."""
    for table in schema.CANONICAL:
        con.execute(table.ddl("duckdb"))


class _ProcessTurn:
    """Our processes take turns on a DuckDB file through an flock on `<file>.lock`, held while any connection of
    this process to the file is open (connections nest: a renewal inside a stage). A process waiting for its turn
    gets it within milliseconds of the holder's last close; retrying DuckDB's own lock with back-off came up to
    2 s late and serialised concurrent runs again (issue 17). Processes that are not ours (a DuckDB shell) still
    meet DuckDB's own lock, which `_open` waits out."""

    _POLL_S = 0.002

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._mutex = threading.Lock()
        self._users = 0
        self._fd: int | None = None

    @staticmethod
    def on(path: Path) -> _ProcessTurn:
        with _TURNS_LOCK:
            return _TURNS.setdefault(path.resolve(), _ProcessTurn(path.resolve()))

    @contextlib.contextmanager
    def taken(self, wait: float) -> Iterator[None]:
        deadline = time.monotonic() + wait
        if not self._mutex.acquire(timeout=max(wait, 0.0)):
            raise WarehouseBusy(f"{self.path} stayed in use for {wait:.0f}s")
        try:
            if self._users == 0:
                self._fd = self._acquire(deadline, wait)
            self._users += 1
        finally:
            self._mutex.release()
        try:
            yield
        finally:
            with self._mutex:
                self._users -= 1
                if self._users == 0 and self._fd is not None:
                    os.close(self._fd)  # releases the flock
                    self._fd = None

    def _acquire(self, deadline: float, wait: float) -> int:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise WarehouseBusy(
                        f"{self.path} stayed locked by another process for {wait:.0f}s"
                    ) from None
                time.sleep(self._POLL_S)


_TURNS: dict[Path, _ProcessTurn] = {}  # one per file, per process


def _rows(con: duckdb.DuckDBPyConnection, table: Table, keys: Sequence[str]) -> pa.Table:
    """The rows of `table` of the sessions `keys`, as Arrow (to move between a workspace and the file)."""
    query = f"SELECT {table.column_list()} FROM {table.name} WHERE session_key IN (SELECT unnest($keys::VARCHAR[]))"
    return con.sql(query, params={"keys": list(keys)}).to_arrow_table()


class DuckDBWarehouse(Warehouse):
    def __init__(self, path: Path, lock_wait: float = 300.0, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 memory_limit: str | None = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.path = Path(path)
        self.claims_path = self.path.with_name(f"{self.path.stem}-claims{self.path.suffix}")
        self.raw = RawFile(self.path.with_name(f"{self.path.stem}-raw.sqlite"), lock_wait)
        self.lock_wait = lock_wait
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.memory_limit = memory_limit  # of each connection's DuckDB, which spills to `<file>.spill/` beyond it
        self._ready = False
        self._claims_ready = False

    def describe(self) -> str:
        return f"DuckDB file {self.path}"

    def probe(self) -> tuple[bool, str]:
        try:
            with self.connect(lock_wait=5.0) as con:
                (version,) = con.execute("SELECT max(version) FROM schema_version").fetchone() or (None,)
        except WarehouseBusy:
            return True, f"{self.describe()}: in use by another process"
        except (duckdb.Error, OSError, WarehouseError) as exc:
            return False, f"{self.describe()}: {exc}"
        return True, f"{self.describe()}, schema version {version}"

    @contextlib.contextmanager
    def connect(self, lock_wait: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the warehouse file for one unit of work, in UTC, with the schema migrated."""
        with self._file(self.path, lock_wait) as con:
            if not self._ready:
                migrate(con, self.raw)
                self._ready = True
            yield con

    @contextlib.contextmanager
    def _claims(self, lock_wait: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the claims file; the table is made when missing (claims live as long as their runs)."""
        with self._file(self.claims_path, lock_wait) as con:
            if not self._claims_ready:
                con.execute(schema.EXPORT_CLAIMS.ddl("duckdb"))
                self._claims_ready = True
            yield con

    @contextlib.contextmanager
    def _file(self, path: Path, lock_wait: float | None) -> Iterator[duckdb.DuckDBPyConnection]:
        wait = self.lock_wait if lock_wait is None else lock_wait
        deadline = time.monotonic() + wait
        with _ProcessTurn.on(path).taken(wait):
            con = self._open(path, max(0.0, deadline - time.monotonic()))  # the turn's wait counts against the bound
            try:
                yield con
            finally:
                con.close()

    def _open(self, path: Path, lock_wait: float) -> duckdb.DuckDBPyConnection:
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + lock_wait
        wait = 0.05
        while True:
            try:
                return engine.connect(path, memory_limit=self.memory_limit, spill=self._spill())
            except duckdb.IOException as exc:
                # The only IOException worth waiting out is another process's lock on the file.
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise WarehouseBusy(f"{path} stayed locked by another process for {lock_wait:.0f}s") from None
                time.sleep(wait)
                wait = min(wait * 2, 2.0)

    def _spill(self) -> Path | None:
        return self.path.with_name(self.path.name + ".spill") if self.memory_limit else None

    def store_raw(self, raw: Sequence[RawSession]) -> None:
        if not raw:
            return
        if not self._ready:  # migrated first: an older payload moved from the DuckDB file never replaces this one
            with self.connect():
                pass
        self.raw.store(raw)

    @contextlib.contextmanager
    def workspace(self, keys: Sequence[str] = ()) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB database in memory for this batch alone (with the file's rows of `keys`): the work happens
        here, with the file closed to nobody."""
        with contextlib.closing(engine.connect(memory_limit=self.memory_limit, spill=self._spill())) as con:
            create_canonical(con)
            if keys:
                with self.connect() as file:
                    stored = {table: _rows(file, table, keys) for table in schema.CANONICAL}
                for table, rows in stored.items():
                    con.register("stored_rows", rows)
                    con.execute(f"INSERT INTO {table.name} ({table.column_list()}) SELECT * FROM stored_rows")
                    con.unregister("stored_rows")
            yield con

    def recent(self, since: dt.datetime) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        return self.connect()  # the file holds every session; readers filter by `normalized_at`

    def save_canonical(self, con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> None:
        """The workspace's rows of `keys` replace the file's, in one short transaction."""
        if not keys:
            return
        keys = list(keys)
        rows = {table: _rows(con, table, keys) for table in schema.CANONICAL}
        with self.connect() as file:
            for table, arrow in rows.items():
                file.register(f"saved_{table.name}", arrow)

            def insert(cur: duckdb.DuckDBPyConnection) -> None:
                for table in rows:
                    cur.execute(f"INSERT INTO {table.name} ({table.column_list()}) "
                                f"SELECT * FROM saved_{table.name}")

            replace_rows(duckdb_transaction(file), (DEVIATIONS, EVENTS, SESSIONS), keys, insert)

    def claim(
        self, keys: Sequence[str], run_id: str, check: HolderCheck = lease_decides
    ) -> tuple[list[str], dict[str, str]]:
        """One transaction; claims never interleave: DuckDB's file lock lets one process in at a time, and
        within a process `_CLAIMS_LOCK` does the same for its connections."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return [], {}
        with _CLAIMS_LOCK, self._claims() as con, duckdb_transaction(con):
            held, _, _ = standing(
                con.execute(
                    f"SELECT session_key, run_id, lease_until > {_NOW} FROM export_claims WHERE session_key IN "
                    "(SELECT unnest($keys::VARCHAR[])) AND run_id <> $run",
                    {"keys": keys, "run": run_id, "now": self._now()},
                ).fetchall(),
                check,
            )
            claimed = [k for k in keys if k not in held]
            con.execute(
                "INSERT OR REPLACE INTO export_claims "
                f"SELECT unnest($keys::VARCHAR[]), $run, {_NOW}, {_NOW} + to_microseconds($lease)",
                {"keys": claimed, "run": run_id, "lease": self._lease_us(), "now": self._now()},
            )
        return claimed, held

    def holders(self, keys: Sequence[str]) -> dict[str, Claim]:
        if not keys:
            return {}
        with _CLAIMS_LOCK, self._claims() as con:
            rows = con.execute(
                "SELECT session_key, run_id, lease_until FROM export_claims "
                "WHERE session_key IN (SELECT unnest($keys::VARCHAR[]))",
                {"keys": list(keys)},
            ).fetchall()
        return {key: Claim(run, until) for key, run, until in rows}

    def renew(self, keys: Sequence[str], run_id: str) -> list[str]:
        if not keys:
            return []
        # Bounded by the lease: a renewal stuck behind another process's lock would be too late anyway.
        with _CLAIMS_LOCK, self._claims(lock_wait=self.lease_seconds / 3) as con:
            rows = con.execute(
                f"UPDATE export_claims SET lease_until = {_NOW} + to_microseconds($lease) "
                "WHERE run_id = $run AND session_key IN (SELECT unnest($keys::VARCHAR[])) RETURNING session_key",
                {"keys": list(keys), "run": run_id, "lease": self._lease_us(), "now": self._now()},
            ).fetchall()
        still = {k for (k,) in rows}
        return [k for k in keys if k in still]

    def release(self, keys: Sequence[str], run_id: str) -> None:
        if not keys:
            return
        with _CLAIMS_LOCK, self._claims() as con:
            con.execute(
                "DELETE FROM export_claims WHERE run_id = $run AND session_key IN (SELECT unnest($keys::VARCHAR[]))",
                {"keys": list(keys), "run": run_id},
            )

    def archive_exports(self, records: Sequence[schema.ExportRecord]) -> None:
        rows = schema.newest_records(records)
        if not rows:
            return
        table = schema.EXPORT_ARCHIVE
        with self.connect() as con:
            con.register("incoming_archive", table.to_arrow(rows))
            con.execute(
                f"INSERT INTO {table.name} ({table.column_list()}) SELECT {table.column_list()} FROM incoming_archive "
                + schema.ARCHIVE_KEEP_NEWEST
            )

    def archived_exports(self, keys: Sequence[str]) -> dict[str, schema.ExportRecord]:
        if not keys:
            return {}
        table = schema.EXPORT_ARCHIVE
        with self.connect() as con:
            rows = con.execute(
                f"SELECT {table.column_list()} FROM {table.name} "
                "WHERE session_key IN (SELECT unnest($keys::VARCHAR[]))",
                {"keys": list(keys)},
            ).fetchall()
        return {row[0]: schema.ExportRecord(*row) for row in rows}

    def seen_names(self) -> dict[str, set[str]]:
        with self.connect() as con:
            return schema.seen_names(con.execute(schema.SEEN_NAMES_SQL).fetchall())

    def prune_raw(self, exported: Sequence[str], before: dt.datetime) -> int:
        with self.connect() as con:
            archived = [k for (k,) in con.execute(
                "SELECT session_key FROM export_archive WHERE exported_at < $before", {"before": before}
            ).fetchall()]
        return self.raw.prune([*exported, *archived], before)

    def _lease_us(self) -> int:
        return round(self.lease_seconds * 1_000_000)

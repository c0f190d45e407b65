"""The warehouse in PostgreSQL (`WAREHOUSE_URL`): for runs that Dagster may launch on any host.

A run computes in an in-memory DuckDB database (its workspace) and writes each stage's results here in bulk:
one transaction per stage, the rows streamed with `COPY ... FROM STDIN` (CSV written by Arrow from the
DuckDB result), never a statement per row. Claims are rows locked by an `INSERT ... ON CONFLICT DO UPDATE
... WHERE` that only overwrites a stale claim, so two hosts claiming at once never both get a key.

Every call opens its own short connection: a run holds no connection across stages, and a PostgreSQL that
restarted between two stages is simply reconnected to; one that is down fails the stage with
`WarehouseUnavailable`, naming the server (never the password).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import duckdb
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pyarrow.csv as pacsv

from telemetry_pipeline.canonical.model import DEVIATIONS, EVENTS, SESSIONS, Table
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.replace import replace_rows
from telemetry_pipeline.warehouse import engine, migrations, schema
from telemetry_pipeline.warehouse.base import (
    DEFAULT_LEASE_SECONDS,
    Claim,
    HolderCheck,
    Warehouse,
    WarehouseError,
    WarehouseUnavailable,
    lease_decides,
    standing,
)
from telemetry_pipeline.warehouse.duckdb_store import create_canonical
from telemetry_pipeline.warehouse.schema import raw_table

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key for migrations: the same on every host, unlikely to collide with anyone else's.
_MIGRATION_LOCK = 0x7465_6C65_6D65_7472  # "telemetr"
_NOW = "coalesce(%(now)s::timestamptz, now())"  # `Warehouse.clock`'s time, else the database's
_SPOOL_IN_MEMORY = 64 * 1024 * 1024  # CSV of one COPY kept in memory up to this, then on local disk


def libpq_url(url: str) -> str:
    """SQLAlchemy's `postgresql+psycopg2://` spelling (used for the Dagster instance) also works here."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def is_postgres_url(url: str) -> bool:
    return url.partition("://")[0].split("+", 1)[0] in ("postgresql", "postgres")


def describe_url(url: str) -> str:
    """`PostgreSQL user@host:port/db`: what an operator needs to know which server, without the password."""
    try:
        dsn = psycopg2.extensions.parse_dsn(libpq_url(url))
    except psycopg2.ProgrammingError:
        return "PostgreSQL (unreadable WAREHOUSE_URL)"
    user = f"{dsn['user']}@" if dsn.get("user") else ""
    return f"PostgreSQL {user}{dsn.get('host', 'localhost')}:{dsn.get('port', 5432)}/{dsn.get('dbname', '')}"


def _text_for_postgres(expression: str) -> str:
    # PostgreSQL text cannot hold NUL; it becomes U+FFFD in the stored copy (the run renders from its
    # DuckDB workspace, so what Signavio receives keeps the NUL).
    return f"replace({expression}, chr(0), chr(65533))"


def export_select(table: Table, relation: str, where: str = "") -> str:
    """A DuckDB SELECT of `table`'s columns from `relation`, shaped for PostgreSQL's CSV COPY."""
    columns = []
    for c in table.columns:
        if c.kind == "bytes":
            columns.append(f"'\\x' || hex({c.name})")  # bytea hex input
        elif c.kind in ("text", "json"):
            columns.append(_text_for_postgres(f"{c.name}::VARCHAR"))
        else:
            columns.append(c.name)
    return f"SELECT {', '.join(columns)} FROM {relation} {where}"


def copy_rows(
    cur: psycopg2.extensions.cursor,
    table: Table,
    duck: duckdb.DuckDBPyConnection,
    select: str,
    params: dict[str, Any] | None = None,
    into: str | None = None,
) -> int:
    """Stream the result of the DuckDB `select` (columns in `table`'s order) into `into` (default: the
    table) with one COPY; returns the number of rows."""
    reader = duck.sql(select, params=params or {}).to_arrow_reader(100_000)
    rows = 0
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        with pacsv.CSVWriter(spool, reader.schema, write_options=pacsv.WriteOptions(include_header=False)) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        if not rows:
            return 0
        spool.seek(0)
        cur.copy_expert(
            f"COPY {into or table.name} ({table.column_list()}) FROM STDIN WITH (FORMAT csv)",
            spool,
            size=1 << 20,
        )
    return rows


class PostgresWarehouse(Warehouse):
    def __init__(self, url: str, lease_seconds: float = DEFAULT_LEASE_SECONDS, connect_timeout: float = 10.0,
                 memory_limit: str | None = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self._url = libpq_url(url)
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.memory_limit = memory_limit  # of the in-memory DuckDB a batch computes in (spills to the temp dir)
        self.connect_timeout = connect_timeout
        self._ready = False

    def describe(self) -> str:
        return describe_url(self._url)

    def probe(self) -> tuple[bool, str]:
        try:
            with self.transaction("checking") as cur:
                cur.execute("SELECT max(version) FROM schema_version")
                (version,) = cur.fetchone() or (None,)
        except (WarehouseError, psycopg2.Error) as exc:
            return False, str(exc)
        return True, f"{self.describe()}, schema version {version}"

    @contextlib.contextmanager
    def transaction(self, doing: str) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in one transaction (committed when the block ends, rolled back when it raises) on a
        fresh connection, with the schema migrated. A lost or refused connection is `WarehouseUnavailable`."""
        try:
            con = psycopg2.connect(
                self._url, connect_timeout=max(1, round(self.connect_timeout)), application_name="telemetry_pipeline"
            )
        except psycopg2.OperationalError as exc:
            # `from None`: the message carries the cause, and people (CLI, run failure) see this error, not libpq's.
            raise WarehouseUnavailable(f"{self.describe()} is unreachable ({doing}): {_first_line(exc)}") from None
        try:
            if not self._ready:
                self._migrate(con)
                self._ready = True
            with con, con.cursor() as cur:
                yield cur
        except psycopg2.errors.DeadlockDetected:
            raise  # rolled back; `claim` takes it again
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            raise WarehouseUnavailable(
                f"{self.describe()} failed while {doing}: {_first_line(exc)}; nothing of this stage was saved"
            ) from None
        finally:
            con.close()

    def _migrate(self, con: psycopg2.extensions.connection) -> None:
        """Apply the missing migrations in one transaction, under an advisory lock: hosts starting at once
        wait for each other, and the second finds nothing left to do."""
        with con, con.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
            cur.execute(migrations.SCHEMA_VERSION_DDL)
            cur.execute("SELECT version FROM schema_version")
            for migration in migrations.pending({v for (v,) in cur.fetchall()}):
                for statement in migration.statements["postgres"]:
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO schema_version VALUES (%s, %s, now())", [migration.version, migration.description]
                )
                log.info("warehouse %s: applied migration %d (%s)", self.describe(), migration.version,
                         migration.description)

    def store_raw(self, raw: Sequence[RawSession]) -> None:
        if not raw:
            return
        table = schema.RAW_TELEMETRY
        with engine.connect(memory_limit=self.memory_limit) as duck:

            def insert(cur: psycopg2.extensions.cursor) -> None:
                for part in schema.raw_parts(raw):  # a part at a time: the copies are of a part
                    duck.register("incoming_raw", raw_table(part))
                    copy_rows(cur, table, duck, export_select(table, "incoming_raw"))
                    duck.unregister("incoming_raw")

            replace_rows(self.transaction("storing raw payloads"), (table,), [r.key for r in raw], insert, "%s")

    @contextlib.contextmanager
    def workspace(self, keys: Sequence[str] = ()) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB database of this batch alone (with the stored rows of `keys`)."""
        with engine.connect(memory_limit=self.memory_limit) as con:
            create_canonical(con)
            if keys:
                self._copy_out(con, "session_key = ANY(%s)", [list(keys)])
            yield con

    @contextlib.contextmanager
    def recent(self, since: dt.datetime) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB database holding the sessions normalised since `since` and their rows."""
        with self.workspace() as con:
            self._copy_out(con, "session_key IN (SELECT session_key FROM sessions WHERE normalized_at >= %s)", [since])
            yield con

    def _copy_out(self, con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> None:
        """The canonical rows `where` selects into `con`, with one `COPY ... TO STDOUT` per table (CSV, typed again
        by DuckDB's insert)."""
        with tempfile.TemporaryDirectory(prefix="canonical-") as tmp, self.transaction("reading sessions") as cur:
            for table in schema.CANONICAL:
                path = f"{tmp}/{table.name}.csv"
                query = cur.mogrify(f"SELECT {table.column_list()} FROM {table.name} WHERE {where}", params)
                with open(path, "wb") as out:
                    cur.copy_expert(f"COPY ({query.decode()}) TO STDOUT WITH (FORMAT csv, HEADER)", out)
                con.execute(
                    f"INSERT INTO {table.name} ({table.column_list()}) "
                    "SELECT * FROM read_csv($path, header = true, all_varchar = true)",
                    {"path": path},
                )

    def save_canonical(self, con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> None:
        if not keys:
            return
        keys = list(keys)
        where = "WHERE session_key IN (SELECT unnest($keys::VARCHAR[]))"

        def insert(cur: psycopg2.extensions.cursor) -> None:
            for table in schema.CANONICAL:
                copy_rows(cur, table, con, export_select(table, table.name, where), {"keys": keys})

        replace_rows(self.transaction("saving the canonical model"), (DEVIATIONS, EVENTS, SESSIONS), keys, insert, "%s")

    def claim(
        self, keys: Sequence[str], run_id: str, check: HolderCheck = lease_decides
    ) -> tuple[list[str], dict[str, str]]:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return [], {}
        for attempt in range(3):
            try:
                return self._claim(keys, run_id, check)
            except psycopg2.errors.DeadlockDetected:
                # Two runs claiming overlapping keys lock them in the same (sorted) order, so a deadlock
                # is not expected; if PostgreSQL reports one anyway, the claim is simply taken again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _claim(self, keys: list[str], run_id: str, check: HolderCheck) -> tuple[list[str], dict[str, str]]:
        with self.transaction("claiming sessions") as cur:
            cur.execute(
                f"SELECT session_key, run_id, lease_until > {_NOW} FROM export_claims "
                "WHERE session_key = ANY(%(keys)s) AND run_id <> %(run)s",
                {"keys": keys, "run": run_id, "now": self._now()},
            )
            _, alive, dead = standing(cur.fetchall(), check)
            # A conflicting claim is overwritten only when it is ours or stale (judged again here, on the
            # locked row: a claim made since the read above is judged by its lease); either way the row is
            # locked until we commit, so the holders read below are the ones that kept their claim.
            cur.execute(
                "INSERT INTO export_claims (session_key, run_id, claimed_at, lease_until) "
                f"SELECT k, %(run)s, {_NOW}, {_NOW} + make_interval(secs => %(lease)s) "
                "FROM unnest(%(keys)s::text[]) AS k ORDER BY k "
                "ON CONFLICT (session_key) DO UPDATE SET run_id = EXCLUDED.run_id, "
                "claimed_at = CASE WHEN export_claims.run_id = EXCLUDED.run_id THEN export_claims.claimed_at "
                "ELSE EXCLUDED.claimed_at END, lease_until = EXCLUDED.lease_until "
                "WHERE export_claims.run_id = EXCLUDED.run_id OR export_claims.run_id = ANY(%(dead)s) "
                f"OR (export_claims.lease_until <= {_NOW} AND NOT export_claims.run_id = ANY(%(alive)s)) "
                "RETURNING session_key",
                {"keys": keys, "run": run_id, "lease": self.lease_seconds, "dead": dead, "alive": alive,
                 "now": self._now()},
            )
            got = {k for (k,) in cur.fetchall()}
            cur.execute(
                "SELECT session_key, run_id FROM export_claims WHERE session_key = ANY(%s)",
                [[k for k in keys if k not in got]],
            )
            held = dict(cur.fetchall())
        return [k for k in keys if k in got], {k: held[k] for k in keys if k in held}

    def holders(self, keys: Sequence[str]) -> dict[str, Claim]:
        if not keys:
            return {}
        with self.transaction("reading claims") as cur:
            cur.execute(
                "SELECT session_key, run_id, lease_until FROM export_claims WHERE session_key = ANY(%s)", [list(keys)]
            )
            return {key: Claim(run, until) for key, run, until in cur.fetchall()}

    def renew(self, keys: Sequence[str], run_id: str) -> list[str]:
        if not keys:
            return []
        with self.transaction("renewing claims") as cur:
            cur.execute(
                f"UPDATE export_claims SET lease_until = {_NOW} + make_interval(secs => %(lease)s) "
                "WHERE run_id = %(run)s AND session_key = ANY(%(keys)s) RETURNING session_key",
                {"lease": self.lease_seconds, "run": run_id, "keys": list(keys), "now": self._now()},
            )
            still = {k for (k,) in cur.fetchall()}
        return [k for k in keys if k in still]

    def release(self, keys: Sequence[str], run_id: str) -> None:
        if not keys:
            return
        with self.transaction("releasing claims") as cur:
            cur.execute("DELETE FROM export_claims WHERE run_id = %s AND session_key = ANY(%s)", [run_id, list(keys)])

    def archive_exports(self, records: Sequence[schema.ExportRecord]) -> None:
        rows = schema.newest_records(records)
        if not rows:
            return
        table = schema.EXPORT_ARCHIVE
        with self.transaction("archiving export records") as cur:
            psycopg2.extras.execute_values(
                cur,
                f"INSERT INTO {table.name} ({table.column_list()}) VALUES %s " + schema.ARCHIVE_KEEP_NEWEST,
                [tuple(getattr(r, c) for c in table.names) for r in rows],
                page_size=1000,
            )

    def archived_exports(self, keys: Sequence[str]) -> dict[str, schema.ExportRecord]:
        if not keys:
            return {}
        table = schema.EXPORT_ARCHIVE
        with self.transaction("reading archived export records") as cur:
            cur.execute(f"SELECT {table.column_list()} FROM {table.name} WHERE session_key = ANY(%s)", [list(keys)])
            rows = cur.fetchall()
        return {row[0]: schema.ExportRecord(*row) for row in rows}

    def seen_names(self) -> dict[str, set[str]]:
        with self.transaction("reading the names events hold") as cur:
            cur.execute(schema.SEEN_NAMES_SQL)
            return schema.seen_names(cur.fetchall())

    def prune_raw(self, exported: Sequence[str], before: dt.datetime) -> int:
        with self.transaction("pruning raw payloads") as cur:
            cur.execute(
                "DELETE FROM raw_telemetry WHERE fetched_at < %(before)s AND (session_key = ANY(%(keys)s) OR "
                "session_key IN (SELECT session_key FROM export_archive WHERE exported_at < %(before)s))",
                {"keys": list(exported), "before": before},
            )
            return int(cur.rowcount)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

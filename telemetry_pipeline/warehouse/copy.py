"""Move an existing DuckDB home into a PostgreSQL warehouse: `telemetry-pipeline warehouse copy`.

Idempotent and safe to interrupt: what PostgreSQL already holds is never overwritten (it is the newer truth
once runs write there), and the rest is copied in chunks of sessions, each chunk one transaction: a session's
raw payload in one, its canonical row together with all of its events in another. Run it again and it copies
only what is still missing. The export archive is copied whole (a session keeps its newest record). Claims are
not copied: they are leases of runs that are over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from telemetry_pipeline.canonical.model import Table
from telemetry_pipeline.warehouse import schema
from telemetry_pipeline.warehouse.duckdb_store import DuckDBWarehouse
from telemetry_pipeline.warehouse.postgres_store import PostgresWarehouse, copy_rows, export_select

CHUNK_SESSIONS = 1000


@dataclass
class CopyReport:
    copied: dict[str, int] = field(default_factory=dict)  # table -> rows inserted
    already_there: dict[str, int] = field(default_factory=dict)  # table -> sessions PostgreSQL had


def copy_duckdb_to_postgres(path: Path, target: PostgresWarehouse, chunk: int = CHUNK_SESSIONS) -> CopyReport:
    if not path.is_file():
        raise FileNotFoundError(f"no DuckDB warehouse at {path}")
    report = CopyReport(copied={t.name: 0 for t in (schema.RAW_TELEMETRY, *schema.CANONICAL)})
    home = DuckDBWarehouse(path)
    with home.connect():  # migrated first: its payloads are in the SQLite file beside it (`raw_file`)
        pass
    # Read-only: a run still writing the file makes this wait for nothing and fail clearly instead.
    with duckdb.connect(str(path), read_only=True) as duck:
        duck.execute("SET TimeZone = 'UTC'")
        raw = schema.RAW_TELEMETRY
        for table, parts, keys in (
            (raw, (raw,), home.raw.keys()),
            (schema.SESSIONS, schema.CANONICAL,
             [k for (k,) in duck.execute("SELECT session_key FROM sessions ORDER BY 1").fetchall()]),
        ):
            present = _present(target, table, keys)
            report.already_there[table.name] = len(present)
            missing = [k for k in keys if k not in present]
            for start in range(0, len(missing), chunk):
                some = missing[start : start + chunk]
                if table is raw:  # a chunk's payloads at a time, staged under the table's name
                    duck.register(raw.name, raw.to_arrow(home.raw.read(some)))
                for name, rows in _copy_chunk(duck, target, parts, some).items():
                    report.copied[name] += rows
        report.copied[schema.EXPORT_ARCHIVE.name] = _copy_archive(duck, target)
    return report


def _copy_archive(duck: duckdb.DuckDBPyConnection, target: PostgresWarehouse) -> int:
    """The export records retention archived (a file from before the archive has none); newest record wins."""
    table = schema.EXPORT_ARCHIVE
    exists = duck.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table.name])
    if not (exists.fetchone() or (0,))[0]:
        return 0
    found = duck.execute(f"SELECT {table.column_list()} FROM {table.name}").fetchall()
    rows = [schema.ExportRecord(*row) for row in found]
    there = target.archived_exports([r.session_key for r in rows])
    newer = [r for r in rows if r.session_key not in there or r.exported_at > there[r.session_key].exported_at]
    target.archive_exports(newer)
    return len(newer)


def _present(target: PostgresWarehouse, table: Table, keys: list[str]) -> set[str]:
    with target.transaction(f"reading {table.name}") as cur:
        cur.execute(f"SELECT session_key FROM {table.name} WHERE session_key = ANY(%s)", [keys])
        return {k for (k,) in cur.fetchall()}


def _copy_chunk(
    duck: duckdb.DuckDBPyConnection, target: PostgresWarehouse, tables: Sequence[Table], keys: list[str]
) -> dict[str, int]:
    """One transaction: the rows of `keys` in `tables` (events before their session), staged and inserted
    with ON CONFLICT DO NOTHING, so a row a run wrote meanwhile is kept, not overwritten or duplicated."""
    duck.register("copy_keys", pa.table({"session_key": keys}))
    copied: dict[str, int] = {}
    try:
        with target.transaction("copying the DuckDB warehouse") as cur:
            for table in sorted(tables, key=lambda t: t is schema.SESSIONS):
                staging = f"copy_{table.name}"
                cur.execute(f"CREATE TEMP TABLE {staging} (LIKE {table.name}) ON COMMIT DROP")
                where = "WHERE session_key IN (SELECT session_key FROM copy_keys)"
                copy_rows(cur, table, duck, export_select(table, table.name, where), into=staging)
                columns = table.column_list()
                cur.execute(
                    f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {staging} "
                    f"ON CONFLICT ({table.primary_key}) DO NOTHING"
                )
                copied[table.name] = cur.rowcount
    finally:
        duck.unregister("copy_keys")
    return copied

"""The warehouse's tables and the ordered migrations that build them in either store.

The canonical tables (`sessions`, `events`) are declared once in `canonical.model`; the warehouse's own tables
(`raw_telemetry`, `export_claims`, `export_archive`) are declared here the same way, as row types that give their
DDL for DuckDB (the embedded file and the in-run workspace) and PostgreSQL (`WAREHOUSE_URL`). A store records the
migrations it has applied in `schema_version` and applies the missing ones in order, under a lock (the DuckDB file
lock, a PostgreSQL advisory lock), so several processes or hosts opening it at once migrate it exactly once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from telemetry_pipeline.canonical.model import EVENTS, SESSIONS, Dialect, Table
from telemetry_pipeline.sources.base import RawSession
from telemetry_pipeline.warehouse.base import WarehouseError

_KEY = {"primary_key": True}


@dataclass
class RawRow:
    """A session's payload as the source served it, stored before any parsing."""

    session_key: str = field(metadata=_KEY)
    source: str
    session_id: str
    body: bytes = field(metadata={"doc": "verbatim, whatever it holds"})
    content_type: str | None
    byte_size: int
    sha256: str
    location: str | None
    fetched_at: dt.datetime


@dataclass
class ClaimRow:
    """A session a run is exporting right now (deleted when the run is done with it). A lease: the run extends
    `lease_until` while it is alive; a claim whose lease ran out, or whose run is over, is stale. Times are the
    database's clock, the one clock every host shares."""

    session_key: str = field(metadata=_KEY)
    run_id: str
    claimed_at: dt.datetime
    lease_until: dt.datetime


@dataclass(frozen=True)
class ExportRecord:
    """A session's latest confirmed export, as `status` reports it. Dagster's materialisation of
    `signavio_export` is the record while the run that wrote it exists; retention deletes old export runs
    (their events are what the UI's status rebuild reads) and keeps their records here, in `export_archive`."""

    session_key: str = field(metadata=_KEY)
    exported_at: dt.datetime
    execution_id: str | None
    ingestion_status: str | None
    run_id: str = field(metadata={"doc": "the Dagster run that exported it (deleted once archived here)"})


RAW_TELEMETRY = Table.of("raw_telemetry", RawRow)
EXPORT_CLAIMS = Table.of("export_claims", ClaimRow)
EXPORT_ARCHIVE = Table.of("export_archive", ExportRecord)
CANONICAL = (SESSIONS, EVENTS)


# The upsert both stores use: a session keeps its newest record, whichever order records arrive in.
ARCHIVE_KEEP_NEWEST = (
    f"ON CONFLICT ({EXPORT_ARCHIVE.primary_key}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in EXPORT_ARCHIVE.names if c != EXPORT_ARCHIVE.primary_key)
    + f" WHERE excluded.exported_at > {EXPORT_ARCHIVE.name}.exported_at"
)


def newest_records(records: Sequence[ExportRecord]) -> list[ExportRecord]:
    """One record per session, its newest, in key order (an upsert takes each key once)."""
    newest: dict[str, ExportRecord] = {}
    for r in records:
        if r.session_key not in newest or r.exported_at > newest[r.session_key].exported_at:
            newest[r.session_key] = r
    return [newest[k] for k in sorted(newest)]


def raw_table(raw: Sequence[RawSession]) -> pa.Table:
    """The payloads as they are stored: verbatim body, its size and digest."""
    return RAW_TELEMETRY.to_arrow([
        RawRow(r.key, r.source, r.session_id, r.body, r.content_type, len(r.body), hashlib.sha256(r.body).hexdigest(),
               r.location, r.fetched_at)
        for r in raw
    ])


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: dict[Dialect, tuple[str, ...]]


def _create(*tables: Table) -> dict[Dialect, tuple[str, ...]]:
    return {"duckdb": tuple(t.ddl("duckdb") for t in tables), "postgres": tuple(t.ddl("postgres") for t in tables)}


_V1 = _create(RAW_TELEMETRY, SESSIONS, EVENTS)
_V2 = _create(EXPORT_CLAIMS)
_V3 = _create(EXPORT_ARCHIVE)

MIGRATIONS: tuple[Migration, ...] = (
    # IF NOT EXISTS: a DuckDB file from before versioning already holds these tables and keeps them.
    Migration(1, "raw payloads and the canonical model", {
        "duckdb": _V1["duckdb"],
        # Each batch replaces its sessions' events: find them without scanning every event.
        "postgres": (*_V1["postgres"], "CREATE INDEX IF NOT EXISTS events_session_key ON events (session_key)"),
    }),
    # Claims were judged by host and process id before; now they are leases. Claims are transient (a run
    # holds them for minutes), so the old table is replaced rather than converted.
    Migration(2, "export claims as leases", {
        "duckdb": ("DROP TABLE IF EXISTS export_claims", *_V2["duckdb"]),
        "postgres": ("DROP TABLE IF EXISTS export_claims", *_V2["postgres"]),
    }),
    Migration(3, "the export archive: records of the export runs retention deleted", _V3),
)

LATEST_VERSION = MIGRATIONS[-1].version

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, description VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
)


def pending(applied: set[int]) -> list[Migration]:
    """The migrations still to apply, in order. A store migrated by newer code is refused: this code
    would not know what its tables mean."""
    newer = {v for v in applied if v > LATEST_VERSION}
    if newer:
        raise WarehouseError(
            f"the warehouse has schema version {max(newer)}, newer than this code knows ({LATEST_VERSION}): "
            "upgrade telemetry_pipeline"
        )
    return [m for m in MIGRATIONS if m.version not in applied]

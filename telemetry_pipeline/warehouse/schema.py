"""The warehouse's tables, as they are today.

The canonical tables (`sessions`, `events`) are declared once in `canonical.model`; the warehouse's own tables
(`raw_telemetry`, `export_claims`, `export_archive`) are declared here the same way, as row types that give their
DDL for DuckDB (the embedded file and the in-run workspace), their Arrow schemas and inserts. A store's tables are
built by the fixed migrations in `migrations.py`, never from these types: a change here needs a new migration
(test_warehouse.py compares the two on both stores).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from telemetry_pipeline.canonical.model import DEVIATIONS, EVENTS, SESSIONS, Table
from telemetry_pipeline.canonical.raw import RawSession

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
CANONICAL = (SESSIONS, EVENTS, DEVIATIONS)


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


RAW_PART_BYTES = 8 * 2**20


def raw_parts(raw: Sequence[RawSession], max_bytes: int = RAW_PART_BYTES) -> Iterator[list[RawSession]]:
    """`raw` in parts of about `max_bytes` of payload: a store writes a part at a time, so the copies an insert makes
    (an Arrow table, the database's own) are of a part, never of the whole batch."""
    part: list[RawSession] = []
    size = 0
    for r in raw:
        part.append(r)
        size += len(r.body)
        if size >= max_bytes:
            yield part
            part, size = [], 0
    if part:
        yield part


def raw_rows(raw: Sequence[RawSession]) -> list[RawRow]:
    """The payloads as they are stored: verbatim body, its size and digest."""
    return [RawRow(r.key, r.source, r.session_id, r.body, r.content_type, len(r.body),
                   hashlib.sha256(r.body).hexdigest(), r.location, r.fetched_at) for r in raw]


def raw_table(raw: Sequence[RawSession]) -> pa.Table:
    return RAW_TELEMETRY.to_arrow(raw_rows(raw))



# What `seen_names` reads, in SQL both stores run: each kind's distinct names.
SEEN_NAMES_SQL = " UNION ALL ".join(
    f"SELECT DISTINCT '{kind}', {column} FROM events WHERE {column} IS NOT NULL"
    for kind, column in (("activity", "activity"), ("tool", "tool_name"), ("model", "model"))
)


def seen_names(rows: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {"activity": set(), "tool": set(), "model": set()}
    for kind, name in rows:
        names[kind].add(name)
    return names

"""The warehouse's migrations: fixed, versioned text, one script per dialect, applied in order.

A store records the migrations it has applied in `schema_version` and applies the missing ones in order, under a
lock (the DuckDB file lock, a PostgreSQL advisory lock), so several processes or hosts opening it at once migrate
it exactly once. A migration is never edited once released: a database that applied it keeps what it created.
A change to a table's row type (`schema.py`, `canonical.model`) needs a new migration that brings the tables
there; test_warehouse.py checks that a database migrated from version 1 matches the row types, on both stores.
"""

from __future__ import annotations

from dataclasses import dataclass

from telemetry_pipeline.canonical.model import Dialect
from telemetry_pipeline.warehouse.base import WarehouseError


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: dict[Dialect, tuple[str, ...]]


# IF NOT EXISTS: a DuckDB file from before versioning already holds these tables and keeps them.
_V1_DUCKDB = (
    """CREATE TABLE IF NOT EXISTS raw_telemetry (
    session_key VARCHAR PRIMARY KEY,
    source VARCHAR NOT NULL,
    session_id VARCHAR NOT NULL,
    body BLOB NOT NULL,  -- verbatim, whatever it holds
    content_type VARCHAR,
    byte_size BIGINT NOT NULL,
    sha256 VARCHAR NOT NULL,
    location VARCHAR,
    fetched_at TIMESTAMPTZ NOT NULL
);
""",
    """CREATE TABLE IF NOT EXISTS sessions (
    session_key VARCHAR PRIMARY KEY,  -- <source>:<session_id>
    source VARCHAR NOT NULL,
    session_id VARCHAR NOT NULL,
    agent_name VARCHAR,
    task_description VARCHAR,
    start_time TIMESTAMPTZ,
    end_time TIMESTAMPTZ,
    status VARCHAR NOT NULL,  -- completed | partial | failed
    service_name VARCHAR,
    workflow_name VARCHAR,
    workflow_version VARCHAR,
    agent_type VARCHAR,
    agent_state VARCHAR,
    event_count BIGINT NOT NULL,
    prompt_metrics JSON,
    source_metrics JSON,  -- the source's own summary, kept as is
    normalized_at TIMESTAMPTZ NOT NULL
);
""",
    """CREATE TABLE IF NOT EXISTS events (
    event_id VARCHAR PRIMARY KEY,  -- deterministic: same event, same id, on every run
    session_key VARCHAR NOT NULL,
    seq BIGINT NOT NULL,  -- position of the (first) source event in the payload
    activity VARCHAR NOT NULL,
    event_type VARCHAR NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    end_time TIMESTAMPTZ,
    resource VARCHAR,
    status VARCHAR,
    tool_name VARCHAR,
    model VARCHAR,
    latency_ms BIGINT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    error VARCHAR,
    attributes JSON
);
""",
)
# The same tables as _V1_DUCKDB in PostgreSQL's types (TEXT, BYTEA): `duplicates` pairs the two scripts. Left
# as two texts on purpose: a released migration is fixed text, never generated, so what ran is what is read here.
_V1_POSTGRES = (
    """CREATE TABLE IF NOT EXISTS raw_telemetry (
    session_key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    session_id TEXT NOT NULL,
    body BYTEA NOT NULL,  -- verbatim, whatever it holds
    content_type TEXT,
    byte_size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    location TEXT,
    fetched_at TIMESTAMPTZ NOT NULL
);
""",
    """CREATE TABLE IF NOT EXISTS sessions (
    session_key TEXT PRIMARY KEY,  -- <source>:<session_id>
    source TEXT NOT NULL,
    session_id TEXT NOT NULL,
    agent_name TEXT,
    task_description TEXT,
    start_time TIMESTAMPTZ,
    end_time TIMESTAMPTZ,
    status TEXT NOT NULL,  -- completed | partial | failed
    service_name TEXT,
    workflow_name TEXT,
    workflow_version TEXT,
    agent_type TEXT,
    agent_state TEXT,
    event_count BIGINT NOT NULL,
    prompt_metrics JSON,
    source_metrics JSON,  -- the source's own summary, kept as is
    normalized_at TIMESTAMPTZ NOT NULL
);
""",
    """CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,  -- deterministic: same event, same id, on every run
    session_key TEXT NOT NULL,
    seq BIGINT NOT NULL,  -- position of the (first) source event in the payload
    activity TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_time TIMESTAMPTZ NOT NULL,
    end_time TIMESTAMPTZ,
    resource TEXT,
    status TEXT,
    tool_name TEXT,
    model TEXT,
    latency_ms BIGINT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    error TEXT,
    attributes JSON
);
""",
    # Each batch replaces its sessions' events: find them without scanning every event.
    "CREATE INDEX IF NOT EXISTS events_session_key ON events (session_key)",
)

# Claims were judged by host and process id before; now they are leases. Claims are transient (a run holds them
# for minutes), so the old table is replaced rather than converted.
_V2_DUCKDB = (
    "DROP TABLE IF EXISTS export_claims",
    """CREATE TABLE IF NOT EXISTS export_claims (
    session_key VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL
);
""",
)
_V2_POSTGRES = (
    "DROP TABLE IF EXISTS export_claims",
    """CREATE TABLE IF NOT EXISTS export_claims (
    session_key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL
);
""",
)

_V3_DUCKDB = (
    """CREATE TABLE IF NOT EXISTS export_archive (
    session_key VARCHAR PRIMARY KEY,
    exported_at TIMESTAMPTZ NOT NULL,
    execution_id VARCHAR,
    ingestion_status VARCHAR,
    run_id VARCHAR NOT NULL  -- the Dagster run that exported it (deleted once archived here)
);
""",
)
_V3_POSTGRES = (
    """CREATE TABLE IF NOT EXISTS export_archive (
    session_key TEXT PRIMARY KEY,
    exported_at TIMESTAMPTZ NOT NULL,
    execution_id TEXT,
    ingestion_status TEXT,
    run_id TEXT NOT NULL  -- the Dagster run that exported it (deleted once archived here)
);
""",
)

# What a model call cost, and the usage that prices it (the mining log, issue 30). Nullable: rows written before keep
# NULL there, and the next export of their session fills them.
_V4_DUCKDB = (
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS provider VARCHAR",
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS cache_read_tokens BIGINT",
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS cache_write_tokens BIGINT",
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS reasoning_tokens BIGINT",
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS cost_usd DOUBLE",
)
_V4_POSTGRES = (
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS provider TEXT",
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS cache_read_tokens BIGINT",
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS cache_write_tokens BIGINT",
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS reasoning_tokens BIGINT",
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS cost_usd DOUBLE PRECISION",
)

# Conformance to the playbooks (issue 31): the session's verdict, and the rules it broke.
_V5_DUCKDB = (
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS conformance VARCHAR",
    """CREATE TABLE IF NOT EXISTS deviations (
    deviation_id VARCHAR PRIMARY KEY,  -- deterministic: the session, playbook, rule, event and detail
    session_key VARCHAR NOT NULL,
    playbook VARCHAR NOT NULL,
    rule VARCHAR NOT NULL,
    detail VARCHAR NOT NULL,
    event_id VARCHAR  -- the event that broke it; NULL: the session did
);
""",
)
_V5_POSTGRES = (
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS conformance TEXT",
    """CREATE TABLE IF NOT EXISTS deviations (
    deviation_id TEXT PRIMARY KEY,  -- deterministic: the session, playbook, rule, event and detail
    session_key TEXT NOT NULL,
    playbook TEXT NOT NULL,
    rule TEXT NOT NULL,
    detail TEXT NOT NULL,
    event_id TEXT  -- the event that broke it; NULL: the session did
);
""",
    "CREATE INDEX IF NOT EXISTS deviations_session_key ON deviations (session_key)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "raw payloads and the canonical model", {"duckdb": _V1_DUCKDB, "postgres": _V1_POSTGRES}),
    Migration(2, "export claims as leases", {"duckdb": _V2_DUCKDB, "postgres": _V2_POSTGRES}),
    Migration(3, "the export archive: records of the export runs retention deleted",
              {"duckdb": _V3_DUCKDB, "postgres": _V3_POSTGRES}),
    Migration(4, "what a model call cost: provider, cache and reasoning tokens, cost in USD",
              {"duckdb": _V4_DUCKDB, "postgres": _V4_POSTGRES}),
    Migration(5, "conformance to the playbooks: each session's verdict and the rules it broke",
              {"duckdb": _V5_DUCKDB, "postgres": _V5_POSTGRES}),
    # A DuckDB warehouse keeps its claims in a file of their own (a claim never waits for a write) and its payloads
    # in a SQLite file (`raw_file`); `duckdb_store` copies the payloads there before this drops them.
    Migration(6, "export claims and raw payloads in files of their own (DuckDB)",
              {"duckdb": ("DROP TABLE IF EXISTS export_claims", "DROP TABLE IF EXISTS raw_telemetry"),
               "postgres": ()}),
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

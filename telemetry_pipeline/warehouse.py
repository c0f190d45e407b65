"""DuckDB: the raw payloads and the canonical model (`sessions`, `events`).
DuckDB allows one writing process at a time, so connections are short-lived (one per stage of a
batch) and opening one waits, bounded, while another run holds the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from telemetry_pipeline.sources.base import RawSession

log = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS raw_telemetry (
    session_key  VARCHAR PRIMARY KEY,
    source       VARCHAR NOT NULL,
    session_id   VARCHAR NOT NULL,
    body         BLOB NOT NULL,          -- verbatim, whatever it holds
    content_type VARCHAR,
    byte_size    BIGINT NOT NULL,
    sha256       VARCHAR NOT NULL,
    location     VARCHAR,
    fetched_at   TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_key      VARCHAR PRIMARY KEY,
    source           VARCHAR NOT NULL,
    session_id       VARCHAR NOT NULL,
    agent_name       VARCHAR,
    task_description VARCHAR,
    start_time       TIMESTAMPTZ,
    end_time         TIMESTAMPTZ,
    status           VARCHAR NOT NULL,
    service_name     VARCHAR,
    workflow_name    VARCHAR,
    workflow_version VARCHAR,
    agent_type       VARCHAR,
    agent_state      VARCHAR,
    event_count      BIGINT NOT NULL,
    prompt_metrics   JSON,
    source_metrics   JSON,               -- the source's own summary (Extract's `metrics`), kept as is
    normalized_at    TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    event_id      VARCHAR PRIMARY KEY,   -- deterministic: same event, same id, on every run
    session_key   VARCHAR NOT NULL,
    seq           BIGINT NOT NULL,       -- position of the (first) source event in the payload
    activity      VARCHAR NOT NULL,
    event_type    VARCHAR NOT NULL,
    event_time    TIMESTAMPTZ NOT NULL,
    end_time      TIMESTAMPTZ,
    resource      VARCHAR,
    status        VARCHAR,
    tool_name     VARCHAR,
    model         VARCHAR,
    latency_ms    BIGINT,
    input_tokens  BIGINT,
    output_tokens BIGINT,
    error         VARCHAR,
    attributes    JSON
);
"""

RAW_SCHEMA = pa.schema(
    [
        ("session_key", pa.string()),
        ("source", pa.string()),
        ("session_id", pa.string()),
        ("body", pa.binary()),
        ("content_type", pa.string()),
        ("byte_size", pa.int64()),
        ("sha256", pa.string()),
        ("location", pa.string()),
        ("fetched_at", pa.timestamp("us", tz="UTC")),
    ]
)


class WarehouseBusy(Exception):
    """Another process held the DuckDB file for longer than we were willing to wait."""


class Warehouse:
    def __init__(self, path: Path, lock_wait: float = 300.0) -> None:
        self.path = Path(path)
        self.lock_wait = lock_wait
        self._ready = False

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one unit of work, in UTC, with the tables in place."""
        con = self._open()
        try:
            con.execute("SET TimeZone = 'UTC'")
            if not self._ready:
                con.execute(DDL)
                self._ready = True
            yield con
        finally:
            con.close()

    def _open(self) -> duckdb.DuckDBPyConnection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_wait
        wait = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                # The only IOException worth waiting out is another process's lock on the file.
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise WarehouseBusy(f"{self.path} stayed locked by another process for {self.lock_wait:.0f}s") from None
                time.sleep(wait)
                wait = min(wait * 2, 2.0)

    def store_raw(self, raw: Sequence[RawSession]) -> None:
        """Keep payloads verbatim, replacing an earlier fetch of the same session."""
        if not raw:
            return
        table = pa.table(
            {
                "session_key": [r.key for r in raw],
                "source": [r.source for r in raw],
                "session_id": [r.session_id for r in raw],
                "body": [r.body for r in raw],
                "content_type": [r.content_type for r in raw],
                "byte_size": [len(r.body) for r in raw],
                "sha256": [hashlib.sha256(r.body).hexdigest() for r in raw],
                "location": [r.location for r in raw],
                "fetched_at": [r.fetched_at for r in raw],
            },
            schema=RAW_SCHEMA,
        )
        with self.connect() as con:
            con.register("incoming_raw", table)
            con.execute("INSERT OR REPLACE INTO raw_telemetry SELECT * FROM incoming_raw")

"""DuckDB: the raw payloads and the canonical model (`sessions`, `events`), and which run is
exporting which session (`export_claims`).
DuckDB allows one writing process at a time, so connections are short-lived (one per stage of a
batch) and opening one waits, bounded, while another run holds the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from telemetry_pipeline.canonical.model import ddl as canonical_ddl
from telemetry_pipeline.sources.base import RawSession

log = logging.getLogger(__name__)

DDL = (
    """
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
"""
    + canonical_ddl()
    + """
-- One row per session that a run is exporting right now; deleted when the run is done with it.
-- A row left behind by a run that died is stale once that run is over (see `Warehouse.claim`).
CREATE TABLE IF NOT EXISTS export_claims (
    session_key VARCHAR PRIMARY KEY,
    run_id      VARCHAR NOT NULL,
    claimed_at  TIMESTAMPTZ NOT NULL,
    host        VARCHAR NOT NULL,        -- where the claiming process runs ...
    pid         BIGINT NOT NULL          -- ... and which one, so a killed process's claims are seen as stale
);
"""
)

#: A claim older than this is stale even if its run still looks alive (a run record can say STARTED
#: for ever when its process was killed on another host). Far longer than any batch takes.
CLAIM_TTL_SECONDS = 3600.0

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


_DDL_LOCK = threading.Lock()
_CLAIMS_LOCK = threading.Lock()


def assume_live(run_id: str) -> bool:
    return True


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
                with _DDL_LOCK:  # two first connections of one process would conflict on CREATE
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
                    raise WarehouseBusy(
                        f"{self.path} stayed locked by another process for {self.lock_wait:.0f}s"
                    ) from None
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

    def claim(
        self,
        keys: Sequence[str],
        run_id: str,
        is_live: Callable[[str], bool] = assume_live,
        stale_after: float = CLAIM_TTL_SECONDS,
    ) -> tuple[list[str], dict[str, str]]:
        """Claim `keys` for `run_id` in one transaction -> (claimed keys, {key: run id holding it}).

        A key is taken when nobody claims it, when `run_id` itself does, or when the claim is stale:
        its process is gone (same host), `is_live(holder)` says the run is over, or it is older than
        `stale_after` seconds. Claims never interleave: DuckDB's file lock lets one process in at a
        time, and within a process `_CLAIMS_LOCK` does the same for its connections.
        """
        keys = list(dict.fromkeys(keys))
        if not keys:
            return [], {}
        here, me = socket.gethostname(), os.getpid()
        with _CLAIMS_LOCK, self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                rows = con.execute(
                    "SELECT session_key, run_id, host, pid, date_diff('millisecond', claimed_at, now()) / 1000.0 "
                    "FROM export_claims WHERE session_key IN (SELECT unnest($keys::VARCHAR[])) AND run_id <> $run",
                    {"keys": keys, "run": run_id},
                ).fetchall()
                alive: dict[tuple[str, str, int], bool] = {}
                held: dict[str, str] = {}
                for key, holder, host, pid, age in rows:
                    who = (holder, host, pid)
                    if who not in alive:
                        alive[who] = not (host == here and not _process_alive(pid)) and is_live(holder)
                    if alive[who] and age < stale_after:
                        held[key] = holder
                claimed = [k for k in keys if k not in held]
                con.execute(
                    "INSERT OR REPLACE INTO export_claims SELECT unnest($keys::VARCHAR[]), $run, now(), $host, $pid",
                    {"keys": claimed, "run": run_id, "host": here, "pid": me},
                )
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
        return claimed, held

    def release(self, keys: Sequence[str], run_id: str) -> None:
        """Drop `run_id`'s claims on `keys` (claims another run took over are left alone)."""
        if not keys:
            return
        with _CLAIMS_LOCK, self.connect() as con:
            con.execute(
                "DELETE FROM export_claims WHERE run_id = $run AND session_key IN (SELECT unnest($keys::VARCHAR[]))",
                {"keys": list(keys), "run": run_id},
            )


def _process_alive(pid: int) -> bool:
    """Whether process `pid` (of this host) still runs; a killed process that is not reaped yet
    (a zombie) does not count. Where that cannot be told, assume it runs."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]

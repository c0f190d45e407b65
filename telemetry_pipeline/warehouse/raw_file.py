"""The embedded warehouse's payloads: `raw_telemetry` in a SQLite file of its own, `<home>/warehouse-raw.sqlite`.

DuckDB computes on the canonical rows; it is the wrong home for payloads of hundreds of KB. A DuckDB checkpoint
rewrites the whole row group a write appended to, its large strings included, so the memory of every store grew
with the payloads already stored (measured on 600 KB LangGraph payloads in 8 MB writes: +420 MB of RSS by 200 MB
stored; with `memory_limit` 128 MB or 256 MB the checkpoint failed fatally at about 200 MB or 500 MB stored).
SQLite keeps each payload in pages of its own: a write costs what it writes, whatever the file holds.

Read it with any SQLite client (`sqlite3 warehouse-raw.sqlite "SELECT body FROM raw_telemetry WHERE ..."`).
Times are ISO 8601 text in UTC, so they sort and compare as text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.warehouse.base import WarehouseBusy
from telemetry_pipeline.warehouse.schema import RAW_TELEMETRY, RawRow, raw_parts, raw_rows

_COLUMNS = RAW_TELEMETRY.names
_INSERT = (f"INSERT OR REPLACE INTO raw_telemetry ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)})")


_KEY_IN = "session_key IN (SELECT value FROM json_each(?))"  # the keys as one JSON parameter, any number of them


def utc_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(sep=" ")


class RawFile:
    def __init__(self, path: Path, lock_wait: float) -> None:
        self.path = path
        self.lock_wait = lock_wait  # SQLite's busy timeout: another process's write ends within a part
        self._ready = False

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=self.lock_wait, isolation_level=None)  # transactions explicit
        try:
            if not self._ready:
                con.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer (kept in the file)
                con.execute(RAW_TELEMETRY.ddl("sqlite"))
                self._ready = True
            yield con
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise WarehouseBusy(f"{self.path} stayed locked by another process for {self.lock_wait:.0f}s") from exc
            raise
        finally:
            con.close()

    def store(self, raw: Sequence[RawSession]) -> None:
        """A transaction per part of about 8 MB: a writer holds the file for one part at a time."""
        self.store_rows(_rows(part) for part in raw_parts(raw))

    def store_rows(self, parts: Iterable[Iterable[tuple[object, ...]]]) -> None:
        with self.connect() as con:
            for rows in parts:
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.executemany(_INSERT, rows)
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")

    def keys(self) -> list[str]:
        with self.connect() as con:
            return [k for (k,) in con.execute("SELECT session_key FROM raw_telemetry ORDER BY 1")]

    def read(self, keys: Sequence[str]) -> list[RawRow]:
        """The stored rows of `keys` (those there are)."""
        with self.connect() as con:
            found = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM raw_telemetry WHERE {_KEY_IN}",
                                [json.dumps(list(keys))]).fetchall()
        rows = [dict(zip(_COLUMNS, row, strict=True)) for row in found]
        return [RawRow(**{**row, "fetched_at": dt.datetime.fromisoformat(row["fetched_at"])}) for row in rows]

    def prune(self, keys: Sequence[str], before: dt.datetime) -> int:
        """Delete the payloads of `keys` fetched before `before`; how many."""
        with self.connect() as con:
            return con.execute(f"DELETE FROM raw_telemetry WHERE fetched_at < ? AND {_KEY_IN}",
                               [utc_text(before), json.dumps(list(keys))]).rowcount


def _rows(raw: Sequence[RawSession]) -> Iterator[tuple[object, ...]]:
    for row in raw_rows(raw):
        yield sqlite_row(getattr(row, c) for c in _COLUMNS)


def sqlite_row(values: Iterable[object]) -> tuple[object, ...]:
    """A row of `raw_telemetry`'s values as SQLite stores them."""
    return tuple(utc_text(v) if isinstance(v, dt.datetime) else v for v in values)

"""Replacing the rows of a set of sessions, the one way every writer does it: the Python normalisers
(`rows.replace_sessions`), the session APIs' SQL normaliser, and the PostgreSQL warehouse (canonical rows and raw
payloads). The old rows of exactly these sessions go (their events too when a session now has none) and the new
ones come in, in one transaction that rolls back when any statement fails: a failed write never leaves a session
with its rows deleted and nothing in their place."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import duckdb

from telemetry_pipeline.canonical.model import Table


class Cursor(Protocol):
    """What both drivers offer: a DuckDB connection and a psycopg2 cursor."""

    def execute(self, query: str, parameters: Any = None, /) -> Any: ...


C = TypeVar("C", bound=Cursor)


@contextlib.contextmanager
def duckdb_transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """`con` in one transaction: committed when the block ends, rolled back when it raises (even on
    KeyboardInterrupt: an open transaction would otherwise hold the file's write lock)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # the connection may be gone; the original error matters
            con.execute("ROLLBACK")
        raise


def replace_rows(
    transaction: contextlib.AbstractContextManager[C],
    tables: Sequence[Table],
    keys: Sequence[str],
    insert: Callable[[C], object],
    placeholder: str = "?",
) -> None:
    """In `transaction`: delete the rows of `keys` from `tables` (in that order), then `insert` the new ones.
    `placeholder` is the driver's parameter marker (`?` for DuckDB, `%s` for psycopg2)."""
    if not keys:
        return
    with transaction as cur:
        for table in tables:
            cur.execute(f"DELETE FROM {table.name} WHERE session_key IN (SELECT unnest({placeholder}))", [list(keys)])
        insert(cur)

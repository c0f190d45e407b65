"""The warehouse interface: where a run keeps the raw payloads, the canonical model and its claims.

Two stores implement it: the DuckDB file (the embedded default) and PostgreSQL (`WAREHOUSE_URL`), for runs
that Dagster may launch on any host. Either way DuckDB is the compute engine of a run: `workspace()` hands
out a DuckDB connection with the canonical tables, the normalisers and the CSV rendering run their set-based
SQL there, and `save_canonical` makes the batch's rows durable in the store (a no-op for the file, which *is*
the workspace).

Claims keep overlapping runs (on any host) from exporting the same session twice. A claim is a lease: the run
renews it while it is alive (`leased`), and it is stale once the lease has run out or its Dagster run is
finished or gone (`is_live`). Process ids are never used: they mean nothing on another host.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import duckdb

from telemetry_pipeline.sources.base import RawSession

if TYPE_CHECKING:
    from telemetry_pipeline.warehouse.schema import ExportRecord

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 60.0

class WarehouseError(Exception):
    """The warehouse could not do what was asked; the message names the store (never a password)."""


class WarehouseBusy(WarehouseError):
    """Another process held the DuckDB file for longer than we were willing to wait."""


class WarehouseUnavailable(WarehouseError):
    """The store cannot be reached (PostgreSQL down, restarting, or refusing us)."""


def assume_live(run_id: str) -> bool:
    return True


def live_holders(rows: Iterable[tuple[str, str]], is_live: Callable[[str], bool]) -> dict[str, str]:
    """{key: holder} for the claims (key, holder run id) whose run is still going; each run asked once."""
    rows = list(rows)
    alive = {holder: is_live(holder) for holder in {h for _, h in rows}}
    return {key: holder for key, holder in rows if alive[holder]}


class Warehouse(abc.ABC):
    """One warehouse: see the module docstring. Every method is one unit of work (one transaction)."""

    lease_seconds: float = DEFAULT_LEASE_SECONDS

    @abc.abstractmethod
    def describe(self) -> str:
        """Which store, for people (`check`, logs): a path or host/database, never a password."""

    @abc.abstractmethod
    def probe(self) -> tuple[bool, str]:
        """(reachable, detail), creating or migrating the schema if needed; never raises."""

    @abc.abstractmethod
    def store_raw(self, raw: Sequence[RawSession]) -> None:
        """Keep payloads verbatim, replacing an earlier fetch of the same session (one transaction)."""

    @abc.abstractmethod
    def workspace(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A DuckDB connection, in UTC, holding the tables `sessions` and `events`, for one batch's compute."""

    @abc.abstractmethod
    def recent(self, since: dt.datetime) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A DuckDB connection, in UTC, whose `sessions` and `events` hold (at least) every session normalised
        at or after `since` (for reading: `process_overview`)."""

    @abc.abstractmethod
    def save_canonical(self, con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> None:
        """Make the canonical rows of `keys` in the workspace `con` durable, replacing the store's (one
        transaction)."""

    @abc.abstractmethod
    def claim(
        self, keys: Sequence[str], run_id: str, is_live: Callable[[str], bool] = assume_live
    ) -> tuple[list[str], dict[str, str]]:
        """Claim `keys` for `run_id` -> (claimed keys, {key: run id holding it}).

        A key is taken when nobody claims it, when `run_id` itself does, or when the claim is stale: its
        lease has run out, or `is_live(holder)` says the holder's run is finished or gone. The lease runs
        `lease_seconds` from now."""

    @abc.abstractmethod
    def renew(self, keys: Sequence[str], run_id: str) -> list[str]:
        """Extend `run_id`'s lease on `keys`; returns the keys it still holds (another run may have taken
        over a claim whose lease ran out)."""

    @abc.abstractmethod
    def release(self, keys: Sequence[str], run_id: str) -> None:
        """Drop `run_id`'s claims on `keys` (claims another run took over are left alone)."""

    @abc.abstractmethod
    def archive_exports(self, records: Sequence[ExportRecord]) -> None:
        """Keep export records whose Dagster run retention is deleting; a key keeps its newest record
        (one transaction)."""

    @abc.abstractmethod
    def archived_exports(self, keys: Sequence[str]) -> dict[str, ExportRecord]:
        """The archived records of those of `keys` that have one."""

    @contextlib.contextmanager
    def leased(self, keys: Sequence[str], run_id: str) -> Iterator[None]:
        """Renew `run_id`'s claims on `keys` in the background, three times per lease, while the block runs.
        A failed renewal is logged and tried again; if the run stays away longer than its lease, other
        runs may take its sessions over, which `renew` then reports."""
        if not keys:
            yield
            return
        stop = threading.Event()

        def renew_until_stopped() -> None:
            while not stop.wait(self.lease_seconds / 3):
                try:
                    self.renew(keys, run_id)
                except Exception as exc:  # the next attempt may work; the lease covers a missed one
                    log.warning("could not renew the claims of run %s: %s", run_id, exc)

        thread = threading.Thread(target=renew_until_stopped, name=f"lease-{run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

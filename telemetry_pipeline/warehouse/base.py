"""The warehouse interface: where a run keeps the raw payloads, the canonical model and its claims.

Two stores implement it: the DuckDB file (the embedded default) and PostgreSQL (`WAREHOUSE_URL`), for runs
that Dagster may launch on any host. Either way DuckDB is the compute engine of a run: `workspace()` hands
out a DuckDB connection with the canonical tables, the normalisers and the CSV rendering run their set-based
SQL there, and `save_canonical` makes the batch's rows durable in the store (a no-op for the file, which *is*
the workspace).

Claims keep overlapping runs (on any host) from exporting the same session twice. A claim is a lease: the run
renews it while it is alive (`leased`). Whether another run's claim still stands is the claimer's `HolderCheck`
(`liveness.RunLiveness` for Dagster runs): a holder known to be alive keeps it, one known to be dead (its run
finished, or its process gone from this host) loses it at once, and for any other (a run on another host) the
lease decides.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import enum
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

from telemetry_pipeline.canonical.raw import RawSession

if TYPE_CHECKING:
    from telemetry_pipeline.warehouse.schema import ExportRecord

log = logging.getLogger(__name__)

# A run's claim on a session lasts this long unless the run renews it (every third of it: docs/FAULTS.md, "Claims and
# crashes", for what a renewal costs). It only matters across hosts: on one host a dead run is seen at once.
DEFAULT_LEASE_SECONDS = 30.0  # CLAIM_LEASE_SECONDS

class WarehouseError(Exception):
    """The warehouse could not do what was asked; the message names the store (never a password)."""


class WarehouseBusy(WarehouseError):
    """Another process held the DuckDB file for longer than we were willing to wait."""


class WarehouseUnavailable(WarehouseError):
    """The store cannot be reached (PostgreSQL down, restarting, or refusing us)."""


class Holder(enum.Enum):
    """What a claimer knows of the run holding a claim."""

    ALIVE = "alive"  # its process runs on this host: the claim stands, whatever its lease says
    DEAD = "dead"  # its run is finished or gone, or its process is gone from this host: stale at once
    UNKNOWN = "unknown"  # elsewhere, as far as we can tell: its lease decides


HolderCheck = Callable[[str], Holder]


def lease_decides(run_id: str) -> Holder:
    """The check of a claimer that knows nothing of runs (plain code, tests): leases alone."""
    return Holder.UNKNOWN


@dataclass(frozen=True)
class Claim:
    run_id: str
    lease_until: dt.datetime


def standing(rows: Iterable[tuple[str, str, bool]], check: HolderCheck) -> tuple[dict[str, str], list[str], list[str]]:
    """Of the conflicting claims (key, holder run id, lease still running): ({key: holder} of those that
    stand, the holders known alive, the holders known dead). Each holder is checked once."""
    rows = list(rows)
    state = {holder: check(holder) for holder in {h for _, h, _ in rows}}
    kept = {
        key: holder for key, holder, leased in rows
        if state[holder] is Holder.ALIVE or (state[holder] is Holder.UNKNOWN and leased)
    }
    alive = sorted(h for h, s in state.items() if s is Holder.ALIVE)
    dead = sorted(h for h, s in state.items() if s is Holder.DEAD)
    return kept, alive, dead


class Warehouse(abc.ABC):
    """One warehouse: see the module docstring. Every method is one unit of work (one transaction)."""

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # The clock leases are judged by: None, the database's `now()` (the one clock every host shares), or one a
    # test sets, so that a lease runs out when the test says and not on the wall clock.
    clock: Callable[[], dt.datetime] | None = None

    def _now(self) -> dt.datetime | None:
        """The time a claim's SQL takes as now (None: the database's own)."""
        return self.clock() if self.clock is not None else None

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
    def workspace(self, keys: Sequence[str] = ()) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A DuckDB connection, in UTC, holding the canonical tables, for one batch's compute; with the store's rows
        of the sessions `keys` in them (to work on them again: a re-check against the playbooks)."""

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
        self, keys: Sequence[str], run_id: str, check: HolderCheck = lease_decides
    ) -> tuple[list[str], dict[str, str]]:
        """Claim `keys` for `run_id` -> (claimed keys, {key: run id holding it}).

        A key is taken when nobody claims it, when `run_id` itself does, or when the claim is stale:
        `check(holder)` says DEAD, or says UNKNOWN and the lease has run out. The lease runs `lease_seconds`
        from now."""

    @abc.abstractmethod
    def holders(self, keys: Sequence[str]) -> dict[str, Claim]:
        """The current claims on those of `keys` that have one (stale or not)."""

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

    @abc.abstractmethod
    def seen_names(self) -> dict[str, set[str]]:
        """Every activity, tool and model the canonical events hold: {"activity": ..., "tool": ..., "model": ...}
        (what a playbook's rules may name; `check` warns of a name never seen)."""

    @abc.abstractmethod
    def prune_raw(self, exported: Sequence[str], before: dt.datetime) -> int:
        """Delete the raw payloads fetched before `before` of the sessions in `exported` and of every archived
        session exported before it (content's lifetime: retention); how many were deleted (one transaction)."""

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

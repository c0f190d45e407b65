"""Export a batch of sessions: fetch -> keep raw -> normalise -> check against the playbooks -> render CSV ->
load, in that order; or, to re-check sessions already exported against changed playbooks, the same from the
warehouse's canonical rows on (`recheck`: nothing fetched). Plain code (no Dagster): the asset exports its
partition keys in an `exporting` block and records the `BatchOutcome` as materialisations inside it, before the
claims are released. Every stage reports which sessions it carried, so a session that failed early never reaches
a later stage and a failed load marks nothing exported.

A batch goes through in chunks of about `max_bytes` of payload (EXPORT_BATCH_MAX_MB), each fetched, computed in a
workspace of its own and uploaded before the next is fetched: what a run holds at once is set by configuration,
not by the size of its sessions (a LangGraph trace is 600 KB; 500 of them had taken 4.6 GB, issue 33). Each chunk
is one upload of the two tables; a batch of small sessions is one chunk, as before.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from telemetry_pipeline.canonical.content import Governance
from telemetry_pipeline.canonical.cost import price_batch
from telemetry_pipeline.canonical.govern import govern_batch
from telemetry_pipeline.canonical.identity import AgentDefaults
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.console.quality import CheckOutcome, check_upload, combine
from telemetry_pipeline.console.session_summary import SessionSummary, summarize
from telemetry_pipeline.policy.conformance import check_conformance
from telemetry_pipeline.policy.playbooks import Playbook
from telemetry_pipeline.settings import Settings, SourcesSettings
from telemetry_pipeline.signavio.csv import render
from telemetry_pipeline.signavio.models import Destination, LoadResult
from telemetry_pipeline.sources.base import Normalizer
from telemetry_pipeline.sources.registry import SOURCES, parse_key
from telemetry_pipeline.sources.source_set import SourceSet
from telemetry_pipeline.warehouse import HolderCheck, Warehouse, lease_decides

log = logging.getLogger(__name__)

# keys -> {key: the run that exported it since this run was asked for}
ExportedMeanwhile = Callable[[Sequence[str]], dict[str, str]]


@dataclass
class BatchOutcome:
    keys: list[str]
    recheck: bool = False  # taken from the warehouse, not fetched: checked against the playbooks afresh
    stored: list[str] = field(default_factory=list)  # raw payload kept in DuckDB
    normalized: list[str] = field(default_factory=list)  # canonical rows replaced
    rendered: list[str] = field(default_factory=list)  # in this batch's CSV uploads
    exported: list[str] = field(default_factory=list)  # destination confirmed both tables
    failures: dict[str, str] = field(default_factory=dict)  # key -> what failed, where
    not_found: list[str] = field(default_factory=list)  # failed: their source has no such session
    in_flight: dict[str, str] = field(default_factory=dict)  # key -> run exporting it now (left alone)
    exported_meanwhile: dict[str, str] = field(default_factory=dict)  # key -> run that exported it since asked
    loads: list[LoadResult] = field(default_factory=list)
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (runs rows, events rows)
    summaries: dict[str, SessionSummary] = field(default_factory=dict)  # key -> at a glance
    quality: list[CheckOutcome] = field(default_factory=list)  # data-quality checks of this upload
    bytes_fetched: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def exporting(
    keys: Sequence[str],
    *,
    sources: SourceSet,
    warehouse: Warehouse,
    destination: Destination,
    dataset: str,
    agents: AgentDefaults,
    run_id: str | None = None,
    holder_check: HolderCheck = lease_decides,
    exported_meanwhile: ExportedMeanwhile = lambda keys: {},
    alphabet_limit: int = Settings.activity_alphabet_limit,
    governance: Governance = Settings.content,
    playbooks: Sequence[Playbook] = (),
    recheck: bool = False,
    max_bytes: float = SourcesSettings.chunk_max_bytes,
) -> Iterator[BatchOutcome]:
    """Export `keys`, except those another live run is exporting right now (`in_flight`), and hold their
    claims until the block ends: each key is claimed in the warehouse before anything is fetched, the claims are
    renewed while the batch runs and while the caller records its outcome in the block, and released after it,
    so two overlapping runs (on any hosts) never upload the same session twice — not even one that another run
    has loaded and not yet recorded as exported. `holder_check(run_id)` says whether a run holding a claim is
    still going (`warehouse.Holder`). `exported_meanwhile(claimed)` names the claimed sessions another run
    exported since this run was asked for: they are done, and released untouched. (That run recorded them before
    it released them, so a claim taken after its release always finds them.) With `recheck`, the sessions are
    taken as the warehouse holds them (not fetched again) and checked against `playbooks` afresh."""
    run_id = run_id or f"adhoc-{uuid.uuid4().hex}"
    out = BatchOutcome(keys=list(keys), recheck=recheck)
    claimed, out.in_flight = warehouse.claim(out.keys, run_id, holder_check)
    _log_in_flight(out.in_flight)
    try:
        out.exported_meanwhile = exported_meanwhile(claimed) if claimed else {}
        if out.exported_meanwhile:
            log.info("%d sessions were exported by other runs since this run was asked for: %s",
                     len(out.exported_meanwhile), dict(list(out.exported_meanwhile.items())[:20]))
            warehouse.release(list(out.exported_meanwhile), run_id)
            claimed = [k for k in claimed if k not in out.exported_meanwhile]
        with warehouse.leased(claimed, run_id):
            batch = _Batch(out, run_id, sources, warehouse, destination, dataset, agents, alphabet_limit,
                           governance, tuple(playbooks))
            yield batch.export(claimed, max_bytes)
    finally:
        try:
            warehouse.release(claimed, run_id)
        except Exception as exc:  # the claims go stale with this run; never mask the run's own outcome
            log.warning("could not release the claims of run %s: %s", run_id, exc)


def export_batch(keys: Sequence[str], **options: Any) -> BatchOutcome:
    """`exporting` for a caller that records nothing (benchmarks): the claims are released when it returns."""
    with exporting(keys, **options) as out:
        return out


def _log_in_flight(in_flight: dict[str, str]) -> None:
    if in_flight:
        log.warning("%d sessions are being exported by another run, left to it: %s", len(in_flight),
                    dict(list(in_flight.items())[:20]))


@dataclass
class _Batch:
    """One run's batch as it goes through, chunk by chunk, into `out`."""

    out: BatchOutcome
    run_id: str
    sources: SourceSet
    warehouse: Warehouse
    destination: Destination
    dataset: str
    agents: AgentDefaults
    alphabet_limit: int
    governance: Governance
    playbooks: tuple[Playbook, ...]

    def export(self, keys: list[str], max_bytes: float) -> BatchOutcome:
        out = self.out
        if out.recheck:  # the canonical rows the warehouse holds: governed, small beside the payloads
            self._chunk(keys, None)
        else:
            fetching = self.sources.fetch_chunks(keys, max_bytes)
            while True:
                with _timed(out.timings, "fetch"):
                    fetched = next(fetching, None)
                if fetched is None:
                    break
                self._failed("fetch", fetched.errors)
                out.not_found += fetched.not_found
                with _timed(out.timings, "store_raw"):
                    self.warehouse.store_raw(fetched.raw)
                out.stored += [r.key for r in fetched.raw]
                out.bytes_fetched += sum(len(r.body) for r in fetched.raw)
                self._chunk([r.key for r in fetched.raw], fetched.raw)
        log.info(
            "batch of %d: %d exported, %d failed, %d in flight elsewhere; %d uploads; timings %s",
            len(out.keys), len(out.exported), len(out.failures), len(out.in_flight), len(out.loads) // 2,
            {k: round(v, 3) for k, v in out.timings.items()},
        )
        return out

    def _failed(self, stage: str, problems: dict[str, str]) -> None:
        # What fails is said in metadata and logs: a source's or a payload's text in it is governed too.
        self.out.failures.update({k: self.governance.message(f"{stage}: {e}") or stage for k, e in problems.items()})

    def _chunk(self, keys: list[str], raw: list[RawSession] | None) -> None:
        """Normalise (or, for a re-check, take from the warehouse) `keys`, check, save, render and upload them."""
        out = self.out
        with _timed(out.timings, "normalize"), self.warehouse.workspace(keys if raw is None else ()) as con:
            if raw is None:
                done = _in_warehouse(con, keys)
                missing = "the warehouse holds no rows of this session: export it (it is fetched from its source again)"
                self._failed("recheck", {k: missing for k in keys if k not in set(done)})
            else:
                done = self._normalize(con, raw)
            with _timed(out.timings, "conformance"):  # every time: a session's old verdict goes with its old rows
                check_conformance(con, done, self.playbooks)
            with _timed(out.timings, "save_canonical"):
                self.warehouse.save_canonical(con, done)
            done = self._still_held(done)
            out.normalized += done
            if not done:
                return
            with _timed(out.timings, "render"):
                rendered = render(con, done, self.dataset, self.governance.attributes_max_chars)
            with _timed(out.timings, "summarise"):
                out.summaries |= summarize(con, done)
        with _timed(out.timings, "quality"):
            out.quality = combine(out.quality, check_upload(rendered.runs, rendered.events, self.alphabet_limit))
        out.rendered += done
        out.rows |= rendered.rows_by_session
        with _timed(out.timings, "load"):
            loads = self.destination.load(rendered.uploads)
        out.loads += loads
        refused = [r for r in loads if not r.ok]
        if refused:
            reason = "; ".join(f"{r.table}: {r.status}" + (f" ({r.message})" if r.message else "") for r in refused)
            self._failed("load", dict.fromkeys(done, reason))
        else:
            out.exported += done

    def _normalize(self, con: duckdb.DuckDBPyConnection, raw: list[RawSession]) -> list[str]:
        """The canonical rows of `raw`, priced and governed before anything reads them; the keys normalised."""
        by_normalizer: dict[Normalizer, list[RawSession]] = defaultdict(list)
        for r in raw:
            by_normalizer[SOURCES[r.source].normalize].append(r)  # fetched, so a registered source
        done: list[str] = []
        for normalize, batch in by_normalizer.items():
            problems = normalize(con, batch, self.agents)
            self._failed("normalise", problems)
            done += [r.key for r in batch if r.key not in problems]
        with _timed(self.out.timings, "cost"):  # what each model call cost (the trace's figure, else a price table's)
            price_batch(con, done)
        with _timed(self.out.timings, "govern"):  # before anything reads the rows: what leaves is governed
            tasks = [k for k in done if SOURCES[parse_key(k)[0]].task_is_content]
            govern_batch(con, done, self.governance, tasks)
        return done

    def _still_held(self, keys: list[str]) -> list[str]:
        """A run that was away longer than its lease (paused, cut off from the warehouse) may have lost sessions
        to another run by now: it renders and uploads only what it still holds."""
        still = set(self.warehouse.renew(keys, self.run_id))
        lost = {k: "another run (this run's claim had expired)" for k in keys if k not in still}
        if lost:
            _log_in_flight(lost)
            self.out.in_flight.update(lost)
        return [k for k in keys if k in still]


def _in_warehouse(con: duckdb.DuckDBPyConnection, keys: list[str]) -> list[str]:
    """Those of `keys` whose canonical rows the warehouse holds (as they were governed when exported)."""
    found = {k for (k,) in con.execute(
        "SELECT session_key FROM sessions WHERE session_key IN (SELECT unnest($keys::VARCHAR[]))", {"keys": keys}
    ).fetchall()}
    return [k for k in keys if k in found]


@contextlib.contextmanager
def _timed(into: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - start

"""Export a batch of sessions: fetch -> keep raw -> normalise -> check against the playbooks -> render CSV ->
load, in that order; or, to re-check sessions already exported against changed playbooks, the same from the
warehouse's canonical rows on (`recheck`: nothing fetched). Plain code (no Dagster): the asset exports its
partition keys in an `exporting` block and records the `BatchOutcome` as materialisations inside it, before the
claims are released. Every stage reports which sessions it carried, so a session that failed early never reaches
a later stage and a failed load marks nothing exported.
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
from telemetry_pipeline.console.quality import CheckOutcome, check_upload
from telemetry_pipeline.console.session_summary import SessionSummary, summarize
from telemetry_pipeline.policy.conformance import check_conformance
from telemetry_pipeline.policy.playbooks import Playbook
from telemetry_pipeline.settings import Settings
from telemetry_pipeline.signavio.csv import render
from telemetry_pipeline.signavio.models import Destination, LoadResult
from telemetry_pipeline.sources.base import Normalizer, RawSession
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
            yield _export(out, claimed, run_id, sources, warehouse, destination, dataset, agents,
                          alphabet_limit, governance, tuple(playbooks))
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


def _export(
    out: BatchOutcome,
    keys: list[str],
    run_id: str,
    sources: SourceSet,
    warehouse: Warehouse,
    destination: Destination,
    dataset: str,
    agents: AgentDefaults,
    alphabet_limit: int,
    governance: Governance,
    playbooks: tuple[Playbook, ...],
) -> BatchOutcome:
    # What fails is said in metadata and logs: a source's or a payload's text in it is governed too.
    def failed(stage: str, problems: dict[str, str]) -> None:
        out.failures.update({k: governance.message(f"{stage}: {e}") or stage for k, e in problems.items()})

    fetched = None if out.recheck else _fetch(out, keys, sources, warehouse, failed)
    with _timed(out.timings, "normalize"), warehouse.workspace(keys if out.recheck else ()) as con:
        if fetched is None:
            out.normalized = _in_warehouse(con, keys)
            missing = "the warehouse holds no rows of this session: export it (it is fetched from its source again)"
            failed("recheck", {k: missing for k in keys if k not in set(out.normalized)})
        else:
            _normalize(out, con, fetched, agents, governance, failed)
        with _timed(out.timings, "conformance"):  # every time: a session's old verdict goes with its old rows
            check_conformance(con, out.normalized, playbooks)
        with _timed(out.timings, "save_canonical"):
            warehouse.save_canonical(con, out.normalized)
        _drop_lost_claims(out, warehouse, run_id)
        if out.normalized:
            with _timed(out.timings, "render"):
                rendered = render(con, out.normalized, dataset, governance.attributes_max_chars)
            with _timed(out.timings, "summarise"):
                out.summaries = summarize(con, out.normalized)
    if not out.normalized:
        return out
    with _timed(out.timings, "quality"):
        out.quality = check_upload(rendered.runs, rendered.events, alphabet_limit)
    out.rendered = list(out.normalized)
    out.rows = rendered.rows_by_session

    with _timed(out.timings, "load"):
        out.loads = destination.load(rendered.uploads)
    refused = [r for r in out.loads if not r.ok]
    if refused:
        reason = "; ".join(f"{r.table}: {r.status}" + (f" ({r.message})" if r.message else "") for r in refused)
        failed("load", dict.fromkeys(out.rendered, reason))
    else:
        out.exported = list(out.rendered)
    log.info(
        "batch of %d: %d exported, %d failed, %d in flight elsewhere; timings %s",
        len(out.keys), len(out.exported), len(out.failures), len(out.in_flight),
        {k: round(v, 3) for k, v in out.timings.items()},
    )
    return out


def _fetch(out: BatchOutcome, keys: list[str], sources: SourceSet, warehouse: Warehouse,
           failed: Callable[[str, dict[str, str]], None]) -> list[RawSession]:
    """Each session's payload from its source, kept verbatim before anything parses it."""
    with _timed(out.timings, "fetch"):
        fetched = sources.fetch_many(keys)
    failed("fetch", fetched.errors)
    out.not_found = fetched.not_found
    with _timed(out.timings, "store_raw"):
        warehouse.store_raw(fetched.raw)
    out.stored = [r.key for r in fetched.raw]
    out.bytes_fetched = sum(len(r.body) for r in fetched.raw)
    return fetched.raw


def _normalize(out: BatchOutcome, con: duckdb.DuckDBPyConnection, raw: list[RawSession], agents: AgentDefaults,
               governance: Governance, failed: Callable[[str, dict[str, str]], None]) -> None:
    """The canonical rows of `raw`, priced and governed before anything reads them."""
    by_normalizer: dict[Normalizer, list[RawSession]] = defaultdict(list)
    for r in raw:
        by_normalizer[SOURCES[r.source].normalize].append(r)  # fetched, so a registered source
    for normalize, batch in by_normalizer.items():
        problems = normalize(con, batch, agents)
        failed("normalise", problems)
        out.normalized += [r.key for r in batch if r.key not in problems]
    with _timed(out.timings, "cost"):  # what each model call cost (the trace's figure, else a price table's)
        price_batch(con, out.normalized)
    with _timed(out.timings, "govern"):  # before anything reads the rows: what leaves is governed
        tasks = [k for k in out.normalized if SOURCES[parse_key(k)[0]].task_is_content]
        govern_batch(con, out.normalized, governance, tasks)


def _in_warehouse(con: duckdb.DuckDBPyConnection, keys: list[str]) -> list[str]:
    """Those of `keys` whose canonical rows the warehouse holds (as they were governed when exported)."""
    found = {k for (k,) in con.execute(
        "SELECT session_key FROM sessions WHERE session_key IN (SELECT unnest($keys::VARCHAR[]))", {"keys": keys}
    ).fetchall()}
    return [k for k in keys if k in found]


def _drop_lost_claims(out: BatchOutcome, warehouse: Warehouse, run_id: str) -> None:
    """A run that was away longer than its lease (paused, cut off from the warehouse) may have lost sessions
    to another run by now: it renders and uploads only what it still holds."""
    still = set(warehouse.renew(out.normalized, run_id))
    lost = {k: "another run (this run's claim had expired)" for k in out.normalized if k not in still}
    if lost:
        _log_in_flight(lost)
        out.in_flight.update(lost)
        out.normalized = [k for k in out.normalized if k in still]


@contextlib.contextmanager
def _timed(into: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - start

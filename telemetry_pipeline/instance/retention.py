"""Retention: keep what Dagster reads in proportion to the recent sessions, not to all that were ever exported.

Two things grow with the export history, and both are pruned once a session's latest export is older than
`RETENTION_DAYS`:
- its partition of `agent_sessions` (the UI lists every key, the sensor and the schedule read them all);
- the export runs that ended before the cut-off and none of whose sessions is known any more (pruned, or
  deleted by hand): deleted with their events, once their export records are kept in the warehouse
  (`export_archive`), where `status` finds them. Dagster rebuilds the Partitions tab's
  status from every materialisation of the asset each time keys are added, and OSS Dagster cannot wipe single
  partitions' history: deleting old runs is the supported way to bound it (bench/README.md, Growth).
A pending session is never pruned, and a run that exported a session still known is kept.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import dagster as dg

from telemetry_pipeline.instance.history import latest_exports, run_exports, run_spans
from telemetry_pipeline.names import AGENT_SESSIONS, EXPORT_JOB
from telemetry_pipeline.warehouse import Warehouse

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


@dataclass
class RetentionOutcome:
    pruned_keys: list[str] = field(default_factory=list)  # partitions removed
    deleted_runs: list[str] = field(default_factory=list)  # export runs deleted, their records archived
    archived: int = 0  # export records moved to the warehouse
    raw_pruned: int = 0  # raw payloads deleted from the warehouse (exported sessions only)


def prunable_keys(instance: dg.DagsterInstance, older_than_days: float, now: dt.datetime | None = None) -> list[str]:
    """Known keys whose latest export is older than the cut-off (a pending key has none: it is never pruned).
    Reads the export history of the known keys only, not of the sessions pruned before."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=older_than_days)
    known = instance.get_dynamic_partitions(AGENT_SESSIONS)
    latest = latest_exports(instance, known)
    return [k for k in known if k in latest and latest[k].exported_at < cutoff]


def apply_retention(
    instance: dg.DagsterInstance, warehouse: Warehouse, older_than_days: float, dry_run: bool = False,
    now: dt.datetime | None = None, raw_older_than_days: float | None = None,
) -> RetentionOutcome:
    """Prune partitions and export runs after `older_than_days`, and the raw payloads of sessions exported more than
    `raw_older_than_days` ago (content's lifetime: the warehouse is where people's text lives; unset, raw payloads
    are kept)."""
    now = now or dt.datetime.now(dt.UTC)
    outcome = RetentionOutcome(pruned_keys=prunable_keys(instance, older_than_days, now))
    if dry_run:
        return outcome
    if raw_older_than_days is not None:  # first: the partitions pruned next still say when they were exported
        outcome.raw_pruned = warehouse.prune_raw(
            prunable_keys(instance, raw_older_than_days, now), now - dt.timedelta(days=raw_older_than_days))
    for key in outcome.pruned_keys:
        instance.delete_dynamic_partition(AGENT_SESSIONS, key)
    known = set(instance.get_dynamic_partitions(AGENT_SESSIONS))
    cutoff = (now - dt.timedelta(days=older_than_days)).timestamp()
    runs = [run for run in instance.get_run_records(dg.RunsFilter(job_name=EXPORT_JOB, statuses=FINISHED))
            # what a run that ended since exported is too recent to be pruned; so is a failed run
            if run.end_time is None or run.end_time < cutoff]
    spans = run_spans(instance, {run.dagster_run.run_id for run in runs})
    for run in runs:
        run_id = run.dagster_run.run_id
        if run_id not in spans:
            continue  # no start event: where its records are is unknown, so it is kept, never deleted unread
        records = run_exports(instance, spans[run_id])
        if any(r.session_key in known for r in records):
            continue  # it holds the record of a session the UI still shows
        warehouse.archive_exports(records)  # first: a crash in between leaves a record twice, never none
        instance.delete_run(run_id)
        outcome.deleted_runs.append(run_id)
        outcome.archived += len(records)
    return outcome

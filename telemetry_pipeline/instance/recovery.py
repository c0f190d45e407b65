"""Export runs that died: recognised, and their sessions exported again (by `new_sessions_sensor`).

A run can end without exporting its sessions for two kinds of reasons. Its sessions failed (a source down, a
load refused): the step failed, Dagster says `STEP_FAILURE`, and the hourly schedule retries them. Or the run
itself was cut off: a Ctrl-C of `make run` (Dagster: `UNEXPECTED_TERMINATION`), a process killed or a host
restarted (its record says STARTED until someone notices; on its host `liveness.RunLiveness` does, and marks it
failed). Those sessions are the sensor's to export again at once: nobody asked for them to fail, and waiting an
hour for the schedule would be a lost hour after every restart.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import dagster as dg

from telemetry_pipeline.instance.history import latest_exports
from telemetry_pipeline.instance.liveness import RunLiveness
from telemetry_pipeline.instance.partitions import RANGE_END_TAG, RANGE_START_TAG, KeyRange, batched_ranges
from telemetry_pipeline.names import HOST_TAG, PID_TAG, RECOVERY_ATTEMPT_TAG
from telemetry_pipeline.warehouse import Holder

log = logging.getLogger(__name__)

FAILURE_REASON_TAG = "dagster/failure_reason"  # Dagster's own tag on a failed run
_SESSIONS_FAILED = "STEP_FAILURE"
# A batch whose every run is cut off (one killed for its memory each time, say) is not sent round for ever: after
# this many attempts its sessions wait for the hourly schedule, like failed ones.
MAX_RECOVERY_ATTEMPTS = 3


@dataclass(frozen=True)
class Recovery:
    run_id: str  # the run that died
    ranges: list[KeyRange]  # its sessions not exported since, batched
    attempt: int  # how many runs in a row have tried these sessions after a cut-off (this one included)


def mark_dead_runs(instance: dg.DagsterInstance, pids: Collection[int] | None = None,
                   reason: str | None = None) -> list[str]:
    """Mark failed the started export runs whose process is gone from this host (one of `pids`, when given), saying
    `reason` (else: it was killed); their ids. (An export run is one that tagged itself with its process:
    `export_sessions`, or the hourly schedule's asset runs.)"""
    check = RunLiveness(instance, reason)
    started = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    return [
        run.run_id for run in started
        if HOST_TAG in run.tags and (pids is None or run.tags.get(PID_TAG) in {str(pid) for pid in pids})
        and check(run.run_id) is Holder.DEAD
    ]


def cut_off_runs(instance: dg.DagsterInstance, after: float) -> tuple[list[dg.DagsterRun], float]:
    """Export runs that failed, not because of their sessions, with a last update after `after` (a POSIX
    timestamp), oldest first; and the newest update among all failed runs seen (the next `after`)."""
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], updated_after=dt.datetime.fromtimestamp(after, dt.UTC)),
        order_by="update_timestamp", ascending=True,
    )
    newest = max((r.update_timestamp.timestamp() for r in records), default=after)
    runs = [  # a range of sessions: an export run (`export_sessions`, a backfill, the hourly schedule's)
        r.dagster_run for r in records
        if RANGE_START_TAG in r.dagster_run.tags and r.dagster_run.tags.get(FAILURE_REASON_TAG) != _SESSIONS_FAILED
    ]
    return runs, newest


def recoveries(
    instance: dg.DagsterInstance, runs: Sequence[dg.DagsterRun], all_keys: Sequence[str], batch_size: int
) -> list[Recovery]:
    """What to export again for each of `runs`: the sessions of its range that are not exported (now)."""
    position = {key: i for i, key in enumerate(all_keys)}
    out = []
    for run in runs:
        start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
        if start not in position or end not in position:  # not a range of sessions we still know
            continue
        attempt = int(run.tags.get(RECOVERY_ATTEMPT_TAG, "0")) + 1
        if attempt > MAX_RECOVERY_ATTEMPTS:
            log.warning("run %s was cut off like the %d before it: its sessions are left to the hourly schedule",
                        run.run_id, MAX_RECOVERY_ATTEMPTS)
            continue
        keys = list(all_keys[position[start]:position[end] + 1])
        exported = latest_exports(instance, keys)
        left = [k for k in keys if k not in exported]
        if left:
            out.append(Recovery(run.run_id, batched_ranges(all_keys, left, batch_size), attempt))
    return out


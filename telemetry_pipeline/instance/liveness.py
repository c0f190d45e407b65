"""Is the run that holds a claim still going? (`warehouse.HolderCheck` for Dagster runs.)

An export run tags itself with the process that holds its claims (`ProcessIdentity`: host, pid, process start
time) before it claims anything. A claimer on the same host can then tell at once whether that process is gone,
or whether its pid now belongs to another process (pids are reused; start times are not): if so, it marks the
Dagster run failed, saying why, and takes its sessions. Nothing else on one host notices a run that was killed
(SIGKILL, OOM, a container or laptop restarted): its record says STARTED forever, and only the lease would free
its sessions. On another host a pid means nothing, so there the lease decides.

The host is the machine's name, its boot and (on Linux) its pid namespace: two containers with one name, or a
machine after a reboot, are other hosts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import dagster as dg
import psutil

from telemetry_pipeline.names import HOST_TAG, PID_TAG, PROCESS_STARTED_TAG
from telemetry_pipeline.warehouse import Holder

# psutil's start times come from the kernel's clock ticks (10 ms on Linux); a reused pid starts later than that.
_START_TOLERANCE_S = 0.05
GONE = "it was killed or its host restarted; a later run took its sessions over"


@cache
def host_identity() -> str:
    host = f"{socket.gethostname()}@boot{int(psutil.boot_time())}"
    with_namespace = "/proc/self/ns/pid"
    return f"{host}/{os.readlink(with_namespace)}" if os.path.exists(with_namespace) else host


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid: int
    started: float  # seconds since the epoch

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls(host_identity(), os.getpid(), psutil.Process().create_time())

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> ProcessIdentity | None:
        try:
            return cls(tags[HOST_TAG], int(tags[PID_TAG]), float(tags[PROCESS_STARTED_TAG]))
        except (KeyError, ValueError):  # a run that never tagged itself (not an export, or older code)
            return None

    def tags(self) -> dict[str, str]:
        return {HOST_TAG: self.host, PID_TAG: str(self.pid), PROCESS_STARTED_TAG: f"{self.started:.3f}"}

    def running(self) -> bool | None:
        """Whether this process still runs: None when it is on another host (nobody here can tell)."""
        if self.host != host_identity():
            return None
        try:
            process = psutil.Process(self.pid)
            return (
                abs(process.create_time() - self.started) <= _START_TOLERANCE_S
                and process.status() != psutil.STATUS_ZOMBIE  # killed, not yet reaped by its parent
            )
        except psutil.NoSuchProcess:
            return False


class RunLiveness:
    """`HolderCheck` over a Dagster instance: a finished or unknown run is DEAD; a started run whose process is
    gone from this host is marked failed (with the reason) and is DEAD; a started run whose process runs here is
    ALIVE; any other run is UNKNOWN (its lease decides)."""

    def __init__(self, instance: dg.DagsterInstance, gone_reason: str | None = None) -> None:
        self.instance = instance
        self.gone_reason = gone_reason or GONE  # what the failure says of a run whose process is gone

    def __call__(self, run_id: str) -> Holder:
        run = self.instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return Holder.DEAD
        process = ProcessIdentity.from_tags(run.tags)
        running = process.running() if process else None
        if process is None or running is None:
            return Holder.UNKNOWN
        if running:
            return Holder.ALIVE
        self.instance.report_run_failed(
            run, message=f"the process of this run (pid {process.pid} on {process.host}) is gone: {self.gone_reason}"
        )
        return Holder.DEAD

    def describe(self, run_id: str) -> str:
        """For people: 'alive', 'dead' or 'unknown (on another host: its lease decides)'."""
        state = self(run_id)
        return "unknown (on another host: its lease decides)" if state is Holder.UNKNOWN else state.value

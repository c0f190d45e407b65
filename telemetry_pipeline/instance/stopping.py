"""Stopping our processes within a bound, and saying honestly what was cut off (issue 28).

A stop request (Ctrl-C, SIGTERM from a service manager or an orchestrator) first takes Dagster's own path: the
processes get the signal, a run cut off mid-step records itself as failed ("Execution was interrupted"), and our
export step releases its claims on the way out. Dagster's own shutdown is not bounded the way an operator needs:
`dagster dev` waits up to 60 s for its webserver and 60 s more for its daemon, a gRPC code server up to 30 s for
its server. So whatever still runs `STOP_GRACE_S` after the request is killed, and the export runs whose processes
are gone then are marked failed here, with the reason: their sessions are exported again by the next run
(`recovery`), and their claims are free at once (`liveness`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import dagster as dg
import psutil

from telemetry_pipeline.instance.recovery import mark_dead_runs

# Well inside the 10 s in which every process must be gone: Dagster's graceful path took 3-9 s on a loaded 2-core
# machine; the kill, the marking and the interpreter's exit take about a second more.
STOP_GRACE_S = 5.0
_KILL_WAIT_S = 2.0
_POLL_S = 0.05

Members = Callable[[], list[psutil.Process]]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def supervise(argv: Sequence[str], env: dict[str, str], dagster_home: Path) -> int:
    """Run `argv` (Dagster's processes: `dagster dev`, a code server, the daemon, the webserver) in a process group
    of its own, and return its exit status. On SIGINT or SIGTERM, stop the whole group within the bound (`stop`),
    mark failed the export runs it cut off, and return 128 + the signal's number, as a shell does."""
    received: list[int] = []
    # Our handlers first: a handled signal is the default again in a child after exec, an ignored one stays ignored.
    # Started in the background by a script, this process ignores SIGINT; its Dagster children would then ignore it
    # too, and SIGTERM with it (Dagster gives SIGTERM SIGINT's handler), and every stop would wait for the kill.
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in STOP_SIGNALS}
    try:
        child = subprocess.Popen(list(argv), env=env, start_new_session=True)
        while child.poll() is None and not received:
            time.sleep(_POLL_S)
        if not received:
            return child.returncode
        signum = received[0]  # a second Ctrl-C changes nothing: the bound holds anyway
        # SIGTERM, whichever came: every Dagster process maps it onto its interrupt path (a run cut off records
        # itself failed, "interrupted"), and the helpers that only tail a run's logs end without a traceback.
        pids = stop(group_members(child.pid), signal.SIGTERM)
        child.wait()
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            who = " ".join(Path(part).name for part in argv[:2])
            mark_interrupted(instance, pids, f"`{who}` ({signal.Signals(signum).name})")
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop(members: Members, signum: int, grace: float = STOP_GRACE_S) -> set[int]:
    """Send `signum` to each of `members()` (a process that appears meanwhile is asked too), wait up to `grace`
    seconds for them all to end, then kill those left. Returns the pid of every process it saw."""
    seen: set[int] = set()
    deadline = time.monotonic() + grace
    while current := members():
        for process in current:
            if process.pid not in seen:
                seen.add(process.pid)
                _send(process, signum)
        if time.monotonic() >= deadline:
            for process in current:
                _send(process, signal.SIGKILL)
            # Killed is dead once a zombie: waiting for its reaping (psutil.wait_procs on processes that are not our
            # children) took up to the whole wait when their parent had died too, and the bound with it.
            end = time.monotonic() + _KILL_WAIT_S
            while members() and time.monotonic() < end:
                time.sleep(_POLL_S)
            break
        time.sleep(_POLL_S)
    return seen


def group_members(pgid: int) -> Members:
    """The live processes of process group `pgid` (zombies are dead: their parent has not reaped them yet)."""

    def members() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except (OSError, psutil.Error):  # gone meanwhile
                continue
        return found

    return members


def helper_processes() -> list[psutil.Process]:
    """The processes this one started with `multiprocessing` (the CLI's helpers), and whatever they started; not
    multiprocessing's resource tracker, which ignores signals and ends with this process."""
    found = []
    for child in multiprocessing.active_children():
        try:
            helper = psutil.Process(child.pid)
            found += [process for process in (helper, *helper.children(recursive=True))
                      if process.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:  # ended meanwhile
            continue
    return found


def mark_interrupted(instance: dg.DagsterInstance, pids: Iterable[int], who: str) -> list[str]:
    """Mark failed the export runs whose process was one of `pids` and is gone now; their ids."""
    return mark_dead_runs(instance, pids=set(pids), reason=(
        f"interrupted: {who} was stopped while this run was exporting; its sessions are exported again by the next "
        "run"
    ))


def _send(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except psutil.Error:  # ended meanwhile
        pass

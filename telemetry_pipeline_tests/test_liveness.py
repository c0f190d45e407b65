"""Issue 18: is the run holding a claim still going? Real processes (alive, killed, zombie, on another host in a
UTS namespace of their own) and a real Dagster instance whose runs carry the tags an export run puts on itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest

from telemetry_pipeline.instance.liveness import ProcessIdentity, RunLiveness, host_identity
from telemetry_pipeline.warehouse import Holder


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def identity_of(proc: subprocess.Popen[bytes]) -> ProcessIdentity:
    return ProcessIdentity(host_identity(), proc.pid, psutil.Process(proc.pid).create_time())


@pytest.mark.processes
def test_a_process_is_running_until_it_is_gone(sleeper: subprocess.Popen[bytes]):
    me = ProcessIdentity.current()
    assert me.running() is True
    assert ProcessIdentity.from_tags(me.tags()) == ProcessIdentity(me.host, me.pid, round(me.started, 3))

    other = identity_of(sleeper)
    assert other.running() is True
    sleeper.kill()
    deadline = time.monotonic() + 10
    while psutil.Process(sleeper.pid).status() != psutil.STATUS_ZOMBIE:  # the signal takes a moment
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert other.running() is False, "killed and not reaped yet (a zombie): gone"
    sleeper.wait()
    assert other.running() is False, "reaped: no such process"


@pytest.mark.processes
def test_a_pid_that_now_belongs_to_another_process_is_not_the_run(sleeper: subprocess.Popen[bytes]):
    """Pids are reused: the run's process had this pid, but started earlier than the process that has it now."""
    now = identity_of(sleeper)
    before = ProcessIdentity(now.host, now.pid, now.started - 30.0)
    assert now.running() is True
    assert before.running() is False


@pytest.mark.processes
def test_a_process_on_another_host_cannot_be_judged_from_here(tmp_path: Path):
    """Another host, for real: a process in a UTS namespace of its own, with its own host name."""
    script = ("import json; from telemetry_pipeline.instance.liveness import ProcessIdentity; "
              "print(json.dumps(ProcessIdentity.current().tags()))")
    done = subprocess.run(
        ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', "elsewhere", sys.executable, "-c", script],
        capture_output=True, text=True, check=True,
    )
    there = ProcessIdentity.from_tags(json.loads(done.stdout))
    assert there is not None and there.host.startswith("elsewhere@") and there.host != host_identity()
    assert there.running() is None, "a pid on another host means nothing here: the lease decides"


def started_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun:
    run = instance.create_run_for_job(dg.GraphDefinition(name="g").to_job(), tags=tags)
    instance.handle_run_event(run.run_id, dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.RUN_START.value, job_name=run.job_name,
    ))
    started = instance.get_run_by_id(run.run_id)
    assert started is not None and started.status == dg.DagsterRunStatus.STARTED
    return started


@pytest.mark.processes
def test_run_liveness_marks_a_run_whose_process_is_gone_failed(sleeper: subprocess.Popen[bytes]):
    with dg.instance_for_test() as instance:
        check = RunLiveness(instance)
        alive = started_run(instance, identity_of(sleeper).tags())
        untagged = started_run(instance, {})
        assert check(alive.run_id) is Holder.ALIVE
        assert check(untagged.run_id) is Holder.UNKNOWN, "no process named: its lease decides"
        assert check("no-such-run") is Holder.DEAD

        sleeper.kill()
        sleeper.wait()
        assert check(alive.run_id) is Holder.DEAD
        dead = instance.get_run_by_id(alive.run_id)
        assert dead is not None and dead.status == dg.DagsterRunStatus.FAILURE, "marked failed, Dagster's way"
        [failure] = instance.all_logs(alive.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert f"pid {sleeper.pid}" in (failure.message or "") and "is gone" in (failure.message or "")
        assert check(alive.run_id) is Holder.DEAD, "finished now"
        assert check.describe(untagged.run_id).startswith("unknown")

"""Ctrl-C and SIGTERM are a normal day (issue 28): every process of `make run`, `make deploy` and a CLI export ends
within `STOP_BOUND_S` of the signal, even mid-fetch of a source that does not answer; the run it cut off is recorded
failed, saying it was interrupted; and its sessions are exported by the next run.

Each test waits on events, not on the clock: the fetch is in flight because the source double says a request for
the hung session has arrived (`wait_for_fetch`); the status is read once every process is gone, so nothing is
left to record it later. The one clock is the bound itself, which is what an operator (or an orchestrator's grace
period) holds us to.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest

from telemetry_pipeline_tests.conftest import Pipeline
from telemetry_pipeline_tests.dagster_dev import ROOT, free_port
from telemetry_pipeline_tests.source_double import SourceDouble

pytestmark = pytest.mark.processes

STOP_BOUND_S = 10.0
EXPORT = dg.AssetKey("signavio_export")
START_S = 240.0  # Dagster's processes starting and the sensor's first run, on a loaded machine


def add_sessions(source_double: SourceDouble, n: int, prefix: str) -> list[str]:
    return [source_double.add_good("extract", f"{prefix}-{i:03d}") for i in range(n)]


def the_tree(pid: int) -> list[psutil.Process]:
    """The process and every process under it, now."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def assert_all_gone_within_bound(leader: subprocess.Popen[bytes], tree: list[psutil.Process], started: float,
                                 log: Path) -> None:
    """`leader` (our child) and every process of `tree` ended within STOP_BOUND_S of `started`."""
    try:
        leader.wait(timeout=max(0.0, started + STOP_BOUND_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    others = [p for p in tree if p.pid != leader.pid]
    _, alive = psutil.wait_procs(others, timeout=max(0.0, started + STOP_BOUND_S - time.monotonic()))
    left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if leader.poll() is None:
        left.append(psutil.Process(leader.pid))
    assert not left, (
        f"still running {STOP_BOUND_S:.0f} s after the signal: "
        f"{[(p.pid, ' '.join(p.cmdline()[:4])) for p in left if p.is_running()]}\n"
        f"{log.read_text(errors='replace')[-3000:]}"
    )


def assert_failed_as_interrupted(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    assert run.status == dg.DagsterRunStatus.FAILURE, run.status
    [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "interrupted" in (failure.message or ""), failure.message


@contextlib.contextmanager
def killed_at_exit(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Whatever the test finds, nothing it started outlives it."""
    try:
        yield
    finally:
        for pid in [process.pid, *(p.pid for p in psutil.Process().children(recursive=True))]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


# -- `make run` ---------------------------------------------------------------------------------------------------


def start_make_run(home: Path, source_double: SourceDouble, log: Path) -> subprocess.Popen[bytes]:
    """What `make run` starts once its sources are configured: `python -m telemetry_pipeline.instance dg dev`,
    in a process group of its own (a terminal's Ctrl-C reaches the whole group)."""
    ours = ("DAGSTER_", "SIGNAVIO_", "EXTRACT_", "AGENT_", "AGORA_", "TELEMETRY_", "WAREHOUSE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)} | {
        "TELEMETRY_PIPELINE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"),
        "EXTRACT_SERVICE_URL": source_double.url, "AGENT_METRICS_SESSIONS_PATH": "",
        "SENSOR_INTERVAL_SECONDS": "2", "SESSION_SETTLE_SECONDS": "0", "AGENT_NAME": "test-agent",
    }
    bin_dir = Path(sys.executable).parent
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "telemetry_pipeline.instance", str(bin_dir / "dg"), "dev", "-h", "127.0.0.1",
             "-p", str(free_port()), "-w", str(ROOT / "workspace.yaml")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def test_make_run_stopped_with_ctrl_c_mid_fetch_ends_within_the_bound_and_exports_those_sessions_when_started_again(
    tmp_path: Path, source_double: SourceDouble
):
    home, log = tmp_path / "home", tmp_path / "make_run.log"
    keys = add_sessions(source_double, 4, "ctrl-c")
    source_double.hang("extract", "ctrl-c-003")  # the sensor's run waits on a source that does not answer
    dev = start_make_run(home, source_double, log)
    with killed_at_exit(dev):
        source_double.wait_for_fetch(keys[3], START_S)
        tree = the_tree(dev.pid)
        before = log.stat().st_size
        started = time.monotonic()
        os.killpg(dev.pid, signal.SIGINT)  # Ctrl-C
        assert_all_gone_within_bound(dev, tree, started, log)
    assert dev.returncode == 128 + signal.SIGINT, "as a shell reports a command ended by Ctrl-C"
    after = log.read_bytes()[before:].decode(errors="replace")
    assert "Traceback" not in after and "Stack Trace" not in after and '  File "' not in after, after
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        assert instance.get_materialized_partitions(EXPORT) == set(), "nothing was exported before the Ctrl-C"
        cut_off = the_sensors_run(instance)
        assert_failed_as_interrupted(instance, cut_off)
    [failed] = [line for line in after.splitlines() if "RUN_FAILURE" in line and cut_off.run_id in line]  # one line
    assert "interrupted" in failed, after

    source_double.slow("extract", "ctrl-c-003", 0)  # the source answers again
    dev = start_make_run(home, source_double, log)  # started again
    with killed_at_exit(dev), dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        recovered = dg.RunsFilter(tags={"telemetry_pipeline/recovers": cut_off.run_id},
                                  statuses=[dg.DagsterRunStatus.SUCCESS])
        deadline = time.monotonic() + START_S
        while not instance.get_runs(recovered):
            assert time.monotonic() < deadline, f"the cut-off run's sessions not exported again:\n{log.read_text()}"
            time.sleep(0.5)
        assert instance.get_materialized_partitions(EXPORT) == set(keys)
        [recovering] = instance.get_runs(recovered)
        tree = the_tree(dev.pid)
        started = time.monotonic()
        os.killpg(dev.pid, signal.SIGTERM)  # a service manager stopping it: the same bound, nothing cut off
        assert_all_gone_within_bound(dev, tree, started, log)
    assert recovering.tags["dagster/sensor_name"] == "new_sessions_sensor", "the sensor's next run, no lease waited"


def the_sensors_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    """The one run the sensor launched. (Started at the top of an hour, the hourly schedule launches one too.)"""
    [run] = instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": "new_sessions_sensor"}))
    return run


# -- a CLI export -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_cli_export_stopped_mid_fetch_ends_within_the_bound_and_says_what_it_did(
    pipeline: Pipeline, source_double: SourceDouble, tmp_path: Path, how: str
):
    """Two runs at once (EXPORT_WORKERS=2: this process and a helper), each waiting on a source that does not
    answer. Ctrl-C reaches the whole process group; a service manager's SIGTERM only the command."""
    pipeline.configure(batch_size=2, export_workers=2)
    keys = add_sessions(source_double, 4, how)
    for key in (keys[1], keys[3]):  # the last session of each run
        source_double.hang(*key.split(":"))
    out, err = tmp_path / "export.out", tmp_path / "export.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "telemetry_pipeline", "export", *keys], stdout=stdout,
                                stderr=stderr, env=pipeline.environment(), start_new_session=True)
    with killed_at_exit(proc):
        source_double.wait_for_fetch(keys[1], START_S)
        source_double.wait_for_fetch(keys[3], START_S)
        tree = the_tree(proc.pid)
        started = time.monotonic()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        assert_all_gone_within_bound(proc, tree, started, err)

    assert proc.returncode == 130, err.read_text()[-3000:]
    result = json.loads(out.read_text())
    assert result["status"] == "interrupted" and result["total_count"] == 4
    assert {r["session_id"]: r["status"] for r in result["results"]} == dict.fromkeys(keys, "failed")
    assert all(r["error"].startswith("interrupted:") for r in result["results"]), result["results"]
    with dg.DagsterInstance.from_config(str(pipeline.settings.dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2, "no run was started after the signal"
        for run in runs:
            assert_failed_as_interrupted(instance, run)

    for key in keys:
        source_double.slow(*key.split(":"), 0)
    code, again = pipeline.cli("export", *keys)  # the next export takes them at once: no claim is left standing
    assert code == 0 and again["exported_count"] == 4, again


# -- `make deploy` --------------------------------------------------------------------------------------------------


def test_make_deploy_stopped_by_its_service_manager_mid_fetch_ends_within_the_bound(
    tmp_path: Path, source_double: SourceDouble, postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    """`deploy/start.sh` (what `make deploy` runs: code server, daemon, webserver, each under
    `python -m telemetry_pipeline.instance`) gets SIGTERM alone, as a container's first process does from
    `docker stop`: it stops its three processes, and they stop theirs, the run cut off mid-fetch included."""
    home, log = tmp_path / "home", tmp_path / "deploy.log"
    keys = add_sessions(source_double, 3, "deploy")
    source_double.hang("extract", "deploy-002")
    ours = ("DAGSTER_", "SIGNAVIO_", "EXTRACT_", "AGENT_", "AGORA_", "TELEMETRY_", "WAREHOUSE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)} | {
        "BIN": str(Path(sys.executable).parent), "DAGSTER_POSTGRES_URL": postgres_url,
        "TELEMETRY_PIPELINE_HOME": str(home), "WEBSERVER_PORT": str(free_port()), "CODE_SERVER_PORT": str(free_port()),
        "EXTRACT_SERVICE_URL": source_double.url, "AGENT_METRICS_SESSIONS_PATH": "",
        "SENSOR_INTERVAL_SECONDS": "2", "SESSION_SETTLE_SECONDS": "0", "AGENT_NAME": "deploy-agent",
    }
    with log.open("wb") as out:
        deploy = subprocess.Popen([str(ROOT / "deploy" / "start.sh")], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    with killed_at_exit(deploy):
        source_double.wait_for_fetch(keys[2], START_S)
        tree = the_tree(deploy.pid)
        started = time.monotonic()
        deploy.send_signal(signal.SIGTERM)
        assert_all_gone_within_bound(deploy, tree, started, log)
    assert deploy.returncode == 128 + signal.SIGTERM

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", postgres_url)  # what deploy/dagster.yaml reads
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        assert instance.get_materialized_partitions(EXPORT) == set()
        cut_off = the_sensors_run(instance)
        assert_failed_as_interrupted(instance, cut_off)

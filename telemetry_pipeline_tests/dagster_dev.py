"""A real `dagster dev` (webserver + daemon + code server) on a free port, over the simulator on
loopback, with the outbox as destination: what `make run` starts, for the UI and GraphQL tests.

The sources' listing is switched off (`*_SESSIONS_PATH=''`), so the sensor discovers nothing and every
export in these tests is one that a test asked for.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from telemetry_pipeline.instance import dagster_environment, prepare_dagster_home
from telemetry_pipeline.simulate import SimulationConfig, Simulator

ROOT = Path(__file__).resolve().parent.parent
LOCATION = "telemetry_pipeline"  # workspace.yaml's location_name
REPOSITORY = "__repository__"
STARTUP_SECONDS = 240.0


@dataclass
class DagsterDev:
    url: str
    port: int
    home: Path
    simulator: Simulator

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    home = tmp_path_factory.mktemp("ui-home")
    dagster_home = prepare_dagster_home(home / "dagster_home")
    with Simulator(SimulationConfig(sessions=12, events_per_session=24, seed=5)) as simulator:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNAVIO_", "AGORA_", "OTLP_"))}
        env |= {
            "TELEMETRY_PIPELINE_HOME": str(home), "DAGSTER_HOME": str(dagster_home),
            "EXTRACT_SERVICE_URL": simulator.url, "AGENT_METRICS_BASE_URL": simulator.url,
            "EXTRACT_SESSIONS_PATH": "", "AGENT_METRICS_SESSIONS_PATH": "",
        }
        # What `make run` starts dagster dev with (RUN_BOOKKEEPING=full): a failed session shows as *Failed*.
        env |= dagster_environment("full")
        port = free_port()
        log = (home / "dagster_dev.log").open("wb")
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dg"), "dev", "-h", "127.0.0.1", "-p", str(port), "-w",
             str(ROOT / "workspace.yaml")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        dev = DagsterDev(url=f"http://127.0.0.1:{port}", port=port, home=home, simulator=simulator)
        try:
            _wait_until_loaded(dev, process, home / "dagster_dev.log")
            yield dev
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # its own group: webserver, daemon, code server
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


def _wait_until_loaded(dev: DagsterDev, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            data = dev.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                               "locationOrLoadError { __typename } } } } }")
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                kinds = {e["locationOrLoadError"]["__typename"] for e in entries}
                assert kinds == {"RepositoryLocation"}, f"code location failed to load:\n{log.read_text()[-3000:]}"
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"dagster dev not ready after {STARTUP_SECONDS:.0f}s:\n{log.read_text()[-3000:]}")


def wait_for_run(dev: DagsterDev, run_id: str, timeout: float = 240.0) -> str:
    """The run's final status (SUCCESS, FAILURE, CANCELED)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dev.graphql(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id}
        )["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1.0)
    raise TimeoutError(f"run {run_id} not finished after {timeout:.0f}s")

"""The production deployment for real: `deploy/start.sh` (what `make deploy` runs) starts a gRPC code server,
dagster-daemon and dagster-webserver against the PostgreSQL instance (`deploy/dagster.yaml` as shipped);
the daemon's `new_sessions_sensor` discovers the simulator's sessions and launches their export to the
outbox; the result is read through the webserver's GraphQL API. The processes run in their own process
group, which the test always ends (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from telemetry_pipeline.simulate import SimulationConfig, Simulator
from telemetry_pipeline_tests.conftest import outbox_uploads

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = 6

STATUS_QUERY = """
query Export($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions unmaterializedPartitions }
      }
    }
  }
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 100) {
        partition runId
        metadataEntries { label ... on TextMetadataEntry { text } }
      }
    }
  }
  runsOrError(filter: {tags: [{key: "dagster/sensor_name", value: "new_sessions_sensor"}]}) {
    ... on Runs { results { runId status } }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deployment(tmp_path: Path, postgres_url: str) -> Iterator[tuple[str, Path]]:
    """(webserver URL, pipeline home) of the three processes, ended whatever happens."""
    home = tmp_path / "home"
    log = (tmp_path / "deploy.log").open("wb")
    with Simulator(SimulationConfig(sessions=SESSIONS, events_per_session=4, seed=5)) as sim:
        port = _free_port()
        ours = ("DAGSTER_", "SIGNAVIO_", "EXTRACT_", "AGENT_")
        keep = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        env = {
            **keep,
            "BIN": str(Path(sys.executable).parent),
            "DAGSTER_POSTGRES_URL": postgres_url,
            "TELEMETRY_PIPELINE_HOME": str(home),  # DAGSTER_HOME defaults to <home>/dagster_home
            "WEBSERVER_PORT": str(port),
            "CODE_SERVER_PORT": str(_free_port()),
            "EXTRACT_SERVICE_URL": sim.url,
            "AGENT_METRICS_BASE_URL": sim.url,
            "AGENT_NAME": "deploy-agent",
            "SENSOR_INTERVAL_SECONDS": "5",
        }
        proc = subprocess.Popen([str(ROOT / "deploy" / "start.sh")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield f"http://127.0.0.1:{port}", home
        finally:
            _end_group(proc)
            log.close()
            sys.stderr.write((tmp_path / "deploy.log").read_text(errors="replace")[-4000:])


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):  # a graceful stop, then a sure one
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.2)


def graphql(url: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.mark.processes
def test_three_processes_discover_export_and_answer_through_graphql(deployment: tuple[str, Path]) -> None:
    url, home = deployment
    key = {"path": ["signavio_export"]}
    deadline = time.monotonic() + 300
    data: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            data = graphql(url, STATUS_QUERY, {"key": key})
        except (httpx.TransportError, httpx.HTTPStatusError, KeyError):
            data = {}  # the webserver is still starting
        statuses = (data.get("assetNodeOrError") or {}).get("assetPartitionStatuses") or {}
        runs = (data.get("runsOrError") or {}).get("results") or []
        finished = runs and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
        if len(statuses.get("materializedPartitions", [])) == SESSIONS and finished:
            break
        time.sleep(2)
    else:
        pytest.fail(f"not all {SESSIONS} sessions exported in time; last answer: {data}")

    statuses = data["assetNodeOrError"]["assetPartitionStatuses"]
    assert statuses["failedPartitions"] == [] and statuses["unmaterializedPartitions"] == []
    assert all(k.split(":")[0] in ("extract", "agent_telemetry") for k in statuses["materializedPartitions"])
    runs = data["runsOrError"]["results"]
    assert runs and {r["status"] for r in runs} == {"SUCCESS"}, "launched by the daemon's sensor"
    materializations = data["assetOrError"]["assetMaterializations"]
    assert {m["partition"] for m in materializations} == set(statuses["materializedPartitions"])
    for m in materializations:
        meta = {e["label"]: e.get("text") for e in m["metadataEntries"]}
        assert meta["ingestion_status"] == "OUTBOX" and meta["execution_id"]
        assert m["runId"] in {r["runId"] for r in runs}
    uploads = outbox_uploads(home)
    assert {u.name for u in uploads} >= {e.get("text") for m in materializations for e in m["metadataEntries"]
                                           if e["label"] == "execution_id"}

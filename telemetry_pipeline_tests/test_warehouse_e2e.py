"""Issue 12: runs that can start on any host. Real processes, a real PostgreSQL, the Signavio double.

A "host" is a `python -m telemetry_pipeline ...` process with a working directory and a pipeline home of its
own; two hosts share only what a containerised deployment shares: the PostgreSQL warehouse (`WAREHOUSE_URL`)
and a PostgreSQL Dagster instance (their `dagster.yaml` point at one database). Invariants, as in
test_faults.py: every session in exactly one upload and one materialisation, one row per key at Signavio,
nothing marked exported that Signavio did not confirm.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import dagster as dg
import duckdb
import psycopg2
import pytest

from telemetry_pipeline import cli
from telemetry_pipeline.settings import Secret, configured_warehouse
from telemetry_pipeline.warehouse.migrations import LATEST_VERSION
from telemetry_pipeline.warehouse.schema import ExportRecord
from telemetry_pipeline_tests.conftest import TOKEN, Pipeline, outbox_uploads, uploads_by_table
from telemetry_pipeline_tests.postgres import create_database, drop_database
from telemetry_pipeline_tests.private_postgres import PrivateCluster
from telemetry_pipeline_tests.private_postgres import private_postgres as private_postgres
from telemetry_pipeline_tests.signavio_double import SignavioDouble
from telemetry_pipeline_tests.source_double import SourceDouble
from telemetry_pipeline_tests.test_agora_otlp import raw_rows
from telemetry_pipeline_tests.test_faults import (
    EXPORT,
    RUNS,
    Export,
    add_good,
    assert_delivered_exactly_once,
    posted_rows,
    wait_for,
)

# Short enough to wait out after a kill, long enough that a live run's renewals (every third of it) never
# miss it while several exporter processes share 2 cores, and that an export process started on another
# host right after the kill (~5 s to start on a loaded machine) claims within the dead run's lease.
LEASE = 10.0


@dataclass
class Host:
    """One container's worth of a deployment: its own directory and home, the shared services by URL."""

    workdir: Path
    env: dict[str, str]
    hostname: str | None = None  # a host name of its own, in a UTS namespace: another host for `liveness`

    def start(self, *argv: str) -> Export:
        n = len(list(self.workdir.glob("cmd-*.out")))
        out, err = self.workdir / f"cmd-{n}.out", self.workdir / f"cmd-{n}.err"
        command = [sys.executable, "-m", "telemetry_pipeline", *argv]
        if self.hostname:
            command = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname, *command]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(command, cwd=self.workdir, env=self.env, stdout=stdout, stderr=stderr)
        return Export(proc, out)

    def run(self, *argv: str, timeout: float = 120) -> dict[str, Any]:
        return self.start(*argv).result(timeout)

    def check(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """`check` with this host's environment, in this process (a second process would only cost time):
        (the whole answer, its warehouse entry)."""
        out = io.StringIO()
        # The host's environment for the duration (secrets are bound from it, as in its own process).
        with mock.patch.dict(os.environ, self.env, clear=True), contextlib.redirect_stdout(out):
            cli.main(["check"])
        answer = json.loads(out.getvalue())
        [warehouse] = [c for c in answer["checks"] if c["name"] == "warehouse"]
        return answer, warehouse


def base_env(source: SourceDouble, api: SignavioDouble, warehouse_url: str) -> dict[str, str]:
    prefixes = ("SIGNAVIO_", "EXTRACT_", "AGENT_", "AGORA_", "WAREHOUSE_", "CLAIM_", "DAGSTER_", "TELEMETRY_", "OTLP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update({
        "EXTRACT_SERVICE_URL": source.url, "AGENT_NAME": "test-agent", "SOURCE_MAX_RETRIES": "2",
        "HTTP_RETRY_WAIT_INITIAL": "0.01", "SIGNAVIO_API_URL": api.url, "SIGNAVIO_API_KEY": api.token,
        "SIGNAVIO_POLL_INTERVAL": "0.01", "SIGNAVIO_POLL_DEADLINE": "10s", "WAREHOUSE_URL": warehouse_url,
        "CLAIM_LEASE_SECONDS": str(LEASE),
    })
    return env


@pytest.fixture
def source() -> Iterator[SourceDouble]:
    with SourceDouble() as double:
        yield double


@pytest.fixture
def api() -> Iterator[SignavioDouble]:
    with SignavioDouble(token=TOKEN) as double:
        yield double


@pytest.fixture
def dagster_db() -> Iterator[str]:
    url = create_database("tp_dagster")
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def hosts(tmp_path: Path, source: SourceDouble, api: SignavioDouble, postgres_url: str,
          dagster_db: str) -> tuple[Host, Host]:
    instance_yaml = (
        "storage:\n  postgres:\n"
        f"    postgres_url: {dagster_db.replace('postgresql://', 'postgresql+psycopg2://')}\n"
        "telemetry:\n  enabled: false\n"
    )
    made = []
    for name in ("host-a", "host-b"):
        workdir = tmp_path / name
        (workdir / "dagster_home").mkdir(parents=True)
        (workdir / "dagster_home" / "dagster.yaml").write_text(instance_yaml)
        env = base_env(source, api, postgres_url)
        env.update({"TELEMETRY_PIPELINE_HOME": str(workdir / "home"), "DAGSTER_HOME": str(workdir / "dagster_home")})
        made.append(Host(workdir, env, hostname=None if name == "host-a" else name))
    with shared_instance(made[0]):  # create the instance's tables once, before two processes race to
        pass
    return made[0], made[1]


def shared_instance(host: Host) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(host.env["DAGSTER_HOME"])


def warehouse_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    con = psycopg2.connect(url)
    try:
        with con.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        con.close()


def claimers(url: str) -> int:
    """How many runs hold claims (0 before the first host created the warehouse's tables)."""
    try:
        [(count,)] = warehouse_rows(url, "SELECT count(DISTINCT run_id) FROM export_claims")
    except psycopg2.errors.UndefinedTable:
        return 0
    return count


def assert_each_once(api: SignavioDouble, instance: dg.DagsterInstance, keys: list[str]) -> None:
    uploaded = Counter(r["agent_run_id"] for rows in posted_rows(api, RUNS) for r in rows)
    assert uploaded == {k.partition(":")[2]: 1 for k in keys}, "each session in exactly one upload"
    for key in keys:
        page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=EXPORT, asset_partitions=[key]), limit=5)
        assert len(page.records) == 1, f"{key}: one materialisation"
    assert_delivered_exactly_once(api, instance, keys)


# -- two hosts ----------------------------------------------------------------------------------------------------


@pytest.mark.processes
def test_two_hosts_export_overlapping_sessions_at_once(
    hosts: tuple[Host, Host], source: SourceDouble, api: SignavioDouble, postgres_url: str
):
    a, b = hosts
    keys = add_good(source, 8, "o")
    first, second = keys[:6], keys[2:]  # overlapping on keys[2:6]
    for key in keys:  # both runs are surely in flight together: nobody answers until both have claimed
        source.slow("extract", key.partition(":")[2], 60)

    run_a, run_b = a.start("export", *first), b.start("export", *second)
    # Both hold claims at once. (Which keys each run holds first depends on the order in which the two hosts'
    # registrations interleave, which decides their runs' ranges.)
    wait_for(lambda: claimers(postgres_url) == 2, run_a, "both hosts holding claims")
    for key in keys:
        source.slow("extract", key.partition(":")[2], 0)
    out_a, out_b = run_a.result(), run_b.result()

    for run, out in ((run_a, out_a), (run_b, out_b)):  # 3: some sessions asked for were left to another run
        assert run.proc.returncode == (3 if out["held_count"] else 0), out
    assert out_a["exported_count"] + out_b["exported_count"] == 8, "every session exported by one of them"
    assert out_a["skipped_count"] + out_b["skipped_count"] == 4, "the overlap was left to whoever claimed it"
    for out in (out_a, out_b):
        for result in out["results"]:
            if result["status"] == "skipped":  # held by the other run, or exported by it once this one claimed
                assert result["reason"].startswith(("being exported by run ", "exported meanwhile by run ")), result
    assert all(source.hits[k] == 1 for k in keys), "no session was even fetched twice"
    with shared_instance(a) as instance:
        assert_each_once(api, instance, keys)
    assert warehouse_rows(postgres_url, "SELECT count(*) FROM sessions") == [(8,)]
    assert warehouse_rows(postgres_url, "SELECT count(*) FROM export_claims") == [(0,)], "all released"
    for host in (a, b):  # nothing kept on either host: no warehouse file, no outbox, not even the home
        assert not Path(host.env["TELEMETRY_PIPELINE_HOME"]).exists()


@pytest.mark.processes
def test_a_host_killed_mid_batch_loses_its_sessions_to_the_other_once_its_lease_ran_out(
    hosts: tuple[Host, Host], source: SourceDouble, api: SignavioDouble, postgres_url: str
):
    a, b = hosts
    keys = add_good(source, 8, "k")
    first, second = keys[:6], keys[2:]
    for key in first:
        source.slow("extract", key.partition(":")[2], 60)

    run_a = a.start("export", *first)
    wait_for(lambda: all(source.hits[k] for k in first), run_a, "host A fetching all of its sessions")
    out_b = b.run("export", *second)  # while A is alive, renewing its lease
    assert out_b["exported_count"] == 2 and out_b["skipped_count"] == 4, out_b

    os.kill(run_a.proc.pid, signal.SIGKILL)
    assert run_a.proc.wait(timeout=10) == -signal.SIGKILL
    for key in first:
        source.slow("extract", key.partition(":")[2], 0)
    with shared_instance(a) as instance:
        [dead] = [r for r in instance.get_runs() if r.tags.get("dagster/asset_partition_range_start") == first[0]]
        assert dead.status == dg.DagsterRunStatus.STARTED, "its record says STARTED: only the lease can tell"
    held = dict(warehouse_rows(postgres_url, "SELECT session_key, run_id FROM export_claims"))
    assert held == dict.fromkeys(first, dead.run_id)
    assert {r["agent_run_id"] for rows in posted_rows(api, RUNS) for r in rows} == {"k-006", "k-007"}

    early = b.start("export", "--pending")  # on host B a pid of host A means nothing: not before the lease
    out_early = early.result()
    assert early.proc.returncode == 3 and out_early["status"] == "held", out_early
    assert out_early["exported_count"] == 0 and out_early["held_count"] == 6
    held_early = [r for r in out_early["results"] if "held_by" in r]
    assert [r["session_id"] for r in held_early] == first, "A's six; B had exported its own two before"
    for result in held_early:
        assert result["held_by"]["run_id"] == dead.run_id
        assert result["held_by"]["alive"].startswith("unknown (on another host")

    lease_until = dt.datetime.fromisoformat(held_early[0]["held_by"]["lease_until"])
    # Waits for the dead run's lease to lapse, then exports.
    out = b.run("export", "--pending", "--wait", "--wait-timeout", "60")

    assert dt.datetime.now(dt.UTC) >= lease_until, "not before the lease ran out"
    assert out["exported_count"] == 6 and out["status"] == "ok", out
    with shared_instance(b) as instance:
        assert_each_once(api, instance, keys)
    assert warehouse_rows(postgres_url, "SELECT count(*) FROM export_claims") == [(0,)]


# -- PostgreSQL restarted in the middle of a run ---------------------------------------------------------------------


@pytest.mark.processes
def test_postgres_going_away_mid_run_fails_it_clearly_and_the_next_run_exports_everything(
    private_postgres: PrivateCluster, tmp_path: Path, source: SourceDouble, api: SignavioDouble
):
    url = private_postgres.url(password="pg-s3cret-do-not-leak")  # trust auth: any password is accepted
    env = base_env(source, api, url)
    env.update({"TELEMETRY_PIPELINE_HOME": str(tmp_path / "home")})
    host = Host(tmp_path, env)
    keys = add_good(source, 4, "p")
    source.slow("extract", "p-003", 60)

    running = host.start("export", *keys)
    wait_for(lambda: source.hits[keys[3]] > 0, running, "the run fetching (its claims are in PostgreSQL)")
    private_postgres.stop()
    source.slow("extract", "p-003", 0)
    out = running.result()

    assert running.proc.returncode == 1 and out["failed_count"] == 4, out
    where = f"PostgreSQL postgres@127.0.0.1:{private_postgres.port}/postgres"
    for result in out["results"]:
        assert result["error"].startswith(f"WarehouseUnavailable: {where} is unreachable (storing raw payloads)")
    assert "pg-s3cret-do-not-leak" not in json.dumps(out)
    assert "pg-s3cret-do-not-leak" not in running.out.with_suffix(".err").read_text()
    assert not api.posts(), "nothing was uploaded"
    check, warehouse = host.check()
    assert not check["healthy"] and not warehouse["ok"] and warehouse["detail"].startswith(f"{where} is unreachable")

    private_postgres.start()
    out = host.run("export", "--pending")

    assert out["exported_count"] == 4 and out["status"] == "ok", out
    with dg.DagsterInstance.from_config(str(tmp_path / "home" / "dagster_home")) as instance:
        assert_each_once(api, instance, keys)
    check, warehouse = host.check()
    assert check["healthy"] and warehouse["detail"] == f"{where}, schema version {LATEST_VERSION}"


# -- the embedded default: SIGKILL in the middle of a DuckDB write ---------------------------------------------------


@pytest.mark.processes
def test_killed_in_the_middle_of_a_duckdb_write_the_file_opens_and_nothing_confirmed_is_lost(
    pipeline: Pipeline, home: Path, instance: dg.DagsterInstance, source_double: SourceDouble, tmp_path: Path
):
    """To the outbox: an 18 MB upload to the double would test the HTTP timeout, not the file."""
    from telemetry_pipeline_tests.source_double import agent_event
    from telemetry_pipeline_tests.test_faults import start_export

    pipeline.configure(warehouse={"lease_seconds": LEASE})
    confirmed = add_good(source_double, 3, "c")
    assert pipeline.cli("export", *confirmed)[0] == 0
    path = home / "warehouse.duckdb"
    snapshot_sql = ("SELECT s.session_key, s.event_count, (SELECT count(*) FROM events e WHERE "
                    "e.session_key = s.session_key) FROM sessions s WHERE s.session_key LIKE 'extract:c-%' ORDER BY 1")
    raw_sql = "SELECT session_key, sha256 FROM raw_telemetry WHERE session_key LIKE 'extract:c-%' ORDER BY 1"
    with duckdb.connect(str(path), read_only=True) as con:
        before = con.execute(snapshot_sql).fetchall(), raw_rows(home, raw_sql)
    big = source_double.add("extract", "big", {"events": [
        agent_event(1736937000000 + i, "agent_thought", step_name=f"step {i % 7}", text="x" * 200, n=i)
        for i in range(60_000)
    ]})
    wal = path.with_name(path.name + ".wal")
    assert not wal.exists(), "the first run checkpointed its writes into the file"

    # claims (a small write), the fetch, the 18 MB payload (to its SQLite file), then 60,000 events: DuckDB writes
    # them to its log, or, past its threshold, to the file itself before it commits
    size = path.stat().st_size
    killed = start_export(pipeline, tmp_path, big)
    wait_for(lambda: (wal.exists() and wal.stat().st_size > 1_000_000) or path.stat().st_size > size + 1_000_000,
             killed, "the big write under way", timeout=120)
    os.kill(killed.proc.pid, signal.SIGKILL)
    assert killed.proc.wait(timeout=10) == -signal.SIGKILL
    assert len(outbox_uploads(home)) == 2, "killed before any upload: only the first run's two tables"
    time.sleep(LEASE * 1.2)

    with duckdb.connect(str(path), read_only=True) as con:  # the file opens (its WAL replayed or dropped)
        assert (con.execute(snapshot_sql).fetchall(), raw_rows(home, raw_sql)) == before, "nothing confirmed was lost"
    code, out = pipeline.cli("export", "--pending")

    assert code == 0 and out["exported_count"] == 1, out
    uploaded = Counter(r["agent_run_id"] for r in uploads_by_table(home)[RUNS])
    assert uploaded == {"c-000": 1, "c-001": 1, "c-002": 1, "big": 1}, "the session was exported once"
    assert instance.get_materialized_partitions(EXPORT) == {*confirmed, big}
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT event_count FROM sessions WHERE session_key = ?", [big]).fetchall() == [(60_000,)]


# -- operating it: check, and moving a DuckDB home into PostgreSQL ----------------------------------------------------


def test_copy_a_duckdb_home_into_postgres_idempotently_then_run_there(
    pipeline: Pipeline, signavio: SignavioDouble, home: Path, instance: dg.DagsterInstance,
    source_double: SourceDouble, postgres_url: str,
):
    old = add_good(source_double, 3, "d")
    assert pipeline.cli("export", *old)[0] == 0
    gone = "extract:pruned-long-ago"  # retention deleted its run and kept its record (test_batching.py)
    configured_warehouse(pipeline.settings).archive_exports(
        [ExportRecord(gone, dt.datetime(2026, 1, 5, tzinfo=dt.UTC), "execution-1", "COMPLETED", "run-1")]
    )
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        duck_events = con.execute("SELECT event_id, session_key, event_time, attributes::VARCHAR FROM events "
                                  "ORDER BY 1").fetchall()
    duck_raw = raw_rows(home, "SELECT session_key, sha256 FROM raw_telemetry ORDER BY 1")

    code, out = pipeline.cli("warehouse", "copy", "--to", postgres_url)
    assert code == 0 and out["copied"] == {"raw_telemetry": 3, "sessions": 3, "events": len(duck_events),
                                           "deviations": 0, "export_archive": 1}, out
    code, again = pipeline.cli("warehouse", "copy", "--to", postgres_url)
    assert code == 0 and again["copied"] == {"raw_telemetry": 0, "sessions": 0, "events": 0, "deviations": 0,
                                             "export_archive": 0}, "idempotent"
    assert again["already_there"] == {"raw_telemetry": 3, "sessions": 3}
    pg_events = warehouse_rows(postgres_url, "SELECT event_id, session_key, event_time, attributes::text FROM events "
                                             "ORDER BY 1")
    assert [(e[0], e[1], e[2]) for e in pg_events] == [(e[0], e[1], e[2]) for e in duck_events]
    assert [json.loads(e[3]) for e in pg_events] == [json.loads(e[3]) for e in duck_events]
    assert warehouse_rows(postgres_url, "SELECT session_key, sha256 FROM raw_telemetry ORDER BY 1") == duck_raw

    pipeline.configure(warehouse={"url": Secret(postgres_url)})  # the move: from now on runs use PostgreSQL
    code, out = pipeline.cli("check")
    [warehouse] = [c for c in out["checks"] if c["name"] == "warehouse"]
    assert warehouse["ok"] and warehouse["detail"].startswith("PostgreSQL postgres@127.0.0.1:5432/")
    [record] = pipeline.cli("status", gone)[1]
    assert (record["exported"], record["execution_id"]) == (True, "execution-1"), "the archive moved too"
    new = add_good(source_double, 2, "n")
    assert pipeline.cli("discover")[1]["new_count"] == 2
    code, out = pipeline.cli("export", "--pending")
    assert code == 0 and out["exported_count"] == 2, "the history moved nowhere: only the new ones are pending"
    assert warehouse_rows(postgres_url, "SELECT count(*) FROM sessions") == [(5,)]
    assert_delivered_exactly_once(signavio, instance, old + new)

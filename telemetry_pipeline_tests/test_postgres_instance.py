"""The production instance (`deploy/dagster.yaml` as shipped) on a real PostgreSQL database: the pooled
storage bounds the connections a process opens, and `RUN_BOOKKEEPING` changes what a run records."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg2
import pytest
import yaml
from dagster_postgres.event_log import PostgresEventLogStorage

from telemetry_pipeline.instance import UnmeasuredDagsterVersion, dagster_environment, open_instance
from telemetry_pipeline.instance.pooled_postgres import (
    PooledEventLogStorage,
    PooledPostgresStorage,
    PoolSettings,
    SharedEngine,
    driver_url,
    pooled_engine,
)
from telemetry_pipeline.instance.retention import apply_retention
from telemetry_pipeline.settings import ConfigurationError, Settings, configured_warehouse, from_environment
from telemetry_pipeline.simulate import SimulationConfig, Simulator
from telemetry_pipeline_tests.conftest import Pipeline
from telemetry_pipeline_tests.postgres import SERVER, create_database, drop_database
from telemetry_pipeline_tests.storage_events import ASSET_KEYS_ROWS, history_events, storage_event

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "dagster.yaml"
EMIT = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
BATCH = "DAGSTER_EVENT_BATCH_SIZE"


def production_home(tmp_path: Path, postgres_url: str) -> dict[str, str]:
    """The environment of a user who copied deploy/dagster.yaml into DAGSTER_HOME and set the one variable."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(SHIPPED, dagster_home / "dagster.yaml")
    return {"DAGSTER_HOME": str(dagster_home), "DAGSTER_POSTGRES_URL": postgres_url,
            "TELEMETRY_PIPELINE_HOME": str(tmp_path / "home")}


def sessions_opened(postgres_url: str) -> int:
    """Connections ever opened to the test's database (PostgreSQL's own count, pg_stat_database.sessions)."""
    con = psycopg2.connect(f"{SERVER}/postgres")  # not the measured database, so not counted
    try:
        with con.cursor() as cur:
            cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (postgres_url.rsplit("/", 1)[1],))
            return int(cur.fetchone()[0])
    finally:
        con.close()


def run_cli(env: dict[str, str], *argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "telemetry_pipeline", *argv], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_the_shipped_config_reads_one_variable_and_keeps_it_out_of_the_instance_ref(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    password_free = yaml.safe_load(SHIPPED.read_text())["storage"]["custom"]["config"]["postgres_url"]
    assert password_free == {"env": "DAGSTER_POSTGRES_URL"}
    for name, value in production_home(tmp_path, postgres_url).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as instance:
        storages = (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
        engines = {id(storage._engine) for storage in storages}  # type: ignore[attr-defined]
        assert len(engines) == 1, "the three storages share one pool"
        instance.add_dynamic_partitions("agent_sessions", ["extract:a"])
        ref = instance.get_ref()
    assert ref.storage_data is not None and ref.storage_data.class_name == PooledPostgresStorage.__name__
    assert "DAGSTER_POSTGRES_URL" in ref.storage_data.config_yaml and SERVER not in ref.storage_data.config_yaml
    with dg.DagsterInstance.from_ref(ref) as worker:  # how run and step processes build it
        assert worker.get_dynamic_partitions("agent_sessions") == ["extract:a"]


def synchronous_commit(engine: Any) -> str:
    with engine.connect() as conn:
        return str(conn.exec_driver_sql("SHOW synchronous_commit").scalar())


def test_the_shipped_config_commits_dagsters_records_without_waiting_for_the_disk(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/dagster.yaml asks for `synchronous_commit: "off"` on the pool's connections, in every process that
    builds the instance (a run's from its ref too); without the key, PostgreSQL's default; a bare YAML off (a
    boolean) is refused by name instead of reaching the server."""
    for name, value in production_home(tmp_path, postgres_url).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as instance:
        assert synchronous_commit(instance.event_log_storage._engine) == "off"  # type: ignore[attr-defined]
        with dg.DagsterInstance.from_ref(instance.get_ref()) as worker:
            assert synchronous_commit(worker.run_storage._engine) == "off"  # type: ignore[attr-defined]
    default = PooledPostgresStorage(postgres_url)
    try:
        assert synchronous_commit(default.engine) == "on"
    finally:
        default.engine.dispose()

    config = Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml"
    config.write_text(config.read_text().replace('synchronous_commit: "off"', "synchronous_commit: off"))
    with pytest.raises(dg.DagsterInvalidConfigError, match="synchronous_commit"):
        dg.DagsterInstance.get()


def test_partition_membership_for_a_whole_history(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status rebuild asks which of every key ever materialised are still partitions."""
    for name, value in production_home(tmp_path, postgres_url).items():
        monkeypatch.setenv(name, value)
    known = [f"extract:k{i:05d}" for i in range(1500)]
    gone = [f"extract:g{i:05d}" for i in range(1500)]
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("agent_sessions", known)
        storage = instance.event_log_storage
        assert storage.get_existing_dynamic_partitions("agent_sessions", known + gone) == set(known)  # one read
        assert storage.get_existing_dynamic_partitions("agent_sessions", known[:10] + gone[:10]) == set(known[:10])
        assert storage.get_existing_dynamic_partitions("other", known) == set()


def test_a_process_rereads_partitions_whenever_another_changed_them(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in production_home(tmp_path, postgres_url).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as reader, dg.DagsterInstance.get() as writer:  # two processes' storages
        writer.add_dynamic_partitions("agent_sessions", ["extract:a", "extract:b"])
        assert reader.get_dynamic_partitions("agent_sessions") == ["extract:a", "extract:b"]
        writer.delete_dynamic_partition("agent_sessions", "extract:a")
        writer.add_dynamic_partitions("agent_sessions", ["extract:c"])  # the same count as before
        assert reader.get_dynamic_partitions("agent_sessions") == ["extract:b", "extract:c"]
        writer.delete_dynamic_partition("agent_sessions", "extract:c")  # the newest: max id drops, count too
        assert reader.get_dynamic_partitions("agent_sessions") == ["extract:b"]
        assert reader.get_dynamic_partitions("other") == []


def test_the_latest_asset_events_read_back_as_on_dagster_postgres(postgres_url: str) -> None:
    """`asset_keys` after the same events (`storage_events.HISTORY`): ours, whose materialisations are serialised
    once (`asset_keys.py`), has the same rows, byte for byte, as dagster-postgres' own event log."""
    events = history_events()
    theirs_url = create_database()
    rows = {}
    try:
        ours = PooledEventLogStorage(driver_url(postgres_url))
        ours.use(SharedEngine(pooled_engine(postgres_url, PoolSettings())))
        theirs = PostgresEventLogStorage(driver_url(theirs_url))
        for name, url, storage in (("dagster", theirs_url, theirs), ("ours", postgres_url, ours)):
            try:
                for event in events:
                    storage.store_event(event)
            finally:
                storage.dispose()
            with psycopg2.connect(url) as con, con.cursor() as cur:
                cur.execute(ASSET_KEYS_ROWS)
                rows[name] = cur.fetchall()
            con.close()
    finally:
        drop_database(theirs_url)
    assert len(rows["ours"]) == 3
    assert rows["ours"] == rows["dagster"]


def test_unfinished_partitions_match_dagster_postgres(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our one-query answer to "which partitions were planned and not materialised since" is dagster-postgres'."""
    for name, value in production_home(tmp_path, postgres_url).items():
        monkeypatch.setenv(name, value)
    planned, done = dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, dg.DagsterEventType.ASSET_MATERIALIZATION
    history = [(planned, "only-planned", "a"), (planned, "done", "a"), (done, "done", "a"), (done, "again", "b"),
               (planned, "again", "c"), (done, "only-done", "b"), (planned, "redo", "a"), (done, "redo", "a"),
               (planned, "redo", "d")]
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        for kind, key, run in history:
            storage.store_event(storage_event(kind, "signavio_export", f"extract:{key}", run))
        asset = dg.AssetKey("signavio_export")
        ours = storage.get_latest_asset_partition_materialization_attempts_without_materializations(asset)
        theirs = PostgresEventLogStorage.get_latest_asset_partition_materialization_attempts_without_materializations(
            storage, asset
        )
        assert ours == theirs
        assert {k: run for k, (run, _) in ours.items()} == {
            "extract:only-planned": "a", "extract:again": "c", "extract:redo": "d"
        }
        middle = sorted(event_id for _, event_id in ours.values())[1]
        assert storage.get_latest_asset_partition_materialization_attempts_without_materializations(
            asset, after_storage_id=middle
        ) == PostgresEventLogStorage.get_latest_asset_partition_materialization_attempts_without_materializations(
            storage, asset, after_storage_id=middle
        )


def test_driver_url() -> None:
    assert driver_url("postgresql://u:p@h:5432/d") == "postgresql+psycopg2://u:p@h:5432/d"
    assert driver_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"


@pytest.mark.processes
def test_a_1000_session_export_opens_at_most_pool_size_connections(tmp_path: Path, postgres_url: str) -> None:
    pool_size = yaml.safe_load(SHIPPED.read_text())["storage"]["custom"]["config"]["pool"]["size"]
    with Simulator(SimulationConfig(sessions=1000, events_per_session=2, seed=3)) as sim:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "SIGNAVIO_"))},
               **production_home(tmp_path, postgres_url),
               "EXTRACT_SERVICE_URL": sim.url, "AGENT_METRICS_BASE_URL": sim.url, "AGENT_NAME": "test-agent"}
        run_cli(env, "discover")  # creates the tables; the export below is measured alone
        before = sessions_opened(postgres_url)
        exported = run_cli(env, "export", "--pending")
        opened = sessions_opened(postgres_url) - before
    assert exported["exported_count"] == 1000, exported["results"][:3]
    # Each of the three storages checks its tables once, over a short connection, when a process builds the
    # instance; everything else goes through its pool. The export's two batches run in two processes
    # (EXPORT_WORKERS), each with a pool of its own. dagster-postgres alone opens thousands here.
    processes = Settings.export_workers
    print(f"connections opened by the export of 1,000 sessions in {processes} processes: {opened}")
    assert opened <= processes * (pool_size + 3), f"{opened} connections for 1,000 sessions"


@pytest.mark.parametrize("instance_kind", ["postgres", "embedded"])
@pytest.mark.parametrize(("bookkeeping", "planned_per_run", "failed_shows_as"), [
    ("lean", 1, None),
    ("full", 13, dg.AssetPartitionStatus.FAILED),
])
def test_run_bookkeeping_sets_what_a_run_records(
    tmp_path: Path, request: pytest.FixtureRequest, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch,
    instance_kind: str, bookkeeping: str, planned_per_run: int, failed_shows_as: dg.AssetPartitionStatus | None,
) -> None:
    """On the shipped PostgreSQL instance and on the embedded default (whose storage writes a run's planned events
    in one transaction per shard, `sqlite_storage.py`)."""
    if instance_kind == "postgres":
        postgres_url = request.getfixturevalue("postgres_url")
        env = production_home(tmp_path, postgres_url)
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", postgres_url)
    else:
        env = {"DAGSTER_HOME": str(pipeline.settings.dagster_home)}
    missing = "agora:unreachable"  # its source is not configured here: its session fails, the run with it
    with Simulator(SimulationConfig(sessions=12, events_per_session=2, seed=4)) as sim:
        pipeline.configure(dagster_home=Path(env["DAGSTER_HOME"]), run_bookkeeping=bookkeeping,
                           sources={"extract_url": sim.url, "agent_telemetry_url": sim.url})
        assert pipeline.cli("discover")[0] == 0
        with open_instance(Path(env["DAGSTER_HOME"])) as instance:
            instance.add_dynamic_partitions("agent_sessions", [missing])
        code, exported = pipeline.cli("export", "--pending")
        assert code == 1 and (exported["exported_count"], exported["failed_count"]) == (12, 1), exported
    assert EMIT not in os.environ and BATCH not in os.environ, "the CLI's Dagster settings end with its command"
    key = dg.AssetKey("signavio_export")
    with open_instance(Path(env["DAGSTER_HOME"])) as instance:
        runs = instance.get_run_records(dg.RunsFilter(job_name="export_sessions"))
        planned = [entry for run in runs for entry in instance.all_logs(
            run.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)]
        assert len(planned) == planned_per_run  # full: one per session, written by the storage as one batch
        keys = instance.get_dynamic_partitions("agent_sessions")
        status = instance.get_status_by_partition(key, keys, dg.DynamicPartitionsDefinition(name="agent_sessions"))
        assert status is not None
        assert status.get(missing) == failed_shows_as, "full: under the UI's Failed filter; lean: missing"
        done = [k for k, s in status.items() if s == dg.AssetPartitionStatus.MATERIALIZED]
        assert len(done) == 12 and missing not in done


def test_retention_on_the_postgres_instance_archives_then_deletes_old_runs(
    tmp_path: Path, postgres_url: str, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention finds each run's records between its start and end events: read on this storage too."""
    env = production_home(tmp_path, postgres_url)
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", postgres_url)
    with Simulator(SimulationConfig(sessions=3, events_per_session=2, seed=5)) as sim:
        pipeline.configure(dagster_home=Path(env["DAGSTER_HOME"]), batch_size=2,
                           sources={"extract_url": sim.url, "agent_telemetry_url": sim.url})
        assert pipeline.cli("discover")[0] == 0
        code, exported = pipeline.cli("export", "--pending")
        assert code == 0 and exported["exported_count"] == 3, exported
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        keys = instance.get_dynamic_partitions("agent_sessions")
        runs = instance.get_run_records(dg.RunsFilter(job_name="export_sessions"))
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        out = apply_retention(instance, configured_warehouse(pipeline.settings), 0, now=later)
        assert (sorted(out.pruned_keys), out.archived) == (sorted(keys), 3)
        assert sorted(out.deleted_runs) == sorted(r.dagster_run.run_id for r in runs) and len(runs) == 2
        assert not instance.get_run_records(dg.RunsFilter(job_name="export_sessions"))
    assert [s["exported"] for s in pipeline.cli("status", *keys)[1]] == [True] * 3, "the archive answers"


def test_run_bookkeeping_values() -> None:
    assert dagster_environment("lean", "1.13.27") == {EMIT: "true", BATCH: "1000"}
    assert dagster_environment("full", "1.13.27") == {EMIT: "false", BATCH: "1000"}
    with pytest.raises(UnmeasuredDagsterVersion, match=r"Dagster 1\.14\.0 .* measured on Dagster 1\.13 only"):
        dagster_environment("lean", "1.14.0")  # internal knobs: never set, nor dropped, unmeasured
    with pytest.raises(UnmeasuredDagsterVersion):
        dagster_environment("full", "1.12.9")
    with pytest.raises(ValueError, match="RUN_BOOKKEEPING"):
        dagster_environment("fast")
    with pytest.raises(ConfigurationError, match="RUN_BOOKKEEPING"):
        from_environment({"RUN_BOOKKEEPING": "fast"})

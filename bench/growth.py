"""Growth: how Dagster's costs grow with the export history (issue 11). For each history size, on one instance:

  status_query_s       the Partitions tab's GraphQL `assetPartitionStatuses` for signavio_export (after an untimed first
                       query that loads the code location), timed just after a
                       new key was added (what every sensor tick with new sessions causes: the cached status is keyed
                       by the hash of all keys, so it is rebuilt from the whole history), then once more (cached)
  floor_ms_per_session one export run over `--new` new partitions with a body that does nothing but report
                       (bench/floor.py's asset): Dagster's part of the cost per exported session
  pending_s            the pending-key computation the CLI and the schedule do (`history.pending_keys`)

History is written in bulk: materialisations of signavio_export (the same metadata our runs write), with a planned
event before each under `--bookkeeping full` (the default, as our runs write them), each chunk of 5,000 under a run
record of its own, through the event-log storage's batch insert (PostgreSQL's `store_event_batch`;
on SQLite the same insert statements, one transaction per chunk). The newest `--known` keys are partitions; the older
ones are registered no more (what retention's partition pruning leaves). Then our retention (`apply_retention`) runs as
the daily schedule would: it deletes the runs none of whose sessions is known and keeps their records in the
warehouse's `export_archive` (a DuckDB file here), so Dagster holds the history of the known sessions only.
`--no-retention` measures the history left in Dagster instead (the design before: 49.7 s at 1,000,000 on PostgreSQL).

    python bench/growth.py --instance postgres --history 10000,100000 [--known 100000] [--new 500]
Prints one JSON document (progress on stderr). PostgreSQL: a temporary database on `--postgres`
(default postgresql://postgres@127.0.0.1:5432), dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.events import (
    AssetMaterializationPlannedData,
    DagsterEvent,
    DagsterEventType,
    StepMaterializationData,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.event_log import DynamicPartitionsTable, SqlEventLogStorageTable
from dagster_postgres.event_log import PostgresEventLogStorage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from floor import export_nothing

from telemetry_pipeline.instance import dagster_settings
from telemetry_pipeline.instance.history import export_records, pending_keys
from telemetry_pipeline.instance.keys import SIGNAVIO_EXPORT_KEY
from telemetry_pipeline.instance.partitions import batched_ranges
from telemetry_pipeline.instance.retention import apply_retention
from telemetry_pipeline.names import AGENT_SESSIONS, EXPORT_JOB
from telemetry_pipeline.warehouse import DuckDBWarehouse, Warehouse

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 5_000
STATUS_QUERY = """
query Status($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions } } }
  }
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instance", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--history", default="10000,100000", help="comma-separated history sizes, ascending")
    parser.add_argument("--known", type=int, default=100_000, help="partitions kept (the rest pruned)")
    parser.add_argument("--new", type=int, default=500, help="sessions exported per measurement (one run)")
    parser.add_argument("--bookkeeping", default="full", choices=("lean", "full"))
    parser.add_argument("--no-retention", action="store_true", help="keep every run (the history stays in Dagster)")
    parser.add_argument("--no-vacuum", action="store_true",
                        help="measure right after retention's deletes, before PostgreSQL vacuums the dead rows")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432",
                        help="server for --instance postgres")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    sizes = [int(n) for n in args.history.split(",")]
    # The code server that answers GraphQL logs to its inherited stdout: keep stdout for the JSON alone.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    results = []
    with _instance(args.instance, args.postgres) as (instance, warehouse), dagster_settings(args.bookkeeping):
        written = 0
        t0 = time.time() - sum(sizes) - len(sizes) * args.new  # history timestamps: one second apart, all past
        for size in sizes:
            start = time.perf_counter()
            _write_history(instance, written, size, args.known, t0, planned=args.bookkeeping == "full")
            _log(f"history {size}: wrote {size - written} in {time.perf_counter() - start:.0f}s")
            written = size
            row: dict = {"history": size}
            if not args.no_retention:
                start = time.perf_counter()
                kept = apply_retention(instance, warehouse, older_than_days=(time.time() - t0) / 86_400 + 1)
                row["retention"] = {"seconds": round(time.perf_counter() - start, 1),
                                    "deleted_runs": len(kept.deleted_runs), "archived": kept.archived}
                if args.instance == "postgres" and kept.deleted_runs and not args.no_vacuum:
                    row["retention"]["vacuum_s"] = _vacuum()
            row["dagster_history"] = len(instance.get_materialized_partitions(SIGNAVIO_EXPORT_KEY))
            row |= _status_lookup(instance, warehouse)
            results.append({**row, **_measure(instance, args.new, tag=str(size))})
            written += args.new
            _log(json.dumps(results[-1]))
    json.dump({"instance": args.instance, "bookkeeping": args.bookkeeping, "known": args.known, "new": args.new,
               "retention": not args.no_retention,
               "dagster": dg.__version__, "load_average": os.getloadavg(), "results": results}, out, indent=2)
    out.write("\n")
    out.close()


@contextmanager
def _instance(kind: str, server: str) -> Iterator[tuple[dg.DagsterInstance, Warehouse]]:
    home = Path(tempfile.mkdtemp(prefix="growth-"))
    database = None
    try:
        if kind == "postgres":
            import psycopg2

            database = f"growth_{uuid.uuid4().hex[:10]}"
            admin = psycopg2.connect(f"{server}/postgres")
            admin.autocommit = True
            admin.cursor().execute(f'CREATE DATABASE "{database}"')
            os.environ["DAGSTER_POSTGRES_URL"] = f"{server}/{database}"
            shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
        else:
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance, DuckDBWarehouse(home / "warehouse.duckdb")
    finally:
        if database:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.close()
        shutil.rmtree(home, ignore_errors=True)


def _history_event(key: str, timestamp: float, run_id: str) -> EventLogEntry:
    materialization = dg.AssetMaterialization(asset_key=SIGNAVIO_EXPORT_KEY, partition=key, metadata={
        "execution_id": str(uuid.uuid4()), "ingestion_status": "COMPLETED", "runs_table": "agent_telemetry_runs",
        "events_table": "agent_telemetry_events", "runs_rows": 1, "events_rows": 60, "destination": "outbox",
    })
    event = DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value, job_name=EXPORT_JOB,
                         event_specific_data=StepMaterializationData(materialization))
    return EventLogEntry(error_info=None, level=logging.INFO, user_message="", run_id=run_id, timestamp=timestamp,
                         dagster_event=event)


def _planned_event(key: str, timestamp: float, run_id: str) -> EventLogEntry:
    event = DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value, job_name=EXPORT_JOB,
                         event_specific_data=AssetMaterializationPlannedData(SIGNAVIO_EXPORT_KEY, partition=key))
    return EventLogEntry(error_info=None, level=logging.DEBUG, user_message="", run_id=run_id, timestamp=timestamp,
                         dagster_event=event)


def _run_event(kind: DagsterEventType, timestamp: float, run_id: str) -> EventLogEntry:
    """A run's start or end: retention finds a run's records between the two."""
    return EventLogEntry(error_info=None, level=logging.DEBUG, user_message="", run_id=run_id, timestamp=timestamp,
                         dagster_event=DagsterEvent(event_type_value=kind.value, job_name=EXPORT_JOB))


def _write_history(instance: dg.DagsterInstance, first: int, last: int, known: int, t0: float, planned: bool) -> None:
    """Keys `first`..`last`-1 exported (key i at t0 + i seconds), a run per chunk; the newest `known` are partitions.
    `planned`: each run also wrote a planned event per session before its materialisations (RUN_BOOKKEEPING=full)."""
    storage = instance.event_log_storage
    for begin in range(first, last, CHUNK):
        run = instance.add_run(DagsterRun(job_name=EXPORT_JOB, run_id=str(uuid.uuid4()),
                                          status=dg.DagsterRunStatus.SUCCESS))
        keys = [f"extract:hist-{i:08d}" for i in range(begin, min(begin + CHUNK, last))]
        batches = [[_history_event(k, t0 + i, run.run_id) for i, k in enumerate(keys, begin)]]
        if planned:
            batches.insert(0, [_planned_event(k, t0 + i - 0.5, run.run_id) for i, k in enumerate(keys, begin)])
        storage.store_event(_run_event(DagsterEventType.RUN_START, t0 + begin - 1, run.run_id))
        for events in batches:
            if isinstance(storage, PostgresEventLogStorage):
                storage.store_event_batch(events)
            else:  # SQLite has no batch insert: the same statements (the run's own file, then the index)
                insert = storage.prepare_insert_event_batch(events)
                with storage.run_connection(run.run_id) as conn:
                    conn.execute(insert)
                with storage.index_transaction() as conn:
                    ids = [row[0] for row in conn.execute(insert.returning(SqlEventLogStorageTable.c.id))]
                    storage._store_asset_event_tags(conn, events, ids)
                    storage._store_asset_event(conn, events[-1], ids[-1])
        storage.store_event(_run_event(DagsterEventType.RUN_SUCCESS, t0 + begin + len(keys), run.run_id))
        kept = [k for i, k in enumerate(keys, begin) if i >= last - known]
        instance.add_dynamic_partitions(AGENT_SESSIONS, kept)
    partitions = instance.get_dynamic_partitions(AGENT_SESSIONS)
    pruned = partitions[: max(0, len(partitions) - known)]  # what retention prunes (one statement, not one per key)
    for begin in range(0, len(pruned), CHUNK):
        with storage.index_connection() as conn:
            conn.execute(DynamicPartitionsTable.delete().where(
                (DynamicPartitionsTable.c.partitions_def_name == AGENT_SESSIONS)
                & DynamicPartitionsTable.c.partition.in_(pruned[begin:begin + CHUNK])
            ))


def _vacuum() -> float:
    """What autovacuum does soon after retention deleted most of the event log (it triggers at 20% dead rows)."""
    import psycopg2

    start = time.perf_counter()
    con = psycopg2.connect(os.environ["DAGSTER_POSTGRES_URL"])
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("VACUUM ANALYZE event_logs, asset_keys, asset_event_tags, runs, run_tags")
    con.close()
    return round(time.perf_counter() - start, 1)


def _status_lookup(instance: dg.DagsterInstance, warehouse: Warehouse) -> dict[str, float]:
    """What `status KEY` does for the oldest session: Dagster's history first, then the archive."""
    start = time.perf_counter()
    key = "extract:hist-00000000"
    found = export_records(instance, warehouse, [key])
    assert key in found, "the oldest session's export is answerable"
    return {"status_oldest_s": round(time.perf_counter() - start, 3)}


def _measure(instance: dg.DagsterInstance, new: int, tag: str) -> dict[str, float]:
    from dagster_graphql.test.utils import define_out_of_process_workspace, execute_dagster_graphql

    figures: dict[str, float] = {}
    query = {"key": {"path": ["signavio_export"]}}
    with define_out_of_process_workspace(str(ROOT / "workspace.yaml"), None, instance) as workspace:
        # A first query loads the code location and caches the status for the current keys: not timed.
        assert not execute_dagster_graphql(workspace.create_request_context(), STATUS_QUERY, query).errors
        instance.add_dynamic_partitions(AGENT_SESSIONS, [f"extract:new-{tag}-{i:06d}" for i in range(new)])
        for label in ("status_query_s", "status_query_cached_s"):
            context = workspace.create_request_context()  # one per query, as the webserver makes one per request
            start = time.perf_counter()
            result = execute_dagster_graphql(context, STATUS_QUERY, query)
            figures[label] = round(time.perf_counter() - start, 2)
            assert not result.errors, result.errors
    keys = instance.get_dynamic_partitions(AGENT_SESSIONS)
    start = time.perf_counter()
    pending = pending_keys(instance, keys)
    figures["pending_s"] = round(time.perf_counter() - start, 2)
    job = dg.Definitions(assets=[export_nothing], jobs=[dg.define_asset_job(EXPORT_JOB, selection=[export_nothing])])
    resolved = job.resolve_job_def(EXPORT_JOB)
    start = time.perf_counter()
    for key_range in batched_ranges(keys, pending, new):
        assert resolved.execute_in_process(instance=instance, tags=key_range.tags).success
    figures["floor_ms_per_session"] = round((time.perf_counter() - start) / max(1, len(pending)) * 1000, 1)
    return figures


def _log(message: str) -> None:
    print(f"[growth {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

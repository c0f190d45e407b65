"""Assets: thin wiring over `discovery` and `export`.

One step (`session_export`) produces the four export assets, because Dagster skips a downstream step
whenever an upstream one yields only some of its partitions, so separate steps could not record that
session A passed a stage and session B did not.

Only `signavio_export` is partitioned by session: its materialisation history is the export status,
one event per confirmed session. `raw_telemetry`, `telemetry_events` and `signavio_csv` are the DuckDB
tables and the CSV batch, materialised once per run with what that run put into them (per-session
state of every stage is in DuckDB). Dagster writes two instance events per partition per partitioned
asset in a run (planned + materialised, ~12 ms each on SQLite): four partitioned assets cost ~130 ms
per session, one costs ~26 ms (README, Benchmark). That is the difference between 10,000 sessions in
~22 minutes and in well under 15.
"""

import datetime as dt
from collections.abc import Iterator
from typing import Any

import dagster as dg

from telemetry_pipeline.discovery import register_new_sessions
from telemetry_pipeline.export import BatchOutcome, export_batch
from telemetry_pipeline.names import RAW_TELEMETRY as RAW
from telemetry_pipeline.names import SESSION_EXPORT_STEP
from telemetry_pipeline.names import SIGNAVIO_CSV as CSV_ASSET
from telemetry_pipeline.names import SIGNAVIO_EXPORT as EXPORT
from telemetry_pipeline.names import TELEMETRY_EVENTS as EVENTS_ASSET
from telemetry_pipeline.partitions import agent_sessions
from telemetry_pipeline.resources import SignavioResource, SourcesResource, WarehouseResource
from telemetry_pipeline.signavio.models import COMPLETED
from telemetry_pipeline.signavio.schema import EVENTS, RUNS

MAX_LISTED_IN_METADATA = 20


@dg.asset(
    group_name="telemetry",
    description="Lists sessions of every configured source and registers new keys in `agent_sessions`.",
)
def discovered_sessions(context: dg.AssetExecutionContext, sources: SourcesResource) -> dg.MaterializeResult:
    with sources.open() as source_set:
        found, metadata = register_new_sessions(
            context.instance, source_set, dt.timedelta(seconds=sources.settle_seconds)
        )
    for source, error in found.errors.items():
        context.log.warning("source %s could not be listed: %s", source, error)
    for file, error in found.unreadable.items():
        context.log.warning("inbox file %s was not read: %s", file, error)
    return dg.MaterializeResult(metadata=metadata)


class ExportConfig(dg.Config):
    dataset: str | None = None  # overrides SIGNAVIO_DATASET for this run


def _spec(name: str, deps: list[str], description: str, partitioned: bool = False) -> dg.AssetSpec:
    return dg.AssetSpec(
        name, deps=deps, skippable=True, group_name="telemetry", description=description,
        partitions_def=agent_sessions if partitioned else None,
    )


EXPORT_SPECS = [
    _spec(RAW, [], "DuckDB `raw_telemetry`: every payload as served, stored before any parsing."),
    _spec(EVENTS_ASSET, [RAW], "DuckDB `sessions` and `events`: the canonical model, replaced per session."),
    _spec(CSV_ASSET, [EVENTS_ASSET], "The `<dataset>_runs` and `<dataset>_events` CSV tables + Avro schemas."),
    _spec(EXPORT, [CSV_ASSET], "One partition per session, materialised when Signavio confirmed both tables: "
          "its history is the export status.", partitioned=True),
]


@dg.multi_asset(
    name=SESSION_EXPORT_STEP,
    specs=EXPORT_SPECS,
    can_subset=False,
)
def session_export(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    sources: SourcesResource,
    warehouse: WarehouseResource,
    signavio: SignavioResource,
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation]:
    keys = context.partition_keys
    dataset = config.dataset or signavio.dataset
    context.log.info("exporting %d sessions (%s .. %s) to dataset %s", len(keys), keys[0], keys[-1], dataset)
    with sources.open() as source_set, signavio.destination() as destination:
        outcome = export_batch(
            keys,
            sources=source_set,
            warehouse=warehouse.warehouse(),
            destination=destination,
            dataset=dataset,
            fallback_agent=sources.agent_name,
            run_id=context.run_id,
            is_live=lambda rid: (run := context.instance.get_run_by_id(rid)) is not None and not run.is_finished,
        )
        where = destination.describe()
    if outcome.in_flight:  # another run is exporting these right now (export_batch logged them)
        yield dg.AssetObservation(asset_key=EXPORT, metadata={"in_flight": dg.MetadataValue.json(outcome.in_flight)})
    yield from _materializations(outcome, dataset, where)
    if outcome.failures:
        listed = sorted(outcome.failures.items())
        lines = "\n".join(f"- {error}" for _, error in listed[:MAX_LISTED_IN_METADATA])
        more = f"\n(and {len(listed) - MAX_LISTED_IN_METADATA} more)" if len(listed) > MAX_LISTED_IN_METADATA else ""
        raise dg.Failure(
            description=f"{len(outcome.failures)} of {len(keys)} sessions failed "
            f"({len(outcome.exported)} exported):\n{lines}{more}",
            metadata={"failed_sessions": dg.MetadataValue.json(dict(listed))},
            allow_retries=False,
        )


def _materializations(out: BatchOutcome, dataset: str, destination: str) -> Iterator[dg.AssetMaterialization]:
    failed_at = {
        stage: sum(1 for e in out.failures.values() if e.startswith(stage)) for stage in ("fetch", "normalise")
    }
    runs_table, events_table = RUNS.name(dataset), EVENTS.name(dataset)
    runs_rows = sum(r for r, _ in out.rows.values())
    events_rows = sum(e for _, e in out.rows.values())
    if out.stored:
        yield dg.AssetMaterialization(asset_key=RAW, metadata={
            "sessions": len(out.stored), "bytes": out.bytes_fetched, "fetch_failures": failed_at["fetch"],
            "first_keys": dg.MetadataValue.json(out.stored[:MAX_LISTED_IN_METADATA]),
        })
    if out.normalized:
        yield dg.AssetMaterialization(asset_key=EVENTS_ASSET, metadata={
            "sessions": len(out.normalized), "events_rows": events_rows,
            "normalise_failures": failed_at["normalise"],
        })
    if out.rendered:
        yield dg.AssetMaterialization(asset_key=CSV_ASSET, metadata={
            "sessions": len(out.rendered), "dataset": dataset,
            "runs_table": runs_table, "events_table": events_table, "runs_rows": runs_rows, "events_rows": events_rows,
        })
    if not out.exported:
        return
    execution_ids = {load.table: ",".join(load.execution_ids) for load in out.loads}
    statuses = {load.status for load in out.loads}
    shared: dict[str, Any] = {
        "execution_id": execution_ids.get(events_table, ""),
        "execution_ids": dg.MetadataValue.json(execution_ids),
        "ingestion_status": COMPLETED if statuses == {COMPLETED} else next(iter(statuses)),
        "runs_table": runs_table,
        "events_table": events_table,
        "destination": destination,
        "dataset": dataset,
    }
    for key in out.exported:
        session_runs, session_events = out.rows.get(key, (0, 0))
        yield dg.AssetMaterialization(
            asset_key=EXPORT,
            partition=key,
            metadata={**shared, "runs_rows": session_runs, "events_rows": session_events},
        )

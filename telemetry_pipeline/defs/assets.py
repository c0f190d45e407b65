"""Assets: thin wiring over `discovery`, `export` and `overview`.

Only `signavio_export` is partitioned by session: its materialisation history is the export status,
one event per confirmed session. Dagster writes two instance events per partition per partitioned
asset in a run (planned + materialised, ~12 ms each on SQLite): four partitioned assets cost ~130 ms
per session, one costs ~26 ms (bench/README.md).

`raw_telemetry`, `telemetry_events` and `signavio_csv` are the DuckDB tables and the CSV batch: one
step (`session_export`) produces all of them, and it records each stage once per run with what that
run put into it (per-session state of every stage is in DuckDB). They are declared as external specs
(`STAGE_SPECS`: visible in the lineage, recorded by the step, never launched on their own) rather than
as outputs of `session_export`, because as outputs of one multi-asset they (1) made every exported
session look "Unsynced" as soon as a later run recorded a stage, (2) were dragged into every manual
launch of one session ("additional assets will be materialized") and (3) gave that launch assets with
differing backfill policies. External upstreams never make a downstream stale.
"""

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from telemetry_pipeline.application.export import exporting
from telemetry_pipeline.console import quality
from telemetry_pipeline.console.overview import compute_overview
from telemetry_pipeline.console.process_map import draw_process_map, save_process_map
from telemetry_pipeline.defs.discovery import register_new_sessions
from telemetry_pipeline.defs.metadata import (
    batch_failure,
    check_results,
    export_materializations,
    failure_observations,
    overview_metadata,
    stage_records,
)
from telemetry_pipeline.defs.resources import (
    ContentResource,
    MonitoringResource,
    PlaybooksResource,
    SignavioResource,
    SourcesResource,
    WarehouseResource,
)
from telemetry_pipeline.instance.history import exported_since
from telemetry_pipeline.instance.liveness import ProcessIdentity, RunLiveness
from telemetry_pipeline.instance.partitions import agent_sessions
from telemetry_pipeline.names import (
    EXPORTED_MEANWHILE_META,
    IN_FLIGHT_META,
    PENDING_AS_OF_TAG,
    PROCESS_OVERVIEW,
    SESSION_EXPORT_STEP,
    SESSIONS_NOT_FOUND_META,
)
from telemetry_pipeline.names import RAW_TELEMETRY as RAW
from telemetry_pipeline.names import SIGNAVIO_CSV as CSV_ASSET
from telemetry_pipeline.names import SIGNAVIO_EXPORT as EXPORT
from telemetry_pipeline.names import TELEMETRY_EVENTS as EVENTS_ASSET


@dg.asset(
    group_name="telemetry",
    description="Lists sessions of every configured source and registers new keys in `agent_sessions`; its latest "
    "record holds the watermarks `new_sessions_sensor` continues from (one store).",
)
def discovered_sessions(
    context: dg.AssetExecutionContext, sources: SourcesResource, content: ContentResource
) -> dg.MaterializeResult:
    with sources.open() as source_set:
        found, metadata = register_new_sessions(
            context.instance, source_set, dt.timedelta(seconds=sources.settle_seconds), content.governance()
        )
    for source, error in found.errors.items():
        context.log.warning("source %s could not be listed: %s", source, error)
    for file, error in found.unreadable.items():
        context.log.warning("inbox file %s was not read: %s", file, error)
    return dg.MaterializeResult(metadata=metadata)


class ExportConfig(dg.Config):
    dataset: str | None = None  # overrides SIGNAVIO_DATASET for this run
    # Re-check exported sessions against the playbooks as they are now: from the warehouse's rows, nothing fetched;
    # both tables uploaded again (upserts by key). `telemetry-pipeline recheck` sets it.
    recheck: bool = False


def _stage(name: str, deps: list[str], description: str) -> dg.AssetSpec:
    return dg.AssetSpec(name, deps=deps, group_name="telemetry", description=description)


STAGE_SPECS = [
    _stage(RAW, [], "DuckDB `raw_telemetry`: every payload as served, stored before any parsing. "
           "Recorded once per `session_export` run."),
    _stage(EVENTS_ASSET, [RAW], "DuckDB `sessions` and `events`: the canonical model, replaced per session. "
           "Recorded once per `session_export` run."),
    _stage(CSV_ASSET, [EVENTS_ASSET], "The `<dataset>_runs` and `<dataset>_events` CSV tables + Avro schemas. "
           "Recorded once per `session_export` run."),
]
EXPORT_SPEC = dg.AssetSpec(
    EXPORT, deps=[CSV_ASSET], skippable=True, group_name="telemetry", partitions_def=agent_sessions,
    description="One partition per session, materialised when Signavio confirmed both tables: its history is "
    "the export status. Each materialisation shows the session at a glance (agent, status, times, tool calls, "
    "models, tokens, every error with its message, its first and last steps; `event_counts` explains `events` "
    "(in the source) against `events_rows` (in the event log, a start and its end paired into one row)), "
    "then the upload's ids and tables.",
)
CHECK_SPECS = [dg.AssetCheckSpec(name, asset=EXPORT, description=text) for name, text in quality.DESCRIPTIONS.items()]


# can_subset: a run whose sessions were all being exported by another run uploads nothing and so has no
# check result; the checks' outputs must then be optional (they are required unless the step can subset).
@dg.multi_asset(name=SESSION_EXPORT_STEP, specs=[EXPORT_SPEC], check_specs=CHECK_SPECS, can_subset=True)
def session_export(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    sources: SourcesResource,
    warehouse: WarehouseResource,
    signavio: SignavioResource,
    monitoring: MonitoringResource,
    content: ContentResource,
    playbooks: PlaybooksResource,
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckResult]:
    keys = context.partition_keys
    run_id = context.run.run_id
    # Before claiming anything: which process holds this run's claims, so that a claimer on this host can
    # tell at once when it is gone (`liveness`).
    context.instance.add_run_tags(run_id, ProcessIdentity.current().tags())
    asked_at = _asked_at(context)
    dataset = config.dataset or signavio.dataset
    context.log.info("%s %d sessions (%s .. %s) to dataset %s", "re-checking" if config.recheck else "exporting",
                     len(keys), keys[0], keys[-1], dataset)
    # The claims are held until the materialisations are recorded (Dagster writes each event as it is
    # yielded): a run that finds a session released finds it recorded as exported too.
    with sources.open() as source_set, signavio.destination() as destination, exporting(
        keys, sources=source_set, warehouse=warehouse.warehouse(), destination=destination, dataset=dataset,
        agents=sources.agents(), run_id=run_id, holder_check=RunLiveness(context.instance),
        exported_meanwhile=lambda claimed: exported_since(context.instance, claimed, asked_at, run_id),
        alphabet_limit=monitoring.activity_alphabet_limit, governance=content.governance(),
        playbooks=playbooks.playbooks(), recheck=config.recheck, max_bytes=sources.settings.chunk_max_bytes,
    ) as outcome:
        left = {name: dg.MetadataValue.json(value) for name, value in (
            (IN_FLIGHT_META, outcome.in_flight),  # another run is exporting these right now
            (EXPORTED_MEANWHILE_META, outcome.exported_meanwhile),  # another run exported these since this was asked
            (SESSIONS_NOT_FOUND_META, {k: outcome.failures[k] for k in outcome.not_found}),  # their source has none
        ) if value}
        if left:  # `exporting` logged them
            yield dg.AssetObservation(asset_key=EXPORT, metadata=left)
        yield from stage_records(outcome, dataset)
        yield from export_materializations(outcome, dataset, destination.describe())
        selected = {key.name for key in context.selected_asset_check_keys}
        yield from check_results([check for check in outcome.quality if check.name in selected])
        if outcome.failures:
            yield from failure_observations(outcome)
            if failure := batch_failure(outcome):
                raise failure


def _asked_at(context: dg.AssetExecutionContext) -> float:
    """When this run's sessions were seen unexported: the CLI's `PENDING_AS_OF_TAG`, or else the run's creation."""
    tagged = context.run.tags.get(PENDING_AS_OF_TAG)
    if tagged:
        return float(tagged)
    record = context.instance.get_run_record_by_id(context.run.run_id)
    return record.create_timestamp.timestamp() if record else time.time()


class OverviewConfig(dg.Config):
    window_hours: float | None = None  # overrides PROCESS_OVERVIEW_WINDOW_HOURS for this run


@dg.asset(
    name=PROCESS_OVERVIEW, group_name="telemetry", deps=[EVENTS_ASSET],
    description="What the agents did over a recent window: outcomes and success rate overall, per agent and per "
    "workflow, failing activities with their commonest errors, the slowest and the failed sessions (by key); "
    "then the process as Signavio will mine it: a directly-follows process map (`process_map`, also written to "
    "`<home>/overview/process_map.svg`), variants by activity set, per-activity counts, failure rates and "
    "durations, tokens per model. First materialised by `new_sessions_sensor`, refreshed by "
    "`hourly_export_schedule`.",
)
def process_overview(
    context: dg.AssetExecutionContext, config: OverviewConfig, warehouse: WarehouseResource,
    monitoring: MonitoringResource,
) -> dg.MaterializeResult:
    hours = config.window_hours or monitoring.overview_window_hours
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    with warehouse.warehouse().recent(since) as con:
        overview = compute_overview(con, since)
    context.log.info("process overview: %d cases, %d events since %s", overview.cases, overview.events, since)
    process_map = draw_process_map(overview.edges, overview.activities)
    map_file = save_process_map(process_map.svg, Path(monitoring.overview_dir))
    return dg.MaterializeResult(metadata=overview_metadata(overview, hours, process_map, map_file))

"""Dagster's floor for our shape: the same asset graph with bodies that do nothing, run the way the
benchmark runs the pipeline, so the difference is our own work.

    floor.py discover N   one process: `discovered_sessions` registers N keys of `agent_sessions`
    floor.py export B     one process: `session_export`'s specs over every pending key, in runs of B

Each mirrors one CLI call of the pipeline phase (`discover`, `export --pending`), with TELEMETRY_PIPELINE_HOME
set. The bodies report what ours report when every session succeeds, through the same functions (one record per
stage, one materialisation per partition of `signavio_export` with a session's summary and tags, one result per
data-quality check), without fetching, parsing, rendering or uploading. Every session gets the summary of one
simulated session (`SUMMARY`): recording it is Dagster's work too.
"""

import datetime as dt
import sys
from collections.abc import Iterator

import dagster as dg

from telemetry_pipeline.application.export import BatchOutcome
from telemetry_pipeline.console.session_summary import Failure, SessionSummary, Step
from telemetry_pipeline.defs.assets import CHECK_SPECS, EXPORT_SPEC, STAGE_SPECS
from telemetry_pipeline.defs.metadata import export_materializations, stage_records
from telemetry_pipeline.instance import dagster_settings, open_instance
from telemetry_pipeline.instance.keys import SIGNAVIO_EXPORT_KEY
from telemetry_pipeline.instance.partitions import batched_ranges
from telemetry_pipeline.names import AGENT_SESSIONS, EXPORT_JOB
from telemetry_pipeline.settings import from_environment
from telemetry_pipeline.signavio.models import OUTBOX, LoadResult
from telemetry_pipeline.signavio.schema import EVENTS, RUNS


@dg.asset(name="discovered_sessions", config_schema={"count": int})
def discover_nothing(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    keys = [f"extract:floor-{i:06d}" for i in range(context.op_config["count"])]
    context.instance.add_dynamic_partitions(AGENT_SESSIONS, keys)
    return dg.MaterializeResult(metadata={"new_count": len(keys)})


# A simulated session at a glance (100 source events, 60 event-log rows, tool calls, two models, a failure).
_START = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
SUMMARY = SessionSummary(
    agent="bench-agent", workflow="research", status="partial", start=_START,
    end=_START + dt.timedelta(seconds=95), source_events=100, event_log_rows=60, tool_calls=20,
    tool_calls_succeeded=19, tool_calls_failed=1, models=("gpt-4o", "claude-sonnet"), input_tokens=12_345,
    output_tokens=6_789, first_error="search: upstream timed out after 30s", error_count=1,
    errors=(Failure(31, 51_200, "Call tool search", "search: upstream timed out after 30s"),),
    timeline=tuple(Step(i, i * 1_500, f"Call tool step_{i}", "success", 250 + i) for i in (1, 2, 3, 58, 59, 60)),
)
DATASET = "bench"


def _outcome(keys: list[str]) -> BatchOutcome:
    """What a batch of `keys` that all succeeded reports (outbox loads, one case row and 60 event rows each)."""
    loads = [LoadResult(table.name(DATASET), OUTBOX, ("floor",)) for table in (RUNS, EVENTS)]
    return BatchOutcome(keys=keys, stored=keys, normalized=keys, rendered=keys, exported=keys, loads=loads,
                        rows=dict.fromkeys(keys, (1, SUMMARY.event_log_rows)), summaries=dict.fromkeys(keys, SUMMARY))


@dg.multi_asset(name="session_export", specs=[EXPORT_SPEC], check_specs=CHECK_SPECS)
def export_nothing(context: dg.AssetExecutionContext) -> Iterator[dg.AssetMaterialization | dg.AssetCheckResult]:
    out = _outcome(list(context.partition_keys))
    yield from stage_records(out, DATASET)  # one record per stage, per run
    yield from export_materializations(out, DATASET, "outbox (floor)")
    for check in CHECK_SPECS:
        yield dg.AssetCheckResult(asset_key=EXPORT_SPEC.key, check_name=check.name, passed=True)


def main() -> None:
    mode, number = sys.argv[1], int(sys.argv[2])
    settings = from_environment()
    # The same Dagster settings as the pipeline's CLI (RUN_BOOKKEEPING), or the floor would not be comparable.
    with open_instance(settings.dagster_home) as instance, dagster_settings(settings.run_bookkeeping):
        if mode == "discover":
            result = dg.materialize([discover_nothing], instance=instance,
                                    run_config={"ops": {"discovered_sessions": {"config": {"count": number}}}})
            assert result.success
            return
        job = dg.define_asset_job(EXPORT_JOB, selection=[export_nothing])
        resolved = dg.Definitions(assets=[*STAGE_SPECS, export_nothing], jobs=[job]).resolve_job_def(EXPORT_JOB)
        keys = instance.get_dynamic_partitions(AGENT_SESSIONS)
        for key_range in batched_ranges(keys, keys, number):
            assert resolved.execute_in_process(instance=instance, tags=key_range.tags).success
        done = instance.get_materialized_partitions(SIGNAVIO_EXPORT_KEY)
        assert len(done) == len(keys), f"floor materialised {len(done)} of {len(keys)}"


if __name__ == "__main__":
    main()

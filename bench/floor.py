"""Dagster's floor for our shape: the same asset graph with bodies that do nothing, run the way the
benchmark runs the pipeline, so the difference is our own work.

    floor.py discover N   one process: `discovered_sessions` registers N keys of `agent_sessions`
    floor.py export B     one process: `session_export`'s specs over every pending key, in runs of B

Each mirrors one CLI call of the pipeline phase (`discover`, `export --pending`), with TELEMETRY_PIPELINE_HOME
set. The bodies report what ours report when every session succeeds (one record per stage, one
materialisation per partition of `signavio_export`, one result per data-quality check), without fetching,
parsing, rendering or uploading.
"""

import sys
from collections.abc import Iterator

import dagster as dg

from telemetry_pipeline.defs.assets import CHECK_SPECS, EXPORT_SPEC, STAGE_SPECS
from telemetry_pipeline.defs.partitions import batched_ranges
from telemetry_pipeline.instance import dagster_settings, open_instance
from telemetry_pipeline.instance.keys import SIGNAVIO_EXPORT_KEY
from telemetry_pipeline.names import AGENT_SESSIONS, EXPORT_JOB
from telemetry_pipeline.settings import from_environment


@dg.asset(name="discovered_sessions", config_schema={"count": int})
def discover_nothing(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    keys = [f"extract:floor-{i:06d}" for i in range(context.op_config["count"])]
    context.instance.add_dynamic_partitions(AGENT_SESSIONS, keys)
    return dg.MaterializeResult(metadata={"new_count": len(keys)})


@dg.multi_asset(name="session_export", specs=[EXPORT_SPEC], check_specs=CHECK_SPECS)
def export_nothing(context: dg.AssetExecutionContext) -> Iterator[dg.AssetMaterialization | dg.AssetCheckResult]:
    for spec in STAGE_SPECS:  # a stage record: one per run
        yield dg.AssetMaterialization(asset_key=spec.key, metadata={"sessions": len(context.partition_keys)})
    for key in context.partition_keys:
        yield dg.AssetMaterialization(asset_key=EXPORT_SPEC.key, partition=key)
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

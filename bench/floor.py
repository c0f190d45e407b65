"""Dagster's floor for our shape: `session_export`'s asset specs over N partitions of `agent_sessions`,
run in the same batches as `export --pending`, with a body that only reports what our step reports
when every session succeeds (one record per table asset, one per partition of `signavio_export`).

Usage (from bench/run.py): floor.py N BATCH_SIZE, with TELEMETRY_PIPELINE_HOME set.
"""


import sys
from collections.abc import Iterator

import dagster as dg

from telemetry_pipeline.assets import EXPORT_SPECS
from telemetry_pipeline.definitions import dagster_home
from telemetry_pipeline.instance import open_instance
from telemetry_pipeline.partitions import agent_sessions, batched_ranges


@dg.multi_asset(name="session_export", specs=EXPORT_SPECS, can_subset=False)
def do_nothing(context: dg.AssetExecutionContext) -> Iterator[dg.AssetMaterialization]:
    for spec in EXPORT_SPECS:
        if spec.partitions_def is None:  # a table asset: one record per run
            yield dg.AssetMaterialization(asset_key=spec.key, metadata={"sessions": len(context.partition_keys)})
        else:
            for key in context.partition_keys:
                yield dg.AssetMaterialization(asset_key=spec.key, partition=key)


def main() -> None:
    count, batch_size = int(sys.argv[1]), int(sys.argv[2])
    job = dg.define_asset_job("export_sessions", selection=[do_nothing], partitions_def=agent_sessions)
    defs = dg.Definitions(assets=[do_nothing], jobs=[job])
    keys = [f"extract:floor-{i:06d}" for i in range(count)]
    with open_instance(dagster_home()) as instance:
        instance.add_dynamic_partitions(agent_sessions.name, keys)
        resolved = defs.resolve_job_def("export_sessions")
        for key_range in batched_ranges(keys, keys, batch_size):
            result = resolved.execute_in_process(instance=instance, tags=key_range.tags)
            assert result.success
        done = instance.get_materialized_partitions(dg.AssetKey("signavio_export"))
        assert len(done) == count, f"floor materialised {len(done)} of {count}"


if __name__ == "__main__":
    main()

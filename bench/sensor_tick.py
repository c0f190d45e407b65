"""One `new_sessions_sensor` tick with K known partitions while the sources list N new sessions.

Usage (from bench/run.py): sensor_tick.py KNOWN, with TELEMETRY_PIPELINE_HOME and the source URLs set.
Prints {"known", "new", "runs", "seconds"} as JSON; the known keys are registered before timing.
"""

import json
import sys
import time

import dagster as dg

from telemetry_pipeline.definitions import build_definitions
from telemetry_pipeline.instance import open_instance
from telemetry_pipeline.names import AGENT_SESSIONS, NEW_SESSIONS_SENSOR
from telemetry_pipeline.settings import from_environment


def main() -> None:
    known = int(sys.argv[1])
    settings = from_environment()
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def(NEW_SESSIONS_SENSOR)
    with open_instance(settings.dagster_home) as instance:
        instance.add_dynamic_partitions(AGENT_SESSIONS, [f"extract:old-{i:07d}" for i in range(known)])
        start = time.perf_counter()
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            result = sensor(context)
        elapsed = time.perf_counter() - start
        new = len(instance.get_dynamic_partitions(AGENT_SESSIONS)) - known  # the tick registers them itself
    json.dump({"known": known, "new": new, "runs": len(result.run_requests), "seconds": round(elapsed, 2)}, sys.stdout)


if __name__ == "__main__":
    main()

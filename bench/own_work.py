"""Our own work alone: what the pipeline phase does (list every session, then export them in batches of
EXPORT_BATCH_SIZE to the outbox), through the same functions the assets call, with no Dagster around them
(no instance, no runs, no events). Run by bench/run.py with the pipeline's environment; prints
{"listed", "exported", "failed", "batches"} as JSON. The distance between the pipeline and this is Dagster's.
"""

import json
import socket
import sys

from telemetry_pipeline.application.export import export_batch
from telemetry_pipeline.canonical.identity import AgentDefaults
from telemetry_pipeline.policy.playbooks import load_playbooks
from telemetry_pipeline.settings import configured_warehouse, from_environment
from telemetry_pipeline.signavio.outbox import Outbox
from telemetry_pipeline.sources.source_set import SourceSet


def main() -> None:
    settings = from_environment()
    warehouse = configured_warehouse(settings)
    outbox = Outbox(settings.outbox_dir)
    playbooks = load_playbooks(settings.playbooks_file)  # PLAYBOOKS_FILE, e.g. bench/playbooks.yaml
    exported = failed = batches = 0
    with SourceSet(settings.sources) as sources:
        listed, errors = sources.list_sessions({})
        if errors:
            raise SystemExit(f"listing failed: {errors}")
        keys = [ref.key for ref in listed]
        for begin in range(0, len(keys), settings.batch_size):
            outcome = export_batch(keys[begin:begin + settings.batch_size], sources=sources, warehouse=warehouse,
                                   destination=outbox, dataset=settings.signavio.dataset,
                                   agents=AgentDefaults(settings.sources.agent_name, socket.gethostname()),
                                   governance=settings.content, playbooks=playbooks,
                                   max_bytes=settings.sources.chunk_max_bytes)
            exported += len(outcome.exported)
            failed += len(outcome.failures)
            batches += 1
    json.dump({"listed": len(keys), "exported": exported, "failed": failed, "batches": batches}, sys.stdout)


if __name__ == "__main__":
    main()

"""Keep `agent_sessions` in the UI's comfort zone: drop partitions exported more than N days ago.

Deleting a dynamic partition keeps its materialisation history, so `status` still answers for a
pruned session; only sessions whose latest export is older than the cut-off are removed, never a
pending one.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from telemetry_pipeline.history import latest_exports
from telemetry_pipeline.names import AGENT_SESSIONS


def prunable_keys(instance: dg.DagsterInstance, older_than_days: float, now: dt.datetime | None = None) -> list[str]:
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=older_than_days)
    known = instance.get_dynamic_partitions(AGENT_SESSIONS)
    exports = latest_exports(instance)
    return [k for k in known if k in exports and exports[k].exported_at < cutoff]


def apply_retention(instance: dg.DagsterInstance, older_than_days: float, dry_run: bool = False) -> list[str]:
    keys = prunable_keys(instance, older_than_days)
    if not dry_run:
        for key in keys:
            instance.delete_dynamic_partition(AGENT_SESSIONS, key)
    return keys

"""The asset keys by which we read and write the instance's history (names.py holds their names, as text)."""

import dagster as dg

from telemetry_pipeline.names import DISCOVERED_SESSIONS, PROCESS_OVERVIEW, SIGNAVIO_EXPORT

DISCOVERED_SESSIONS_KEY = dg.AssetKey(DISCOVERED_SESSIONS)
SIGNAVIO_EXPORT_KEY = dg.AssetKey(SIGNAVIO_EXPORT)
PROCESS_OVERVIEW_KEY = dg.AssetKey(PROCESS_OVERVIEW)

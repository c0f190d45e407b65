"""The agent telemetry (agent metrics) service (docs/SOURCES.md, `agent_telemetry`): `GET
/agent_metrics/{session_id}/events` serves the session's agent events. A session API: the adapter and
normaliser are `sources/session_api/`."""

from __future__ import annotations

from telemetry_pipeline.sources.session_api import session_api_source
from telemetry_pipeline.sources.session_api.source import SessionApiRoutes

ROUTES = SessionApiRoutes(fetch_path="/agent_metrics/{session_id}/events", list_path="/agent_metrics/sessions")
SOURCE = session_api_source(
    "agent_telemetry", ROUTES, url_env="AGENT_METRICS_BASE_URL", list_env="AGENT_METRICS_SESSIONS_PATH"
)

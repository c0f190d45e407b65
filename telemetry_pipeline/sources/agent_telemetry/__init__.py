"""The agent telemetry (agent metrics) service (docs/SOURCES.md, `agent_telemetry`): `GET
/agent_metrics/{session_id}/events` serves the session's agent events. A session API: the adapter and
normaliser are `sources/session_api/`."""

from __future__ import annotations

from telemetry_pipeline.sources.base import SourceEntry, Values, Variable
from telemetry_pipeline.sources.session_api.normalize import normalize_agent_sessions
from telemetry_pipeline.sources.session_api.settings import SessionApiSettings, listing_variable
from telemetry_pipeline.sources.session_api.source import SessionApiRoutes, builder

NAME = "agent_telemetry"
ROUTES = SessionApiRoutes(fetch_path="/agent_metrics/{session_id}/events", list_path="/agent_metrics/sessions")
VARIABLES = (
    Variable("agent_telemetry_url", "AGENT_METRICS_BASE_URL", "enables source agent_telemetry: the service's base URL"),
    listing_variable("agent_telemetry_list_path", "AGENT_METRICS_SESSIONS_PATH"),
)


def configure(values: Values) -> SessionApiSettings | None:
    url = values["agent_telemetry_url"]
    return SessionApiSettings(url, values["agent_telemetry_list_path"]) if url else None


SOURCE = SourceEntry(NAME, VARIABLES, configure, builder(NAME, ROUTES), normalize_agent_sessions)

"""The Extract service (docs/SOURCES.md, `extract`): `GET /signavio/agent-metrics/{session_id}` serves a metrics
summary and the session's agent events. A session API: the adapter and normaliser are `sources/session_api/`."""

from __future__ import annotations

from telemetry_pipeline.sources.base import SourceEntry, Values, Variable
from telemetry_pipeline.sources.session_api.normalize import normalize_agent_sessions
from telemetry_pipeline.sources.session_api.settings import SessionApiSettings, listing_variable
from telemetry_pipeline.sources.session_api.source import SessionApiRoutes, builder

NAME = "extract"
ROUTES = SessionApiRoutes(fetch_path="/signavio/agent-metrics/{session_id}", list_path="/signavio/agent-metrics")
VARIABLES = (
    Variable("extract_url", "EXTRACT_SERVICE_URL", "enables source extract: the service's base URL"),
    listing_variable("extract_list_path", "EXTRACT_SESSIONS_PATH"),
)


def configure(values: Values) -> SessionApiSettings | None:
    url = values["extract_url"]
    return SessionApiSettings(url, values["extract_list_path"]) if url else None


SOURCE = SourceEntry(NAME, VARIABLES, configure, builder(NAME, ROUTES), normalize_agent_sessions)

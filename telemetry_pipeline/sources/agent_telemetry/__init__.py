"""The agent telemetry (agent metrics) service (docs/SOURCES.md, `agent_telemetry`): `GET
/agent_metrics/{session_id}/events` serves the session's agent events. A session API: the adapter and
normaliser are `sources/session_api/`."""

from __future__ import annotations

from telemetry_pipeline.settings import SourcesSettings
from telemetry_pipeline.sources.session_api.settings import SessionApiSettings
from telemetry_pipeline.sources.session_api.source import SessionApiRoutes, builder

NAME = "agent_telemetry"
ROUTES = SessionApiRoutes(fetch_path="/agent_metrics/{session_id}/events", list_path="/agent_metrics/sessions")
build = builder(NAME, ROUTES)


def configure(settings: SourcesSettings) -> SessionApiSettings | None:
    url, list_path = settings.agent_telemetry_url, settings.agent_telemetry_list_path
    return SessionApiSettings(url, list_path) if url else None

"""The Extract service (docs/SOURCES.md, `extract`): `GET /signavio/agent-metrics/{session_id}` serves a metrics
summary and the session's agent events. A session API: the adapter and normaliser are `sources/session_api/`."""

from __future__ import annotations

from telemetry_pipeline.settings import SourcesSettings
from telemetry_pipeline.sources.session_api.settings import SessionApiSettings
from telemetry_pipeline.sources.session_api.source import SessionApiRoutes, builder

NAME = "extract"
ROUTES = SessionApiRoutes(fetch_path="/signavio/agent-metrics/{session_id}", list_path="/signavio/agent-metrics")
build = builder(NAME, ROUTES)


def configure(settings: SourcesSettings) -> SessionApiSettings | None:
    return SessionApiSettings(settings.extract_url, settings.extract_list_path) if settings.extract_url else None

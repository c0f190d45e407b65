"""The Extract service (docs/SOURCES.md, `extract`): `GET /signavio/agent-metrics/{session_id}` serves a metrics
summary and the session's agent events. A session API: the adapter and normaliser are `sources/session_api/`."""

from __future__ import annotations

from telemetry_pipeline.sources.session_api import session_api_source
from telemetry_pipeline.sources.session_api.source import SessionApiRoutes

ROUTES = SessionApiRoutes(fetch_path="/signavio/agent-metrics/{session_id}", list_path="/signavio/agent-metrics")
SOURCE = session_api_source("extract", ROUTES, url_env="EXTRACT_SERVICE_URL", list_env="EXTRACT_SESSIONS_PATH")

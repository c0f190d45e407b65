"""The Extract service: `/signavio/agent-metrics/{session_id}` (metrics summary + events)."""

from telemetry_pipeline.sources.session_api import SessionApiRoutes

NAME = "extract"
ROUTES = SessionApiRoutes(fetch_path="/signavio/agent-metrics/{session_id}", list_path="/signavio/agent-metrics")

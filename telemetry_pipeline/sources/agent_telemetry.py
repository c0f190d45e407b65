"""The agent telemetry (agent metrics) service: `/agent_metrics/{session_id}/events`."""

from telemetry_pipeline.sources.session_api import SessionApiRoutes

NAME = "agent_telemetry"
ROUTES = SessionApiRoutes(fetch_path="/agent_metrics/{session_id}/events", list_path="/agent_metrics/sessions")

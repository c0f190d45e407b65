"""An example fifth source, never shipped: `test_source_layout.py` copies it to `sources/example/` in a copy of the
package and adds its name to the registry, the only two changes a new source needs (docs/ARCHITECTURE.md, "A source
is one folder").

A session API like agent_telemetry's, at its own URL: its one variable enables it."""

from __future__ import annotations

from telemetry_pipeline.sources.base import SourceEntry, Values, Variable
from telemetry_pipeline.sources.session_api.normalize import normalize_agent_sessions
from telemetry_pipeline.sources.session_api.settings import SessionApiSettings
from telemetry_pipeline.sources.session_api.source import SessionApiRoutes, builder

NAME = "example"
ROUTES = SessionApiRoutes(fetch_path="/agent_metrics/{session_id}/events", list_path="/agent_metrics/sessions")
VARIABLES = (Variable("example_url", "EXAMPLE_SERVICE_URL", "enables source example: the service's base URL"),)


def configure(values: Values) -> SessionApiSettings | None:
    url = values["example_url"]
    return SessionApiSettings(url) if url else None


SOURCE = SourceEntry(NAME, VARIABLES, configure, builder(NAME, ROUTES), normalize_agent_sessions)

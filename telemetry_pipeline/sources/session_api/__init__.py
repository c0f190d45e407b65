"""The session API that the Extract and agent telemetry services share (docs/SOURCES.md): the HTTP adapter
(`source`), its settings, and the normaliser of agent-event payloads (`normalize`, set-based in DuckDB)."""

from __future__ import annotations

from telemetry_pipeline.sources.base import SourceEntry, Values, Variable
from telemetry_pipeline.sources.session_api.normalize import normalize_agent_sessions
from telemetry_pipeline.sources.session_api.settings import SessionApiSettings
from telemetry_pipeline.sources.session_api.source import SessionApiRoutes, builder


def session_api_source(name: str, routes: SessionApiRoutes, url_env: str, list_env: str) -> SourceEntry:
    """A session-API source `name` served at `routes`: enabled by its base URL (`url_env`, field `<name>_url`);
    `list_env` (field `<name>_list_path`) overrides the listing path, '' meaning that it has none."""
    url = Variable(f"{name}_url", url_env, f"enables source {name}: the service's base URL")
    listing = Variable(f"{name}_list_path", list_env, "'' = no listing endpoint", keep_empty=True)

    def configure(values: Values) -> SessionApiSettings | None:
        base = values[url.field]
        return SessionApiSettings(base, values[listing.field]) if base else None

    return SourceEntry(name, (url, listing), configure, builder(name, routes), normalize_agent_sessions)

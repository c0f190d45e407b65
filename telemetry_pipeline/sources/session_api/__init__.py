"""The session API that the Extract and agent telemetry services share (docs/SOURCES.md): the HTTP adapter
(`source`), its settings, and the normaliser of agent-event payloads (`normalize`, set-based in DuckDB)."""

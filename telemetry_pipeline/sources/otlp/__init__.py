"""OpenTelemetry trace files (OTLP/JSON) in an inbox directory (docs/SOURCES.md, `otlp`)."""

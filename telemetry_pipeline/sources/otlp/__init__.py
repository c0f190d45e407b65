"""OpenTelemetry trace files (OTLP/JSON) in an inbox directory (docs/SOURCES.md, `otlp`)."""

from __future__ import annotations

from telemetry_pipeline.sources.base import SourceEntry
from telemetry_pipeline.sources.otlp import settings, source
from telemetry_pipeline.sources.otlp.normalize import normalize_otlp_sessions

# The task description is the root span's name, which instrumentation code sets, not a person.
SOURCE = SourceEntry(source.NAME, settings.VARIABLES, settings.configure, source.build, normalize_otlp_sessions,
                     task_is_content=False)

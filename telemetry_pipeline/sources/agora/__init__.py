"""Agora, the workflow platform (docs/SOURCES.md, `agora`): one session = one workflow execution."""

from __future__ import annotations

from telemetry_pipeline.sources.agora import settings, source
from telemetry_pipeline.sources.agora.normalize import normalize_agora_sessions
from telemetry_pipeline.sources.base import SourceEntry

SOURCE = SourceEntry(source.NAME, settings.VARIABLES, settings.configure, source.build, normalize_agora_sessions)

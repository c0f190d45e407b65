"""Agora's local export (its SDK's offline fallback, `JSONFileExporter`; docs/SOURCES.md, `agora`): JSON Lines,
one span per line, `{"timestamp", "name", "trace_id", "attributes"}`, without span ids, parents, start/end or
status. Read by the inbox beside OTLP files (`source`) and by its normaliser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from telemetry_pipeline.canonical.time import to_utc


def is_agora_export_span(document: Mapping[str, Any]) -> bool:
    return (isinstance(document.get("name"), str) and isinstance(document.get("trace_id"), str)
            and "timestamp" in document and isinstance(document.get("attributes", {}), Mapping))


def agora_export_times(record: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(start, end) in epoch nanoseconds of an Agora export span: it was written as it ended, at
    `timestamp` (naive local time, taken as UTC); it lasted `duration_ms` (`total_duration_ms`)."""
    end = to_utc(record.get("timestamp"))
    if end is None:
        return None, None
    end_ns = round(end.timestamp() * 1e6) * 1000
    attributes = record.get("attributes")
    if not isinstance(attributes, Mapping):
        attributes = {}
    duration = attributes.get("duration_ms", attributes.get("total_duration_ms"))
    if isinstance(duration, int | float) and not isinstance(duration, bool) and 0 < duration < 1e12:
        return end_ns - round(duration * 1e6), end_ns
    return end_ns, end_ns

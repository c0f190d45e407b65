"""The sources, registered once: the resource, discovery, export, health and the CLI iterate over
this table and nothing else.

An entry says what a source is called (the `<source>` of a session key), its settings (a small frozen
dataclass) and how they are taken from the pipeline's `SourcesSettings` (None: not configured), how to
build the source for a run (from its settings and the run's shared HTTP client), and how its raw
sessions are normalised into the canonical model. Adding a source = a folder `sources/<name>/`
(adapter, normaliser, settings) + one entry in `REGISTRY` (README, Development).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from telemetry_pipeline import settings as env
from telemetry_pipeline.settings import SourcesSettings
from telemetry_pipeline.sources import agent_telemetry, extract
from telemetry_pipeline.sources.agora import settings as agora_settings
from telemetry_pipeline.sources.agora import source as agora
from telemetry_pipeline.sources.agora.normalize import normalize_agora_sessions
from telemetry_pipeline.sources.base import RawSession, SharedHttp, Source
from telemetry_pipeline.sources.otlp import settings as otlp_settings
from telemetry_pipeline.sources.otlp import source as otlp
from telemetry_pipeline.sources.otlp.normalize import normalize_otlp_sessions
from telemetry_pipeline.sources.session_api.normalize import normalize_agent_sessions
from telemetry_pipeline.sources.session_api.settings import SessionApiSettings

#: Replaces the canonical rows of the good sessions among `raw` (all of one source; the `str` is the
#: agent name for data that names none) and returns {key: why} for the others.
Normalizer = Callable[[duckdb.DuckDBPyConnection, Sequence[RawSession], str], dict[str, str]]

# Dagster refuses these inside partition keys; a session id carrying one cannot become a partition.
_FORBIDDEN_IN_KEYS = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")


@dataclass(frozen=True)
class SourceEntry:
    name: str
    settings_type: type
    configure: Callable[[SourcesSettings], Any]  # -> its settings (a `settings_type`), None when not configured
    build: Callable[[Any, SharedHttp], Source]  # (its settings, the run's HTTP client) -> the source
    normalize: Normalizer
    enabled_by: str  # the environment variable that enables the source, for messages


REGISTRY: tuple[SourceEntry, ...] = (
    SourceEntry(extract.NAME, SessionApiSettings, extract.configure, extract.build, normalize_agent_sessions,
                env.EXTRACT_SERVICE_URL),
    SourceEntry(agent_telemetry.NAME, SessionApiSettings, agent_telemetry.configure, agent_telemetry.build,
                normalize_agent_sessions, env.AGENT_METRICS_BASE_URL),
    SourceEntry(agora.NAME, agora_settings.AgoraSettings, agora_settings.configure, agora.build,
                normalize_agora_sessions, env.AGORA_PLATFORM_URL),
    SourceEntry(otlp.NAME, otlp_settings.OtlpSettings, otlp_settings.configure, otlp.build, normalize_otlp_sessions,
                env.OTLP_INBOX_DIR),
)
SOURCES: dict[str, SourceEntry] = {entry.name: entry for entry in REGISTRY}
SOURCE_NAMES = tuple(SOURCES)


def parse_key(key: str) -> tuple[str, str]:
    """`<source>:<session_id>` -> (source, session_id); the session id may itself contain ':'."""
    source, sep, session_id = key.partition(":")
    if not sep or source not in SOURCES or not session_id:
        raise ValueError(
            f"invalid session key {key!r}: expected '<source>:<session_id>' with source one of "
            + ", ".join(SOURCE_NAMES)
        )
    return source, session_id


def key_problem(key: str) -> str | None:
    """Why `key` cannot be a partition key, or None when it can."""
    try:
        parse_key(key)
    except ValueError as exc:
        return str(exc)
    bad = [s for s in _FORBIDDEN_IN_KEYS if s in key]
    if bad:
        return f"session key {key!r} contains {bad[0]!r}, which Dagster partition keys cannot hold"
    return None

"""The sources, registered once: settings, the resource, discovery, export, health and the CLI iterate over
this table and nothing else.

Each source declares itself in its own folder (`sources/<name>/__init__.py`: a `SourceEntry` with its name, its
variables, how its settings are taken from them, how it is built for a run and how its raw sessions are
normalised). Adding a source = a folder `sources/<name>/` + its name, one line, in `REGISTERED` (docs/ARCHITECTURE.md,
"A source is one folder"; `test_source_layout.py` adds an example one).
"""

from __future__ import annotations

import importlib

from telemetry_pipeline.sources.base import SourceEntry, Variable

# Each a folder `sources/<name>/` whose `__init__.py` declares `SOURCE`; the order is the order of every listing.
REGISTERED = (
    "extract",
    "agent_telemetry",
    "agora",
    "otlp",
)
REGISTRY: tuple[SourceEntry, ...] = tuple(
    importlib.import_module(f"{__package__}.{name}").SOURCE for name in REGISTERED
)
SOURCES: dict[str, SourceEntry] = {entry.name: entry for entry in REGISTRY}
SOURCE_NAMES = tuple(SOURCES)
#: Every source's variables, in registry order: what settings read and the resource shows.
VARIABLES: tuple[Variable, ...] = tuple(v for entry in REGISTRY for v in entry.variables)

# Dagster refuses these inside partition keys; a session id carrying one cannot become a partition.
_FORBIDDEN_IN_KEYS = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")


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

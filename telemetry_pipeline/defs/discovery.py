"""Which sessions are new: list every source since its watermark, drop the known and the unsettled.
A watermark never moves past a session that was listed but not taken (still active, or refused),
so nothing the sources have is skipped; listings are inclusive (`since` >=) and known keys are
filtered out, so re-listing the edge is harmless.

One watermark store: the metadata of the latest `discovered_sessions` materialisation, whoever recorded it (the
sensor's runless record, or a run of the asset: `telemetry-pipeline discover`, the UI). Every pass adds its new
keys to `agent_sessions` before its record moves the watermarks, so a pass cut off between the two lists the same
sessions again and finds them known.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import dagster as dg

from telemetry_pipeline.canonical.content import Governance
from telemetry_pipeline.canonical.time import format_time, to_utc
from telemetry_pipeline.instance.keys import DISCOVERED_SESSIONS_KEY
from telemetry_pipeline.names import AGENT_SESSIONS
from telemetry_pipeline.sources.base import SessionRef
from telemetry_pipeline.sources.registry import key_problem
from telemetry_pipeline.sources.source_set import SourceSet

log = logging.getLogger(__name__)


@dataclass
class Discovery:
    new: list[SessionRef] = field(default_factory=list)  # in listing order, each key once
    relisted: list[SessionRef] = field(default_factory=list)  # known keys listed again (maybe with new events)
    watermarks: dict[str, str] = field(default_factory=dict)  # source -> RFC 3339 for the next `since`
    errors: dict[str, str] = field(default_factory=dict)  # source -> why its listing failed
    refused: dict[str, str] = field(default_factory=dict)  # key -> why it cannot be a partition
    unsettled: int = 0  # listed, but still active: left for a later tick
    unreadable: dict[str, str] = field(default_factory=dict)  # inbox file -> why nothing in it could be read
    moved: bool = False  # new keys, or a watermark differs from the stored one: the pass must be recorded

    @property
    def new_keys(self) -> list[str]:
        return [ref.key for ref in self.new]


def discover(
    sources: SourceSet,
    watermarks: Mapping[str, str],
    known: Collection[str],
    settle: dt.timedelta = dt.timedelta(0),
    now: dt.datetime | None = None,
    deadline: dt.timedelta | None = None,
) -> Discovery:
    """`deadline`: how long each source may list (`SourceSet.list_sessions`); unbounded when None."""
    now = now or dt.datetime.now(dt.UTC)
    since = {name: to_utc(value) for name, value in watermarks.items()}
    listed, errors = sources.list_sessions(since, deadline)
    result = Discovery(watermarks=dict(watermarks), errors=errors, unreadable=sources.unreadable_files())
    seen: set[str] = set()
    newest: dict[str, dt.datetime] = {}
    held_back: dict[str, dt.datetime] = {}  # earliest session per source we did not take
    for ref in listed:
        at = ref.last_event_at
        if at is not None and at > now - settle:
            result.unsettled += 1
            held_back[ref.source] = min(at, held_back.get(ref.source, at))
            continue
        problem = key_problem(ref.key)
        if problem:
            result.refused[ref.key] = problem
            log.warning("discovery: %s", problem)
        elif ref.key not in seen:
            seen.add(ref.key)
            (result.relisted if ref.key in known else result.new).append(ref)
        if at is not None:
            newest[ref.source] = max(at, newest.get(ref.source, at))
    for source, latest in newest.items():
        mark = min(latest, held_back[source]) if source in held_back else latest
        result.watermarks[source] = format_time(mark)
    return result


def _stored_watermarks(instance: dg.DagsterInstance) -> dict[str, str]:
    """{source: RFC 3339} from the latest `discovered_sessions` record; {} before the first one."""
    previous = instance.get_latest_materialization_event(DISCOVERED_SESSIONS_KEY)
    meta = previous.asset_materialization.metadata if previous and previous.asset_materialization else {}
    return cast(dict[str, str], meta["watermarks"].value) if "watermarks" in meta else {}


def register_new_sessions(
    instance: dg.DagsterInstance,
    sources: SourceSet,
    settle: dt.timedelta,
    governance: Governance,
    deadline: dt.timedelta | None = None,
    fallback: Mapping[str, str] | None = None,
) -> tuple[Discovery, dict[str, Any]]:
    """One discovery pass: list since the stored watermarks (`fallback` for a source that has none there), add
    the new keys to `agent_sessions`, and return the metadata the next record must carry (what a source or a file
    said of its failure governed, as everything that leaves is)."""
    stored = _stored_watermarks(instance)
    known = set(instance.get_dynamic_partitions(AGENT_SESSIONS))
    found = discover(sources, {**(fallback or {}), **stored}, known, settle, deadline=deadline)
    found.moved = bool(found.new) or found.watermarks != stored
    if found.new_keys:
        instance.add_dynamic_partitions(AGENT_SESSIONS, found.new_keys)
    return found, {
        "new_count": len(found.new_keys),
        "new_keys": dg.MetadataValue.json(found.new_keys),
        "known_count": len(known) + len(found.new_keys),
        "watermarks": dg.MetadataValue.json(found.watermarks),
        "unsettled": found.unsettled,
        "source_errors": dg.MetadataValue.json({k: governance.message(e) for k, e in found.errors.items()}),
        "refused_keys": dg.MetadataValue.json({k: governance.message(e) for k, e in found.refused.items()}),
        "unreadable_files": dg.MetadataValue.json(
            [{"file": f, "error": governance.message(e)} for f, e in found.unreadable.items()]),
    }

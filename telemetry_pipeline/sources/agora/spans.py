"""Agora's telemetry spans as the backend stores them (SOURCES.md `agora`): put on the execution's clock,
folded into node runs (`canonical.agora_tracer`), and each run given to the timeline entry it was.

Agora's SDK writes span times as the client's naive local time, which the backend stores as if it were
UTC: a client in Berlin has spans an hour after their execution, one in New York four hours before. The
execution and its timeline are true UTC, so the offset is estimated from the `.node` spans against the
timeline's starts of the same nodes (else the first span against the execution's start), rounded to the
whole quarter hours that time zones differ by, and taken off every span.

A run belongs to the entry of its node; when the node ran more than once, to the run that had started
when the spans' run started. A timeline entry whose node name came back "Unknown" (the node row is gone)
takes the runs whose node has no entry of its own and that started inside the entry's run.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from typing import Any

from telemetry_pipeline.canonical.agora_tracer import NodeRun, TracerSpan, fold
from telemetry_pipeline.canonical.genai import GenAI, first_int, first_text
from telemetry_pipeline.canonical.time import to_utc
from telemetry_pipeline.canonical.values import text

QUARTER_HOUR = dt.timedelta(minutes=15)
MAX_OFFSET = dt.timedelta(hours=14)  # time zones run from UTC-12 to UTC+14
# A node's timeline entry is stamped a moment after its `.node` span opened (and clocks drift a little).
TOLERANCE = dt.timedelta(milliseconds=250)
UNKNOWN_NODE = "Unknown"  # the timeline's node name when the join with the node row came back empty

Window = tuple[dt.datetime, dt.datetime | None]  # a node run's start and end (None while running)


def node_spans(
    raw_spans: list[Any], names: list[str | None], windows: list[Window], execution_start: dt.datetime | None
) -> tuple[list[list[NodeRun]], dt.timedelta]:
    """(each timeline entry's span runs, the offset taken off the span times). `names[i]` is entry i's node
    name, None when the timeline does not know it. A span's `ref` is its row."""
    spans = [_span(s) for s in raw_spans if isinstance(s, Mapping)]
    offset = _clock_offset(spans, names, windows, execution_start)
    for span in spans:
        span.start = span.start - offset if span.start else None
        span.end = span.end - offset if span.end else None
    by_name: dict[str, list[int]] = {}
    for position, name in enumerate(names):
        if name:
            by_name.setdefault(name, []).append(position)
    unnamed = [p for p, name in enumerate(names) if not name]
    out: list[list[NodeRun]] = [[] for _ in names]
    for run in fold(spans).runs:
        at = run.node_span.start if run.node_span and run.node_span.start else run.start
        candidates = by_name.get(run.node) or [
            p for p in unnamed if at and windows[p][0] - TOLERANCE <= at <= (windows[p][1] or at) + TOLERANCE
        ]
        if candidates:
            out[_run_at(candidates, windows, at)].append(run)
    return out, offset


def is_agora(span: TracerSpan) -> bool:
    """Agora's own flow/node/phase spans, as opposed to the calls made inside them."""
    return span.is_node_span or span.phase is not None or span.flow is not None


def run_attributes(runs: list[NodeRun]) -> dict[str, Any]:
    """What the runs' spans say of the node run: phase durations, retries, next action."""
    merged: dict[str, Any] = {}
    for run in runs:
        for key, value in run.attributes().items():
            if key.endswith("_duration_ms") or key in ("retry_count", "next_action"):
                merged.setdefault(key, value)
    return merged


def summary(span: TracerSpan) -> dict[str, Any]:
    kind = span.ref.get("kind")
    return {"name": span.name, "kind": kind.removeprefix("SpanKind.") if isinstance(kind, str) else kind,
            "status": span.ref.get("status"), "duration_ms": span.ref.get("duration_ms")}


def name_from_spans(spans: list[TracerSpan]) -> str | None:
    """The node an unnamed timeline entry ran, as its spans name it."""
    names = Counter(s.node for s in spans if s.node)
    return names.most_common(1)[0][0] if names else None


def usage_spans(spans: list[TracerSpan]) -> list[TracerSpan]:
    """The spans whose token counts add up without counting a call twice: the LLM calls when any carry
    usage, else the phase spans, else any (Agora's `.node` span may repeat its phases' usage)."""
    carrying = [s for s in spans
                if any(first_int(s.attributes, c) is not None for c in (GenAI.INPUT_TOKENS, GenAI.OUTPUT_TOKENS))]
    calls = [s for s in carrying if not is_agora(s)]
    phases = [s for s in carrying if s.phase is not None]
    return calls or phases or carrying


def model(spans: list[TracerSpan]) -> str | None:
    """The model of the node's last LLM call (else of its last span naming one)."""
    named = [(s, m) for s in spans if (m := first_text(s.attributes, GenAI.MODEL))]
    calls = [(s, m) for s, m in named if not is_agora(s)] or named
    latest = max(calls, key=lambda sm: sm[0].start or dt.datetime.min.replace(tzinfo=dt.UTC), default=None)
    return latest[1] if latest else None


def _span(row: Mapping[str, Any]) -> TracerSpan:
    attributes = found if isinstance(found := row.get("attributes"), Mapping) else {}
    parent = row.get("parent_span_id")
    return TracerSpan(
        str(row.get("name") or ""), attributes, to_utc(row.get("start_time")), to_utc(row.get("end_time")),
        span_id=text(row.get("span_id"), 200), parent_id=text(parent, 200) if parent is not None else None,
        failed=str(row.get("status") or "").upper() == "ERROR", ref=row,
    )


def _clock_offset(
    spans: list[TracerSpan], names: list[str | None], windows: list[Window], execution_start: dt.datetime | None
) -> dt.timedelta:
    """How far the span clock is ahead of the execution's: the commonest node-span/timeline difference."""
    votes: Counter[int] = Counter()
    for name in {n for n in names if n}:
        starts = sorted(windows[p][0] for p, n in enumerate(names) if n == name)
        opened = sorted(s.start for s in spans if s.is_node_span and s.node == name and s.start)
        votes.update(_quarters(span_start - start) for start, span_start in zip(starts, opened, strict=False))
    if not votes:
        first = min((s.start for s in spans if s.start), default=None)
        reference = execution_start or min((w[0] for w in windows), default=None)
        if first and reference:
            votes[_quarters(first - reference)] += 1
    offset = QUARTER_HOUR * votes.most_common(1)[0][0] if votes else dt.timedelta(0)
    return offset if abs(offset) <= MAX_OFFSET else dt.timedelta(0)


def _quarters(difference: dt.timedelta) -> int:
    return round(difference / QUARTER_HOUR)


def _run_at(candidates: list[int], windows: list[Window], at: dt.datetime | None) -> int:
    """Of a node's runs, the last one that had started at `at` (the first when none had)."""
    if len(candidates) == 1 or at is None:
        return candidates[0]
    started = [p for p in candidates if windows[p][0] <= at + TOLERANCE]
    return max(started, key=lambda p: windows[p][0]) if started else candidates[0]

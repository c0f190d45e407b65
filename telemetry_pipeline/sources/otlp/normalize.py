"""Normalise OTLP/JSON trace sessions (payload built by the `otlp` source) into the canonical model.

One activity per span (a span repeated across files, same trace and span id, counts once), except
Agora's tracer spans, which fold into one activity per node run (`canonical.agora_tracer`):
- `activity`, low-cardinality and without ids (`canonical.activity.span_activity`): by the span's GenAI
  operation whatever convention names it (`canonical.genai`: OpenTelemetry GenAI, deprecated names,
  OpenInference, Vercel AI SDK, Traceloop, LiteLLM; else the span name's own `chat gpt-4o`,
  `execute_tool x`, `invoke_agent y`): `Chat`, `Embeddings`, `Call tool <tool>`, `Invoke agent <agent>`…,
  else the span name. An Agora node run is its node's name; a `{flow}.flow` span is the case itself
  (its workflow), not an activity.
- `model` and tokens sit on LLM calls only: a span that reports usage its descendants already reported
  (an agent or workflow span summing its calls, Vercel's `ai.generateText` over `doGenerate`) keeps
  it in `attributes`, so a case's tokens add up once. An Agora node run carries the LLM calls made
  inside it; `tool_name` names the tool a span calls; `resource` = tool, agent, model, entity, service.
- `event_type` = the operation (or span kind), `node_execution` for a node run, else `span`;
  `event_time`/`end_time` = span start/end (`end_time` NULL when the span has none: status
  `incomplete`); status `failed` when status.code is ERROR; `error` = status.message (else the
  exception event's).
- `attributes`: every span attribute decoded to plain JSON, resource attributes as `resource.<key>`,
  scope attributes as `scope.<key>`, and `otel.*` entries for the span's name, kind, ids, status, scope,
  events, links and any other field; a node run's phase durations, retries and the spans it folded.

Agora's local export spans (`agoraSpans`: no ids, no status) are read like spans; one that repeats a span
of an OTLP capture of the same trace (same name and attributes, in order) counts once.

The `sessions` row: status `failed` when a root span failed, `partial` when another span failed, else
`completed`; agent = the first agent named (else `service.name` unless it is OpenTelemetry's
`unknown_service`, else the workflow, else the fallback); workflow = the first workflow named (Traceloop,
Agora's flow); task = the root span's name; `source_metrics` carries span count, trace ids, files,
`skipped_lines` and the repeated export spans left out.

A session fails alone when the payload is not JSON / has no `resourceSpans` list, or a span has
neither a start nor an end time.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from telemetry_pipeline.canonical.activity import humanize, session_outcome, span_activity
from telemetry_pipeline.canonical.agora_tracer import FoldedTrace, NodeRun, TracerSpan, fold, is_tracer_span
from telemetry_pipeline.canonical.genai import (
    LLM_OPERATIONS,
    GenAI,
    agent_name,
    first_int,
    first_text,
    operation,
    span_kind,
    tool_name,
    usage_of,
)
from telemetry_pipeline.canonical.identity import AgentDefaults
from telemetry_pipeline.canonical.model import EventRow, SessionRow
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.rows import InvalidPayload, normalize_each, parse_json
from telemetry_pipeline.canonical.time import ms_between, nanos_to_datetime
from telemetry_pipeline.canonical.values import event_id, json_text, text
from telemetry_pipeline.sources.otlp.agora_export import agora_export_times
from telemetry_pipeline.sources.otlp.otlp_json import (
    SPAN_KINDS,
    STATUS_CODES,
    attributes_of,
    enum_name,
    get,
    hex_id,
    resource_spans,
    scope_of,
    scope_spans,
    snake_case,
    unix_nanos,
)
from telemetry_pipeline.sources.otlp.steps import (
    FOLDED,
    Attribution,
    Role,
    attribute,
    control_flow,
    display_name,
    handoff_target,
)

_MAPPED_SPAN_KEYS = {
    "traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id", "name", "kind",
    "startTimeUnixNano", "start_time_unix_nano", "endTimeUnixNano", "end_time_unix_nano",
    "attributes", "status", "events", "links",
}
# OpenTelemetry SDKs name a service that set none `unknown_service` (`unknown_service:<process>`): no name.
_UNNAMED_SERVICE = re.compile(r"^unknown_service(:.*)?$")


def normalize_otlp_sessions(
    con: duckdb.DuckDBPyConnection, raw: Sequence[RawSession], agents: AgentDefaults
) -> dict[str, str]:
    return normalize_each(con, raw, agents, _session)


@dataclass(eq=False)
class _Span:
    """One span of the session, decoded; `row` is filled in once its place (own row, node run) is known."""

    seq: int
    name: str
    trace_id: str | None
    span_id: str | None
    parent_id: str | None
    attrs: dict[str, Any]
    resource_attrs: dict[str, Any]
    start_ns: int | None
    end_ns: int | None
    failed: bool
    error: str | None
    out: dict[str, Any]  # the row's attributes
    op: str | None = None
    kind: str | None = None
    tool: str | None = None
    agent: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    llm: bool = False  # an LLM call whose usage counts (not a sum its descendants already reported)
    exported: bool = False  # from Agora's local export (no ids, no status)
    scope: str | None = None  # the instrumentation's scope name

    @property
    def start(self) -> dt.datetime:
        return nanos_to_datetime(self.start_ns if self.start_ns is not None else self.end_ns or 0)

    @property
    def end(self) -> dt.datetime | None:
        return nanos_to_datetime(self.end_ns) if self.end_ns is not None else None

    @property
    def service(self) -> str | None:
        service = text(self.resource_attrs.get("service.name"), 200)
        return None if service is None or _UNNAMED_SERVICE.match(service) else service


def _session(raw: RawSession, agents: AgentDefaults) -> tuple[SessionRow, list[EventRow]]:
    doc = parse_json(raw.body)
    if not isinstance(doc, Mapping) or not isinstance(get(doc, "resourceSpans"), list):
        raise InvalidPayload('payload has no "resourceSpans" list')
    spans = _otlp_spans(doc)
    exported = _export_spans(doc, len(spans))
    repeated = _repeats(spans, exported)
    spans += [s for s in exported if id(s) not in repeated]
    _mark_llm_calls(spans)
    who = attribute(spans)

    ids = {s.span_id for s in spans if s.span_id}
    roots = sorted((s for s in spans if not s.parent_id or s.parent_id not in ids), key=lambda s: (s.start, s.seq))
    by_start = sorted(spans, key=lambda s: (s.start, s.seq))

    def first(read: Callable[[_Span], str | None]) -> str | None:
        return next((value for s in by_start if (value := read(s))), None)

    traces = [(trace_spans, _fold(trace_spans)) for trace_spans in _by_trace(spans).values()]
    workflows = [folded.workflow for _, folded in traces if folded and folded.workflow]
    workflow = (first(lambda s: first_text(s.attrs, GenAI.WORKFLOW_NAME)) or next(iter(workflows), None)
                or first(lambda s: first_text(s.attrs, GenAI.ENTITY_NAME) if s.kind == "workflow" else None)
                or first(lambda s: s.name if who.roles[id(s)] is Role.WORKFLOW else None))
    agent = agents.case_agent(next(iter(who.agents), None) or first(lambda s: s.agent), first(lambda s: s.service),
                              workflow)

    rows: list[EventRow] = []
    flows: list[dict[str, Any]] = []
    for trace_spans, folded in traces:
        if folded is None:
            steps = [s for s in trace_spans if _is_step(s, who)]
            # A trace of nothing but plumbing still happened: its root spans say so.
            steps = steps or [s for s in trace_spans if not s.parent_id or s.parent_id not in ids]
            rows += [_span_row(raw.key, s, who, agent) for s in steps]
            continue
        flows += [{"name": f.name, "attributes": f.attributes} for f in folded.flows]
        rows += [_run_row(raw.key, run, who, agent) for run in folded.runs]
        rows += [_span_row(raw.key, s.ref, who, agent) for s in folded.others if _is_step(s.ref, who)]
    # At one instant, a parent before its child (a run before the calls it makes), then the payload's order.
    depth = {s.seq: who.depths[id(s)] for s in spans}
    rows.sort(key=lambda r: (r.event_time, depth.get(r.seq, 0), r.seq))

    root_failed = any(s.failed for s in roots)
    status = session_outcome(root_failed, any(s.failed for s in spans))
    task = roots[0].name if roots else None
    session = SessionRow(
        session_key=raw.key, source=raw.source, session_id=raw.session_id,
        agent_name=agent,
        task_description=(task or f"OTLP session {raw.session_id}")[:500],
        start_time=min((r.event_time for r in rows), default=None),
        end_time=max((r.end_time or r.event_time for r in rows), default=None),
        status=status,
        service_name=first(lambda s: s.service),
        workflow_name=workflow,
        workflow_version=first(lambda s: text(s.resource_attrs.get("service.version"), 200)),
        agent_type=None, agent_state=None,
        event_count=len(rows),
        source_metrics=json_text({
            "span_count": len(spans),
            "trace_ids": sorted({s.trace_id for s in spans if s.trace_id})[:50],
            "files": doc.get("files") if isinstance(doc.get("files"), list) else None,
            "skipped_lines": doc.get("skipped_lines") if isinstance(doc.get("skipped_lines"), list) else [],
            "repeated_export_spans": len(repeated),
            **({"flows": flows} if flows else {}),
        }),
    )
    return session, rows


# --------------------------------------------------------------------------------------------------
# Reading spans


def _otlp_spans(doc: Mapping[str, Any]) -> list[_Span]:
    spans: list[_Span] = []
    seen: set[tuple[str, str]] = set()
    seq = -1
    for rs in resource_spans(doc):
        resource_attrs = attributes_of(get(rs, "resource"))
        for ss in scope_spans(rs):
            scope = scope_of(ss)
            for span in get(ss, "spans") or []:
                seq += 1
                if not isinstance(span, Mapping):
                    continue
                trace_id, span_id = hex_id(get(span, "traceId")), hex_id(get(span, "spanId"))
                if trace_id and span_id:
                    if (trace_id, span_id) in seen:
                        continue  # the same span delivered twice (e.g. a Collector retry)
                    seen.add((trace_id, span_id))
                spans.append(_otlp_span(seq, span, trace_id, span_id, resource_attrs, scope))
    return spans


def _otlp_span(seq: int, span: Mapping[str, Any], trace_id: str | None, span_id: str | None,
               resource_attrs: dict[str, Any], scope: Any) -> _Span:
    name = text(get(span, "name"), 500) or ""
    attrs = attributes_of(span)
    start_ns, end_ns = unix_nanos(get(span, "startTimeUnixNano")), unix_nanos(get(span, "endTimeUnixNano"))
    if start_ns is None and end_ns is None:
        raise InvalidPayload(f"span {name or span_id or seq!r} has neither a start nor an end time")
    status_obj = get(span, "status") if isinstance(get(span, "status"), Mapping) else {}
    code = enum_name(get(status_obj, "code"), STATUS_CODES, "STATUS_CODE_") or "UNSET"
    events = [_event(e) for e in get(span, "events") or [] if isinstance(e, Mapping)]
    handed_over = control_flow(attrs, events) if code == "ERROR" else None  # LangGraph's ParentCommand: no failure
    failed = code == "ERROR" and handed_over is None
    error = None
    if failed:
        error = text(get(status_obj, "message"), 2000) or next(
            (text(": ".join(str(v) for v in (e["attributes"].get("exception.type"),
                                            e["attributes"].get("exception.message")) if v), 2000)
             for e in events if e.get("name") == "exception" and isinstance(e.get("attributes"), dict)), None)

    parent_id = hex_id(get(span, "parentSpanId"))
    out: dict[str, Any] = dict(attrs)
    out.update({f"resource.{k}": v for k, v in resource_attrs.items()})
    out.update({f"scope.{k}": v for k, v in attributes_of(scope).items()})
    out.update({
        "otel.span.name": name, "otel.span.kind": enum_name(get(span, "kind"), SPAN_KINDS, "SPAN_KIND_"),
        "otel.trace_id": trace_id, "otel.span_id": span_id, "otel.parent_span_id": parent_id,
        "otel.status.code": code, "otel.scope.name": get(scope, "name"), "otel.scope.version": get(scope, "version"),
    })
    if get(status_obj, "message"):
        out["otel.status.message"] = get(status_obj, "message")
    if handed_over:
        out["otel.control_flow"] = handed_over
    if events:
        out["otel.events"] = events
    links = get(span, "links")
    if links:
        out["otel.links"] = [
            {"trace_id": hex_id(get(link, "traceId")), "span_id": hex_id(get(link, "spanId")),
             "attributes": attributes_of(link)} for link in links if isinstance(link, Mapping)
        ]
    for k, v in span.items():
        if k not in _MAPPED_SPAN_KEYS:
            out["otel." + snake_case(k)] = v
    return _classified(_Span(seq, name, trace_id, span_id, parent_id, attrs, resource_attrs, start_ns, end_ns,
                             failed, error, {k: v for k, v in out.items() if v is not None},
                             scope=text(get(scope, "name"), 200)))


def _export_spans(doc: Mapping[str, Any], offset: int) -> list[_Span]:
    """Agora's local export spans of the session: no ids, no status; ended at `timestamp`."""
    records = doc.get("agoraSpans")
    spans: list[_Span] = []
    if not isinstance(records, list):
        return spans
    for n, record in enumerate(records):
        if not isinstance(record, Mapping):
            continue
        name = text(record.get("name"), 500) or ""
        start_ns, end_ns = agora_export_times(record)
        if end_ns is None:
            raise InvalidPayload(f"Agora export span {name!r} has a timestamp that cannot be read: "
                                 f"{str(record.get('timestamp'))[:100]}")
        attrs = dict(record["attributes"]) if isinstance(record.get("attributes"), Mapping) else {}
        trace_id = hex_id(record.get("trace_id"))
        out = {**attrs, "otel.span.name": name, "otel.trace_id": trace_id,
               "agora.export.timestamp": record.get("timestamp")}
        span = _Span(offset + n, name, trace_id, None, None, attrs, {}, start_ns, end_ns, False, None, out,
                     exported=True)
        spans.append(_classified(span))
    return spans


def _repeats(spans: list[_Span], exported: list[_Span]) -> set[int]:
    """Export spans that repeat a span of an OTLP capture of the same trace (same name, same attributes;
    matched in order, so a node that ran five times is matched five times, not once)."""
    if not exported:
        return set()
    available: Counter[tuple[Any, ...]] = Counter(_fingerprint(s) for s in spans if s.trace_id)
    repeated: set[int] = set()
    for span in exported:
        key = _fingerprint(span)
        if available[key] > 0:
            available[key] -= 1
            repeated.add(id(span))
    return repeated


def _fingerprint(span: _Span) -> tuple[Any, ...]:
    def plain(value: Any) -> str:  # the exporters spell the same value differently: 0 / "0" / 0.0
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else str(value)

    return span.trace_id, span.name, tuple(sorted((k, plain(v)) for k, v in span.attrs.items()))


def _classified(span: _Span) -> _Span:
    attrs = span.attrs
    span.op, span.kind = operation(attrs, span.name), span_kind(attrs)
    span.tool, span.agent = tool_name(attrs, span.name), agent_name(attrs, span.name)
    span.model = first_text(attrs, GenAI.MODEL)
    span.input_tokens, span.output_tokens = first_int(attrs, GenAI.INPUT_TOKENS), first_int(attrs, GenAI.OUTPUT_TOKENS)
    return span


def _mark_llm_calls(spans: list[_Span]) -> None:
    """An LLM call is a span of an LLM operation, or an unclassified span reporting a model or usage,
    unless a descendant reported usage already: then its numbers are a sum, kept in attributes only."""
    by_id: dict[tuple[str | None, str | None], _Span] = {(s.trace_id, s.span_id): s for s in spans if s.span_id}
    summing: set[int] = set()
    for span in spans:
        if span.input_tokens is None and span.output_tokens is None:
            continue
        parent = by_id.get((span.trace_id, span.parent_id))
        while parent is not None and id(parent) not in summing:  # marked: so are its ancestors (or a cycle)
            summing.add(id(parent))
            parent = by_id.get((parent.trace_id, parent.parent_id))
    for span in spans:
        plain = span.op is None and span.kind not in ("tool", "agent", "workflow", "task", "chain") and not span.tool
        reported = span.model is not None or span.input_tokens is not None or span.output_tokens is not None
        span.llm = id(span) not in summing and (span.op in LLM_OPERATIONS or (plain and reported))
        if span.llm and span.op is None:
            span.op = "chat"  # usage and a model, nothing else said: a chat call, named as one


def _by_trace(spans: Iterable[_Span]) -> dict[str | None, list[_Span]]:
    traces: dict[str | None, list[_Span]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    return traces


def _fold(spans: list[_Span]) -> FoldedTrace | None:
    """Agora's node runs of one trace, or None when the trace has no Agora tracer span."""
    wrapped = [TracerSpan(s.name, s.attrs, s.start, s.end, s.span_id, s.parent_id, s.failed, s)
               for s in sorted(spans, key=lambda s: (s.end_ns or s.start_ns or 0, s.seq))]
    if not any(is_tracer_span(w) for w in wrapped):
        return None
    return fold(wrapped)


# --------------------------------------------------------------------------------------------------
# Rows


def _is_step(span: _Span, who: Attribution) -> bool:
    """Workflows and plumbing fold into the steps they serve, unless they failed (no failure is hidden)."""
    return who.roles[id(span)] not in FOLDED or span.failed


def _span_row(key: str, s: _Span, who: Attribution, agent: str) -> EventRow:
    role = who.roles[id(s)]
    target = handoff_target(s) if role is Role.HANDOFF else None
    if target:
        activity = f"Hand off to {display_name(target, who.agents)}"
    elif role is Role.AGENT:
        activity = span_activity("invoke_agent", s.kind, None, who.invoked[id(s)], None, None, s.name)
    else:
        activity = span_activity(s.op, s.kind, s.tool, s.agent, first_text(s.attrs, GenAI.ENTITY_NAME),
                                 first_text(s.attrs, GenAI.WORKFLOW_NAME), s.name)
    if s.exported:
        anchor: tuple[Any, ...] = ("agora-export", s.trace_id, s.name, s.end_ns, s.seq)
    else:
        anchor = (s.trace_id, s.span_id) if s.trace_id and s.span_id else (
            s.trace_id, s.name, s.start_ns, s.end_ns, s.seq)
    end = s.end
    usage = usage_of([s.attrs] if s.llm else [])
    return EventRow(
        event_id=event_id(key, "span", *anchor),
        session_key=key, seq=s.seq, activity=activity, event_type="handoff" if target else s.op or s.kind or "span",
        event_time=s.start, end_time=end,
        resource=who.actors[id(s)] or agent,
        status="failed" if s.failed else "success" if end is not None else "incomplete",
        tool_name=None if target else s.tool, model=s.model if s.llm else None,  # a handoff is no tool call
        latency_ms=_latency(s.start_ns, s.end_ns),
        error=s.error, attributes=json_text(s.out), **usage,
    )


def _run_row(key: str, run: NodeRun, who: Attribution, agent: str) -> EventRow:
    members: list[_Span] = [s.ref for s in run.spans]
    head: _Span = run.node_span.ref if run.node_span else members[0]
    inner: list[_Span] = [s.ref for s in run.inner]
    calls = [s for s in inner if s.llm]
    tool = next((s.tool for s in inner if s.tool), None)
    model = next((s.model for s in calls if s.model), None)
    start, end = run.start or head.start, run.end
    attrs: dict[str, Any] = {
        **run.attributes(),
        "otel.trace_id": head.trace_id, "otel.span_id": head.span_id, "otel.span.name": head.name,
        "spans": [s.name for s in members],
    }
    if calls:
        attrs["llm_calls"] = [{"model": s.model, "input_tokens": s.input_tokens, "output_tokens": s.output_tokens,
                               "response_id": s.attrs.get("gen_ai.response.id")} for s in calls]
    if inner:
        attrs["inner_spans"] = [s.out for s in inner]
    if head.service:
        attrs["resource.service.name"] = head.service
    anchor = (head.trace_id, head.span_id) if head.span_id else (
        "agora-export", head.trace_id, head.name, head.end_ns, head.seq)
    return EventRow(
        event_id=event_id(key, "node_run", *anchor),
        session_key=key, seq=min(s.seq for s in members), activity=humanize(run.node), event_type="node_execution",
        event_time=start, end_time=end if run.complete else None,
        resource=who.actors[id(head)] or agent,
        status="failed" if run.failed else "success" if run.complete else "incomplete",
        tool_name=tool, model=model,
        latency_ms=ms_between(start, end) if run.complete else None,
        error=next((s.error for s in members if s.error), None), attributes=json_text(attrs),
        **usage_of([s.attrs for s in calls]),
    )


def _latency(start_ns: int | None, end_ns: int | None) -> int | None:
    return round((end_ns - start_ns) / 1e6) if start_ns is not None and end_ns is not None else None


def _event(event: Mapping[str, Any]) -> dict[str, Any]:
    nanos = unix_nanos(get(event, "timeUnixNano"))
    return {
        "name": get(event, "name"),
        "time": nanos_to_datetime(nanos).isoformat().replace("+00:00", "Z") if nanos else None,
        "attributes": attributes_of(event),
    }

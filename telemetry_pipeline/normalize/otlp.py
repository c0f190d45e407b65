"""Normalise OTLP/JSON trace sessions (payload built by `sources/otlp.py`) into the canonical model.

One activity per span (a span repeated across files, same trace and span id, counts once):
- `activity`, low-cardinality and without ids: from `gen_ai.operation.name` (else Traceloop's
  `llm.request.type`): `execute_tool` -> `Execute tool <gen_ai.tool.name>`, `invoke_agent` ->
  `Invoke agent <gen_ai.agent.name>`, `create_agent` -> `Create agent <name>`, any other operation
  made readable (`chat` -> `Chat`, `text_completion` -> `Text completion`: never the model name);
  else from `traceloop.span.kind`: tool/agent as above with `traceloop.entity.name`,
  `workflow` -> `Workflow <traceloop.workflow.name>`, `task` -> `Task <traceloop.entity.name>`;
  else the span name.
- `event_type` = the operation (or Traceloop span kind), else `span`; `event_time`/`end_time` = span
  start/end (`end_time` NULL when the span has none: status `incomplete`); status `failed` when
  status.code is ERROR, else `success`; `error` = status.message (else the exception event's).
- `model` = gen_ai.response.model / gen_ai.request.model (or `llm.*`), tokens = gen_ai.usage.input/
  output_tokens, else the older prompt/completion_tokens, else `llm.usage.prompt/completion_tokens`;
  `tool_name` = gen_ai.tool.name (or the Traceloop tool entity); `resource` = tool, agent, model,
  Traceloop entity, else the resource's `service.name`.
- `attributes`: every span attribute decoded to plain JSON (string, int, double, bool, array, kvlist;
  bytes as base64 text), resource attributes as `resource.<key>`, scope attributes as `scope.<key>`,
  and `otel.*` entries for the span's name, kind, ids, status, scope, events, links and any other field.

The `sessions` row: status `failed` when a root span failed, `partial` when another span failed, else
`completed`; agent = first `gen_ai.agent.name` (else `service.name`, else the fallback), service = `service.name`,
workflow = `traceloop.workflow.name`, task = the root span's name; `source_metrics` carries span count, trace ids,
files and the `skipped_lines` of the payload.

A session fails alone when the payload is not JSON / has no `resourceSpans` list, or a span has
neither a start nor an end time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import duckdb

from telemetry_pipeline.canonical.activity import span_activity
from telemetry_pipeline.canonical.genai import GenAI, agent_name, first_int, first_text, operation, span_kind, tool_name
from telemetry_pipeline.canonical.model import EventRow, SessionRow
from telemetry_pipeline.canonical.rows import InvalidPayload, normalize_each, parse_json
from telemetry_pipeline.canonical.time import nanos_to_datetime
from telemetry_pipeline.canonical.values import event_id, json_text, text
from telemetry_pipeline.sources.base import RawSession
from telemetry_pipeline.sources.otlp import (
    SPAN_KINDS,
    STATUS_CODES,
    attributes_of,
    enum_name,
    get,
    hex_id,
    resource_spans,
    scope_of,
    scope_spans,
    unix_nanos,
)

_MAPPED_SPAN_KEYS = {
    "traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id", "name", "kind",
    "startTimeUnixNano", "start_time_unix_nano", "endTimeUnixNano", "end_time_unix_nano",
    "attributes", "status", "events", "links",
}


def normalize_otlp_sessions(
    con: duckdb.DuckDBPyConnection, raw: Sequence[RawSession], fallback_agent: str
) -> dict[str, str]:
    return normalize_each(con, raw, fallback_agent, _session)


class _Span:
    __slots__ = ("attrs", "name", "parent_id", "resource_attrs", "row", "span_id", "trace_id")

    def __init__(self, row: EventRow, trace_id: str | None, span_id: str | None, parent_id: str | None,
                 name: str, attrs: dict[str, Any], resource_attrs: dict[str, Any]) -> None:
        self.row, self.trace_id, self.span_id, self.parent_id = row, trace_id, span_id, parent_id
        self.name, self.attrs, self.resource_attrs = name, attrs, resource_attrs


def _session(raw: RawSession, fallback_agent: str) -> tuple[SessionRow, list[EventRow]]:
    doc = parse_json(raw.body)
    if not isinstance(doc, Mapping) or not isinstance(get(doc, "resourceSpans"), list):
        raise InvalidPayload('payload has no "resourceSpans" list')

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
                spans.append(_span_row(raw.key, seq, span, trace_id, span_id, resource_attrs, scope))
    rows = [s.row for s in spans]

    ids = {s.span_id for s in spans if s.span_id}
    roots = sorted((s for s in spans if not s.parent_id or s.parent_id not in ids), key=lambda s: s.row.event_time)
    by_start = sorted(spans, key=lambda s: (s.row.event_time, s.row.seq))
    failed = [s for s in spans if s.row.status == "failed"]
    root_failed = any(s.row.status == "failed" for s in roots)
    status = "failed" if root_failed else "partial" if failed else "completed"

    def first(read: Callable[[_Span], str | None]) -> str | None:
        return next((value for s in by_start if (value := read(s))), None)

    def resource(key: str) -> Callable[[_Span], str | None]:
        return lambda s: text(s.resource_attrs.get(key), 200)

    agent = first(lambda s: first_text(s.attrs, GenAI.AGENT_NAME)) or first(lambda s: agent_name(s.attrs))
    task = roots[0].name if roots else None
    session = SessionRow(
        session_key=raw.key, source=raw.source, session_id=raw.session_id,
        agent_name=agent or first(resource("service.name")) or fallback_agent,
        task_description=(task or f"OTLP session {raw.session_id}")[:500],
        start_time=min((r.event_time for r in rows), default=None),
        end_time=max((r.end_time or r.event_time for r in rows), default=None),
        status=status,
        service_name=first(resource("service.name")),
        workflow_name=first(lambda s: first_text(s.attrs, GenAI.WORKFLOW_NAME)),
        workflow_version=first(resource("service.version")),
        agent_type=None, agent_state=None,
        event_count=len(rows),
        source_metrics=json_text({
            "span_count": len(rows),
            "trace_ids": sorted({s.trace_id for s in spans if s.trace_id})[:50],
            "files": doc.get("files") if isinstance(doc.get("files"), list) else None,
            "skipped_lines": doc.get("skipped_lines") if isinstance(doc.get("skipped_lines"), list) else [],
        }),
    )
    return session, rows


def _span_row(key: str, seq: int, span: Mapping[str, Any], trace_id: str | None, span_id: str | None,
              resource_attrs: dict[str, Any], scope: Any) -> _Span:
    name = text(get(span, "name"), 500) or ""
    attrs = attributes_of(span)
    start_ns, end_ns = unix_nanos(get(span, "startTimeUnixNano")), unix_nanos(get(span, "endTimeUnixNano"))
    if start_ns is None and end_ns is None:
        raise InvalidPayload(f"span {name or span_id or seq!r} has neither a start nor an end time")
    start = nanos_to_datetime(start_ns if start_ns is not None else end_ns)  # type: ignore[arg-type]
    end = nanos_to_datetime(end_ns) if end_ns is not None else None
    status_obj = get(span, "status") if isinstance(get(span, "status"), Mapping) else {}
    code = enum_name(get(status_obj, "code"), STATUS_CODES, "STATUS_CODE_") or "UNSET"
    kind = enum_name(get(span, "kind"), SPAN_KINDS, "SPAN_KIND_")
    events = [_event(e) for e in get(span, "events") or [] if isinstance(e, Mapping)]

    op, step_kind = first_text(attrs, GenAI.OPERATION, 100), span_kind(attrs)
    entity = first_text(attrs, GenAI.ENTITY_NAME)
    tool, agent, model = tool_name(attrs), agent_name(attrs), first_text(attrs, GenAI.MODEL)
    workflow = first_text(attrs, GenAI.WORKFLOW_NAME)
    activity = span_activity(operation(attrs), step_kind, tool, agent, entity, workflow, name)

    failed = code == "ERROR"
    error = None
    if failed:
        error = text(get(status_obj, "message"), 2000) or next(
            (text(": ".join(str(v) for v in (e["attributes"].get("exception.type"),
                                            e["attributes"].get("exception.message")) if v), 2000)
             for e in events if e.get("name") == "exception" and isinstance(e.get("attributes"), dict)), None)

    out: dict[str, Any] = dict(attrs)
    out.update({f"resource.{k}": v for k, v in resource_attrs.items()})
    out.update({f"scope.{k}": v for k, v in attributes_of(scope).items()})
    out.update({
        "otel.span.name": name, "otel.span.kind": kind, "otel.trace_id": trace_id, "otel.span_id": span_id,
        "otel.parent_span_id": hex_id(get(span, "parentSpanId")), "otel.status.code": code,
        "otel.scope.name": get(scope, "name"), "otel.scope.version": get(scope, "version"),
    })
    if get(status_obj, "message"):
        out["otel.status.message"] = get(status_obj, "message")
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
            out["otel." + re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower()] = v
    out = {k: v for k, v in out.items() if v is not None}

    anchor = (trace_id, span_id) if trace_id and span_id else (trace_id, name, start_ns, end_ns, seq)
    row = EventRow(
        event_id=event_id(key, "span", *anchor),
        session_key=key, seq=seq, activity=activity, event_type=op or step_kind or "span",
        event_time=start, end_time=end,
        resource=tool or agent or model or entity or text(resource_attrs.get("service.name"), 200),
        status="failed" if failed else "success" if end is not None else "incomplete",
        tool_name=tool, model=model,
        latency_ms=round((end_ns - start_ns) / 1e6) if start_ns is not None and end_ns is not None else None,
        input_tokens=first_int(attrs, GenAI.INPUT_TOKENS),
        output_tokens=first_int(attrs, GenAI.OUTPUT_TOKENS),
        error=error, attributes=json_text(out),
    )
    return _Span(row, trace_id, span_id, hex_id(get(span, "parentSpanId")), name, attrs, resource_attrs)


def _event(event: Mapping[str, Any]) -> dict[str, Any]:
    nanos = unix_nanos(get(event, "timeUnixNano"))
    return {
        "name": get(event, "name"),
        "time": nanos_to_datetime(nanos).isoformat().replace("+00:00", "Z") if nanos else None,
        "attributes": attributes_of(event),
    }

"""Normalise Agora executions (payload built by `sources/agora.py`) into the canonical model.

Per execution (= session):
- every timeline entry (a node execution) is one activity: `activity` = the node name made readable
  (`understand_request` -> `Understand request`), `event_type` = `node_execution`, start/end from the
  entry's `started_at`/`completed_at`, status `success`/`failed` (error, timeout)/`skipped`/`incomplete`
  (running). The node's telemetry spans (matched by `agora.node`, else by the `{node}.` span-name
  prefix, and by time when a node name repeats) add the model, token counts (GenAI / Traceloop /
  `llm.*` attributes; phase spans win over the `.node` span so nothing is counted twice), the tool
  name, and their GenAI attributes. `resource` = tool, else model, else node name. Prep/exec/post
  durations, `retry_count`, node id/type and any unknown entry fields go to `attributes`.
- every telemetry event is an event of its own `event_type` (`User prompt`, `Change model`, else the
  type made readable); its `data` is kept in `attributes`. `tool_call_started` + `tool_call_completed`
  are paired (call id, else tool name, in time order) into one `Call tool <name>` activity with start,
  end, latency, status and error, like the other sources. The calls then carry `tool_name` (a retried
  node shows each attempt) and the nodes do not, so the case table counts every call once; model and
  tokens stay on the nodes (from the spans), not on `model_change` events.
- the `sessions` row: status `completed` (success) / `failed` (error, timeout, failed, cancelled);
  start/end = the execution's; workflow = the `{flow}.flow` span's `agora.flow`/`traceloop.workflow.name`;
  `agent_state` = the execution's own status; `source_metrics` = the execution record (incl.
  `error_message`, `duration_ms`, `workflow_id`).

A session fails alone when the payload is not JSON, the timeline response has no `timeline` list, the
spans/events responses are not lists, the execution is still `running`, or a node/event time is unreadable.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

from telemetry_pipeline.canonical.activity import (
    TOOL_EVENTS,
    event_activity,
    event_resource,
    event_status,
    humanize,
    tool_call_activity,
)
from telemetry_pipeline.canonical.genai import GenAI, first_int, first_text, tool_name
from telemetry_pipeline.canonical.model import EventRow, SessionRow
from telemetry_pipeline.canonical.pairing import TOOL_CALL_COMPLETED, ToolEvent, call_key, pair_tool_calls
from telemetry_pipeline.canonical.rows import InvalidPayload, normalize_each, parse_json
from telemetry_pipeline.canonical.time import ms_between, to_utc
from telemetry_pipeline.canonical.values import as_int, event_id, json_text, text
from telemetry_pipeline.sources.base import RawSession

_NODE_STATUS = {"success": "success", "completed": "success", "error": "failed", "failed": "failed",
                "timeout": "failed", "skipped": "skipped", "running": "incomplete"}
_EXECUTION_STATUS = {"success": "completed", "completed": "completed", "error": "failed", "timeout": "failed",
                     "failed": "failed", "cancelled": "failed", "canceled": "failed"}
_ENTRY_MAPPED = {"node_name", "status", "started_at", "completed_at", "error_message"}
_SPAN_ATTRIBUTE_PREFIXES = ("gen_ai.", "llm.", "traceloop.")


def normalize_agora_sessions(
    con: duckdb.DuckDBPyConnection, raw: Sequence[RawSession], fallback_agent: str
) -> dict[str, str]:
    return normalize_each(con, raw, fallback_agent, _execution)


def _execution(raw: RawSession, fallback_agent: str) -> tuple[SessionRow, list[EventRow]]:
    doc = _load(raw.body)
    timeline_doc = doc.get("timeline")
    if not isinstance(timeline_doc, Mapping) or not isinstance(timeline_doc.get("timeline"), list):
        raise InvalidPayload('the timeline response has no "timeline" list')
    execution = found if isinstance(found := timeline_doc.get("execution"), Mapping) else {}
    spans, telemetry = doc.get("spans", []), doc.get("events", [])
    if not isinstance(spans, list):
        raise InvalidPayload("the telemetry-spans response is not a JSON list")
    if not isinstance(telemetry, list):
        raise InvalidPayload("the telemetry-events response is not a JSON list")
    status = str(execution.get("status") or "").lower()
    if status == "running":
        raise InvalidPayload("the execution is still running; export it once it has finished")

    spans = [s for s in spans if isinstance(s, Mapping)]
    entries = [e for e in timeline_doc["timeline"] if isinstance(e, Mapping)]
    nodes = _node_rows(raw.key, entries, spans)
    instants = _telemetry_rows(raw.key, telemetry, offset=len(entries))
    if any(e.tool_name for e in instants):
        for node_row in nodes:  # the calls carry the tool; a node keeping it too would count each call twice
            node_row.tool_name = None
    rows = nodes + instants

    flow = _flow_attributes(spans)
    workflow = (
        text(flow.get("agora.flow")) or first_text(flow, GenAI.WORKFLOW_NAME) or text(execution.get("workflow_name"))
    )
    start = to_utc(execution.get("started_at")) or min((e.event_time for e in rows), default=None)
    end = to_utc(execution.get("completed_at")) or max((e.end_time or e.event_time for e in rows), default=None)
    any_failed = any(e.status == "failed" for e in nodes)
    session_status = _EXECUTION_STATUS.get(status) or ("partial" if any_failed else "completed")
    prompt, response = _io_text(execution.get("input_data")), _io_text(execution.get("output_data"))
    prompt_metrics = None
    if prompt is not None:
        prompt_metrics = json_text({
            "prompt_count": 1, "prompt_length": len(prompt), "response_length": len(response) if response else None,
            "input_tokens": _sum(e.input_tokens for e in nodes), "output_tokens": _sum(e.output_tokens for e in nodes),
            "prompt_latency_ms": as_int(execution.get("duration_ms")) or ms_between(start, end),
        })
    session = SessionRow(
        session_key=raw.key, source=raw.source, session_id=raw.session_id,
        agent_name=text(execution.get("agent_name")) or workflow or fallback_agent,
        task_description=(prompt or f"Agora execution {raw.session_id}")[:500],
        start_time=start, end_time=end, status=session_status,
        service_name=text(execution.get("service_name")),
        workflow_name=workflow or text(execution.get("workflow_id")),
        workflow_version=text(execution.get("workflow_version")),
        agent_type=text(execution.get("agent_type")),
        agent_state=status or None,
        event_count=len(rows),
        prompt_metrics=prompt_metrics,
        source_metrics=json_text(dict(execution)) if execution else None,
    )
    return session, rows


def _load(body: bytes) -> Mapping[str, Any]:
    doc = parse_json(body)
    if not isinstance(doc, Mapping):
        raise InvalidPayload("payload is not a JSON object")
    for part in ("timeline", "spans", "events"):
        if isinstance(doc.get(part), str):  # the source embeds a non-JSON response as a string
            raise InvalidPayload(f"the {part} response is not JSON: {doc[part][:100]!r}")
    return doc


def _node_rows(key: str, entries: list[Mapping[str, Any]], spans: list[Mapping[str, Any]]) -> list[EventRow]:
    times = []
    for position, entry in enumerate(entries):
        started = to_utc(entry.get("started_at"))
        if started is None:
            raise InvalidPayload(
                f"timeline entry #{position} has a started_at that cannot be parsed: "
                f"{str(entry.get('started_at'))[:100]}"
            )
        completed = to_utc(entry.get("completed_at"))
        if completed is None and entry.get("completed_at") not in (None, ""):
            raise InvalidPayload(
                f"timeline entry #{position} has a completed_at that cannot be parsed: "
                f"{str(entry['completed_at'])[:100]}"
            )
        times.append((started, completed))
    matched = _match_spans(entries, times, spans)

    rows = []
    seen: dict[str, int] = {}
    for position, (entry, (started, completed)) in enumerate(zip(entries, times, strict=True)):
        node = text(entry.get("node_name")) or text(entry.get("node_id")) or "node"
        node_spans = matched[position]
        attrs = {k: v for k, v in entry.items() if k not in _ENTRY_MAPPED}
        attrs["node_name"] = node
        span_attrs = _merged(node_spans)
        attrs.update({k: v for k, v in span_attrs.items() if k.startswith(_SPAN_ATTRIBUTE_PREFIXES)})
        if "retry_count" not in attrs and span_attrs.get("retry_count") is not None:
            attrs["retry_count"] = span_attrs["retry_count"]
        if node_spans:
            attrs["spans"] = [
                {"name": s.get("name"), "status": s.get("status"), "duration_ms": s.get("duration_ms")}
                for s in node_spans
            ]
        token_spans = _token_spans(node_spans)
        tool = tool_name(span_attrs)
        model = first_text(span_attrs, GenAI.MODEL)
        raw_status = str(entry.get("status") or "").lower()
        status = _NODE_STATUS.get(raw_status, raw_status or None)
        if status is None:
            status = "success" if completed else "incomplete"
        error = text(entry.get("error_message"), 2000) or (_span_error(node_spans) if status == "failed" else None)
        anchor = text(entry.get("id")) or f"{entry.get('node_id')}|{entry.get('started_at')}"
        n = seen[anchor] = seen.get(anchor, 0) + 1
        rows.append(EventRow(
            event_id=event_id(key, "node_execution", anchor, n),
            session_key=key, seq=position, activity=humanize(node), event_type="node_execution",
            event_time=started, end_time=completed,
            resource=tool or model or node, status=status, tool_name=tool, model=model,
            latency_ms=ms_between(started, completed) if completed else None,
            input_tokens=_sum(first_int(s["attributes"], GenAI.INPUT_TOKENS) for s in token_spans),
            output_tokens=_sum(first_int(s["attributes"], GenAI.OUTPUT_TOKENS) for s in token_spans),
            error=error, attributes=json_text(attrs),
        ))
    return rows


def _match_spans(
    entries: list[Mapping[str, Any]],
    times: list[tuple[dt.datetime, dt.datetime | None]],
    spans: list[Mapping[str, Any]],
) -> list[list[Mapping[str, Any]]]:
    """Each node's spans: by node name; by time too when the same node ran more than once."""
    by_name: dict[str, list[int]] = {}
    for position, entry in enumerate(entries):
        by_name.setdefault(str(entry.get("node_name") or ""), []).append(position)
    out: list[list[Mapping[str, Any]]] = [[] for _ in entries]
    for span in spans:
        attrs = found if isinstance(found := span.get("attributes"), Mapping) else {}
        name = str(span.get("name") or "")
        node = attrs.get("agora.node")
        if node is None:
            node = next((n for n in by_name if n and name.startswith(f"{n}.") and not name.endswith(".flow")), None)
        candidates = by_name.get(str(node)) if node is not None else None
        if not candidates:
            continue
        if len(candidates) > 1:
            start = to_utc(span.get("start_time"))
            inside = [p for p in candidates if start and times[p][0] <= start <= (times[p][1] or start)]
            before = [p for p in candidates if start and times[p][0] <= start]
            candidates = inside or before[-1:] or candidates[:1]
        out[candidates[0]].append(span)
    return out


def _merged(spans: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Attributes of a node's spans; a phase span's value wins over the `.node` span's."""
    ordered = sorted(spans, key=lambda s: isinstance(s.get("attributes"), Mapping) and "agora.phase" in s["attributes"])
    merged: dict[str, Any] = {}
    for span in ordered:
        if isinstance(span.get("attributes"), Mapping):
            merged.update(span["attributes"])
    return merged


def _token_spans(spans: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Spans whose token counts add up without double counting: the phase spans when they carry any."""
    carrying = [s for s in spans if isinstance(s.get("attributes"), Mapping)
                and any(first_int(s["attributes"], c) is not None for c in (GenAI.INPUT_TOKENS, GenAI.OUTPUT_TOKENS))]
    phases = [s for s in carrying if "agora.phase" in s["attributes"]]
    return phases or carrying


def _sum(values: Any) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _span_error(spans: list[Mapping[str, Any]]) -> str | None:
    for span in spans:
        for event in span.get("events") or []:
            attrs = event.get("attributes") if isinstance(event, Mapping) else None
            if isinstance(attrs, Mapping) and (attrs.get("exception.message") or attrs.get("exception.type")):
                return text(
                    ": ".join(str(v) for v in (attrs.get("exception.type"), attrs.get("exception.message")) if v), 2000
                )
    return None


def _flow_attributes(spans: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    for span in spans:
        attrs = span.get("attributes")
        if str(span.get("name") or "").endswith(".flow") and isinstance(attrs, Mapping):
            return attrs
    for span in spans:  # no flow span: any span naming the flow
        attrs = span.get("attributes")
        if isinstance(attrs, Mapping) and (attrs.get("agora.flow") or first_text(attrs, GenAI.WORKFLOW_NAME)):
            return attrs
    return {}


def _io_text(data: Any) -> str | None:
    """The prompt/response of an execution's input_data/output_data (a string, or a well-known key)."""
    if isinstance(data, str):
        return data.strip() or None
    if isinstance(data, Mapping):
        for key in ("prompt", "query", "input", "message", "question", "response", "output", "answer", "text"):
            if isinstance(data.get(key), str) and data[key].strip():
                return data[key].strip()
        return json_text(data)[:500] if data else None
    return None


def _telemetry_rows(key: str, telemetry: list[Any], offset: int) -> list[EventRow]:
    """Instants, except tool calls: a `tool_call_started` and its `tool_call_completed` (canonical.pairing)
    become one `Call tool <name>` activity, as for the other sources."""
    parsed: list[tuple[int, dt.datetime, str, Mapping[str, Any], Mapping[str, Any]]] = []
    for position, event in enumerate(telemetry):
        if not isinstance(event, Mapping):
            event = {"event_type": "unknown", "value": event}
        at = to_utc(event.get("timestamp"))
        if at is None:
            raise InvalidPayload(
                f"telemetry event #{position} has a timestamp that cannot be parsed: "
                f"{str(event.get('timestamp'))[:100]}"
            )
        kind = text(event.get("event_type") or event.get("type"), 200) or "unknown"
        data = event.get("data") if isinstance(event.get("data"), Mapping) else {}
        parsed.append((position, at, kind, data, event))
    completion_of = pair_tool_calls([ToolEvent(kind, call_key(data), at, p) for p, at, kind, data, _ in parsed])
    paired = set(completion_of.values())

    rows = []
    seen: dict[str, int] = {}
    for i, (position, at, kind, data, event) in enumerate(parsed):
        if i in paired:
            continue  # folded into its start's activity
        attrs = {k: v for k, v in event.items() if k not in ("event_type", "timestamp", "data")}
        attrs.update(data)
        tool = text(data.get("tool_name"), 200)
        end_time = latency = tool_name = None
        if kind in TOOL_EVENTS:
            lone_completion = parsed[i] if kind == TOOL_CALL_COMPLETED else None
            done = parsed[completion_of[i]] if i in completion_of else lone_completion
            result = done[3] if done else {}
            if done is not None and done is not parsed[i]:
                attrs.update(result)
            tool_name = tool or text(result.get("tool_name"), 200)
            latency = as_int(result.get("latency_ms"))
            if done is None:
                status = "incomplete"
            else:
                end_time = done[1]
                if kind == TOOL_CALL_COMPLETED:  # a completion without its start
                    at = end_time - dt.timedelta(milliseconds=latency or 0)
                elif latency is None:
                    latency = ms_between(at, end_time)
                status = event_status(result.get("success"), result.get("error"))
            activity = tool_call_activity(tool_name)
            error = text(result.get("error") or result.get("error_details"), 2000) if status == "failed" else None
            resource = event_resource(kind, tool_name, None)
        else:
            response_only = data.get("prompt") is None and data.get("response") is not None
            activity = event_activity(kind, data.get("step_name"), response_only=response_only)
            status = event_status(data.get("success"), data.get("error"))
            error = text(data.get("error") or data.get("error_details"), 2000) if status == "failed" else None
            resource = event_resource(kind, tool, text(data.get("model"), 200))
            latency = as_int(data.get("latency_ms"))
        anchor = json_text(event)
        n = seen[anchor] = seen.get(anchor, 0) + 1
        rows.append(EventRow(
            event_id=event_id(key, "telemetry_event", anchor, n),
            session_key=key, seq=offset + position, activity=activity, event_type=kind,
            event_time=at, end_time=end_time, resource=resource, status=status, tool_name=tool_name, model=None,
            latency_ms=latency, input_tokens=None, output_tokens=None, error=error, attributes=json_text(attrs),
        ))
    return rows

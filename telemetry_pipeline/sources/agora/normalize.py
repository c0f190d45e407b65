"""Normalise Agora executions (payload built by `sources/agora/source.py`) into the canonical model.

Per execution (= session):
- every timeline entry (a node execution) is one activity: `activity` = the node name made readable
  (`understand_request` -> `Understand request`; an entry named "Unknown" takes its spans' node),
  `event_type` = `node_execution`, start/end from the entry's `started_at`/`completed_at`, status
  `success`/`failed` (error, timeout)/`skipped`/`incomplete` (running). The node's telemetry spans, put
  on the execution's clock and folded into node runs as `sources/agora/spans.py` says, add the model of its last
  LLM call, token counts (canonical GenAI aliases; the LLM calls, else the phase spans, so nothing is
  counted twice), the tool name, and their GenAI attributes. `resource` = tool, else model, else node
  name. Prep/exec/post durations (null or fractional as served; what the timeline leaves null, the
  phase spans tell), `retry_count`, node id/type and any unknown entry fields go to `attributes`.
- every telemetry event is an event of its own `event_type` (`User prompt`, `Change model`, else the
  type made readable); its `data` is kept in `attributes`. `tool_call_started` + `tool_call_completed`
  are paired (call id, else tool name, in time order) into one `Call tool <name>` activity with start,
  end, latency, status and error, like the other sources. The calls then carry `tool_name` (a retried
  node shows each attempt) and the nodes do not, so the case table counts every call once; model and
  tokens stay on the nodes (from the spans), not on `model_change` events.
- the `sessions` row: status `completed` (success) / `failed` (error, timeout, failed, cancelled);
  start/end = the execution's; workflow = the `{flow}.flow` span's `agora.flow`/`traceloop.workflow.name`;
  `agent_state` = the execution's own status; `source_metrics` = the execution record (incl.
  `error_message`, `duration_ms`, `workflow_id`) and `span_clock_offset_minutes`, the client's UTC offset
  taken off its span times, when not zero.

The spans and events answers are `{"spans": [...]}` / `{"events": [...]}` (today's backend) or bare lists
(releases up to late 2025). A session fails alone when the payload is not JSON, the timeline response has
no `timeline` list, the spans/events answers are neither, the execution is still `running`, or a
node/event time is unreadable.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

from telemetry_pipeline.canonical.activity import (
    TOOL_EVENTS,
    error_message,
    event_activity,
    event_resource,
    event_status,
    humanize,
    session_outcome,
    tool_call_activity,
)
from telemetry_pipeline.canonical.agora_tracer import TracerSpan
from telemetry_pipeline.canonical.genai import GenAI, first_text, tool_name, usage_of
from telemetry_pipeline.canonical.identity import AgentDefaults
from telemetry_pipeline.canonical.model import EventRow, Outcome, SessionRow
from telemetry_pipeline.canonical.pairing import TOOL_CALL_COMPLETED, ToolEvent, call_key, pair_tool_calls
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.rows import InvalidPayload, normalize_each, parse_json
from telemetry_pipeline.canonical.time import ms_between, to_utc
from telemetry_pipeline.canonical.values import as_float, as_int, event_id, json_text, text
from telemetry_pipeline.sources.agora import spans as agora_spans

_NODE_STATUS = {"success": "success", "completed": "success", "error": "failed", "failed": "failed",
                "timeout": "failed", "skipped": "skipped", "running": "incomplete"}
_EXECUTION_STATUS = {"success": Outcome.COMPLETED, "completed": Outcome.COMPLETED, "error": Outcome.FAILED,
                     "timeout": Outcome.FAILED, "failed": Outcome.FAILED, "cancelled": Outcome.FAILED,
                     "canceled": Outcome.FAILED}
_ENTRY_MAPPED = {"node_name", "status", "started_at", "completed_at", "error_message"}
_SPAN_ATTRIBUTE_PREFIXES = ("gen_ai.", "llm.", "traceloop.")


def normalize_agora_sessions(
    con: duckdb.DuckDBPyConnection, raw: Sequence[RawSession], agents: AgentDefaults
) -> dict[str, str]:
    return normalize_each(con, raw, agents, _execution)


def _execution(raw: RawSession, agents: AgentDefaults) -> tuple[SessionRow, list[EventRow]]:
    doc = _load(raw.body)
    timeline_doc = doc.get("timeline")
    if not isinstance(timeline_doc, Mapping) or not isinstance(timeline_doc.get("timeline"), list):
        raise InvalidPayload('the timeline response has no "timeline" list')
    execution = found if isinstance(found := timeline_doc.get("execution"), Mapping) else {}
    spans, telemetry = _rows(doc.get("spans", []), "spans"), _rows(doc.get("events", []), "events")
    status = str(execution.get("status") or "").lower()
    if status == "running":
        raise InvalidPayload("the execution is still running; export it once it has finished")

    spans = [s for s in spans if isinstance(s, Mapping)]
    entries = [e for e in timeline_doc["timeline"] if isinstance(e, Mapping)]
    flow = _flow_attributes(spans)
    workflow = (
        text(flow.get("agora.flow")) or first_text(flow, GenAI.WORKFLOW_NAME) or text(execution.get("workflow_name"))
    )
    # An execution runs one workflow of one agent: every node run is that agent's step.
    agent = agents.case_agent(text(execution.get("agent_name")) or first_text(flow, GenAI.AGENT_NAME),
                              text(execution.get("agent_type")), text(execution.get("service_name")), workflow)
    nodes, offset = _node_rows(raw.key, entries, spans, to_utc(execution.get("started_at")), agent)
    instants = _telemetry_rows(raw.key, telemetry, len(entries), agent)
    if any(e.tool_name for e in instants):
        for node_row in nodes:  # the calls carry the tool; a node keeping it too would count each call twice
            node_row.tool_name = None
    rows = nodes + instants

    start = to_utc(execution.get("started_at")) or min((e.event_time for e in rows), default=None)
    end = to_utc(execution.get("completed_at")) or max((e.end_time or e.event_time for e in rows), default=None)
    any_failed = any(e.status == "failed" for e in nodes)
    # The execution's own status when Agora gives one; else its nodes say whether it recovered from failures.
    session_status = _EXECUTION_STATUS.get(status) or session_outcome(ended_on_failure=False, any_failure=any_failed)
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
        agent_name=agent,
        task_description=(prompt or f"Agora execution {raw.session_id}")[:500],
        start_time=start, end_time=end, status=session_status,
        service_name=text(execution.get("service_name")),
        workflow_name=workflow or text(execution.get("workflow_id")),
        workflow_version=text(execution.get("workflow_version")),
        agent_type=text(execution.get("agent_type")),
        agent_state=status or None,
        event_count=len(rows),
        prompt_metrics=prompt_metrics,
        source_metrics=json_text(_source_metrics(execution, offset)) if execution or offset else None,
    )
    return session, rows


def _rows(body: Any, part: str) -> list[Any]:
    """The rows of a telemetry-spans/-events answer: `{"spans": [...]}` today, a bare list up to late 2025."""
    if isinstance(body, Mapping) and isinstance(body.get(part), list):
        return body[part]
    if isinstance(body, list):
        return body
    raise InvalidPayload(f'the telemetry-{part} response is neither a list nor an object with a "{part}" list')


def _source_metrics(execution: Mapping[str, Any], offset: dt.timedelta) -> dict[str, Any]:
    metrics = dict(execution)
    if offset:  # the client's UTC offset, taken off its span times
        metrics["span_clock_offset_minutes"] = offset // dt.timedelta(minutes=1)
    return metrics


def _load(body: bytes) -> Mapping[str, Any]:
    doc = parse_json(body)
    if not isinstance(doc, Mapping):
        raise InvalidPayload("payload is not a JSON object")
    for part in ("timeline", "spans", "events"):
        if isinstance(doc.get(part), str):  # the source embeds a non-JSON response as a string
            raise InvalidPayload(f"the {part} response is not JSON: {doc[part][:100]!r}")
    return doc


def _node_rows(
    key: str, entries: list[Mapping[str, Any]], spans: list[Mapping[str, Any]], execution_start: dt.datetime | None,
    agent: str,
) -> tuple[list[EventRow], dt.timedelta]:
    windows = []
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
        windows.append((started, completed))
    names = [name if (name := text(e.get("node_name"))) != agora_spans.UNKNOWN_NODE else None for e in entries]
    runs, offset = agora_spans.node_spans(spans, names, windows, execution_start)

    rows = []
    seen: dict[str, int] = {}
    for position, (entry, (started, completed)) in enumerate(zip(entries, windows, strict=True)):
        node_spans = [span for run in runs[position] for span in run.spans]
        node = (names[position] or agora_spans.name_from_spans(node_spans) or text(entry.get("node_name"))
                or text(entry.get("node_id")) or "node")
        attrs = {k: v for k, v in entry.items() if k not in _ENTRY_MAPPED}
        attrs["node_name"] = node
        span_attrs = _merged(node_spans)
        attrs.update({k: v for k, v in span_attrs.items() if k.startswith(_SPAN_ATTRIBUTE_PREFIXES)})
        # What the timeline leaves null (the SDK fills only exec), the spans' phases tell.
        attrs.update({k: v for k, v in agora_spans.run_attributes(runs[position]).items() if attrs.get(k) is None})
        if node_spans:
            attrs["spans"] = [agora_spans.summary(s) for s in node_spans]
        usage = agora_spans.usage_spans(node_spans)
        tool = tool_name(span_attrs)
        model = agora_spans.model(node_spans)
        raw_status = str(entry.get("status") or "").lower()
        status = _NODE_STATUS.get(raw_status, raw_status or None)
        if status is None:
            status = "success" if completed else "incomplete"
        # The timeline's `error_message` may be the kind alone; the node's exception event adds the message.
        error = error_message(entry.get("error_message"), _span_error(node_spans) if status == "failed" else None)
        anchor = text(entry.get("id")) or f"{entry.get('node_id')}|{entry.get('started_at')}"
        n = seen[anchor] = seen.get(anchor, 0) + 1
        rows.append(EventRow(
            event_id=event_id(key, "node_execution", anchor, n),
            session_key=key, seq=position, activity=humanize(node), event_type="node_execution",
            event_time=started, end_time=completed,
            resource=agent, status=status, tool_name=tool, model=model,
            latency_ms=ms_between(started, completed) if completed else None,
            error=error, attributes=json_text(attrs), **usage_of([s.attributes for s in usage]),
        ))
    return rows, offset


def _merged(spans: list[TracerSpan]) -> dict[str, Any]:
    """Attributes of a node's spans; a phase span's value wins over the `.node` span's, a call's over both."""
    merged: dict[str, Any] = {}
    for span in sorted(spans, key=lambda s: (not s.is_node_span) + (not agora_spans.is_agora(s))):
        merged.update(span.attributes)
    return merged


def _sum(values: Any) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _span_error(spans: list[TracerSpan]) -> str | None:
    for span in spans:
        for event in span.ref.get("events") or []:
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


# The telemetry_events table's own columns: bookkeeping, not what happened (the raw payload keeps them).
_EVENT_COLUMNS = {"event_type", "timestamp", "data", "id", "execution_id", "node_execution_id", "created_at"}


def _telemetry_rows(key: str, telemetry: list[Any], offset: int, agent: str) -> list[EventRow]:
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
        attrs = {k: v for k, v in event.items() if k not in _EVENT_COLUMNS}
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
            error = error_message(result.get("error"), result.get("error_details")) if status == "failed" else None
            resource = event_resource(kind, text(data.get("agent_name"), 200) or agent)
        else:
            response_only = data.get("prompt") is None and data.get("response") is not None
            activity = event_activity(kind, data.get("step_name"), response_only=response_only)
            status = event_status(data.get("success"), data.get("error"))
            error = error_message(data.get("error"), data.get("error_details")) if status == "failed" else None
            resource = event_resource(kind, text(data.get("agent_name"), 200) or agent)
            latency = as_int(data.get("latency_ms"))
        anchor = json_text(event)
        n = seen[anchor] = seen.get(anchor, 0) + 1
        rows.append(EventRow(
            event_id=event_id(key, "telemetry_event", anchor, n),
            session_key=key, seq=offset + position, activity=activity, event_type=kind,
            event_time=at, end_time=end_time, resource=resource, status=status, tool_name=tool_name, model=None,
            latency_ms=latency, input_tokens=None, output_tokens=None, error=error, attributes=json_text(attrs),
            cost_usd=as_float(data.get("cost")),
        ))
    return rows

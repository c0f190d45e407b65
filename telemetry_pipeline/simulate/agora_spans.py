"""Agora's `telemetry_spans` and `telemetry_events` rows for a simulated execution, as the real backend serves
them (SOURCES.md `agora`): `{"spans": [...]}` / `{"events": [...]}`, every column of the tables.

Spans follow Agora's tracer: `{flow}.flow` over `{node}.node` over `{node}.prep/.exec/.post`, with one
LLM client span (`openai.chat`, Traceloop attributes) under `.exec` per model call of the node. Agora's own
spans are `UNSET` unless they failed. The SDK uploads `kind` as `str(SpanKind.X)` and times as the client's
naive local time (stored as if UTC, so `offset_minutes` ahead of the truth); OTLP-ingested executions have
`"INTERNAL"`/`"CLIENT"` and true UTC.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from telemetry_pipeline.simulate.agora import (
    Execution,
    Node,
    final_failure,
    node_entry_id,
    phases_us,
    retries,
    run_failure,
    timestamptz,
)
from telemetry_pipeline.simulate.vocabulary import MODELS


def telemetry_spans(ex: Execution) -> list[dict[str, Any]]:
    trace_id = ex.id.replace("-", "")
    flow = ex.workflow.workflow_name
    skew_us = ex.offset_minutes * 60_000_000
    uploaded_us = ex.run[-1][0] * 1000 + 400_000  # the SDK flushes its buffer when the flow ends
    ids = itertools.count(1)

    def span(name: str, parent: str | None, start_us: int, end_us: int, kind: str, attributes: dict[str, Any],
             error: dict[str, Any] | None = None, usage: tuple[int, float] | None = None) -> dict[str, Any]:
        number = next(ids)
        events = [] if error is None else [{
            # A jsonb copy of the SDK's own text: naive local time, no offset.
            "name": "exception",
            "timestamp": _naive(end_us + skew_us),
            "attributes": {"exception.type": error["error"], "exception.message": error["error_details"]},
        }]
        return {
            "id": f"{ex.id[:9]}5159-4000-8000-{ex.index:08x}{number:04x}", "execution_id": ex.id,
            "node_execution_id": None,  # the SDK never links a span to its node execution
            "span_id": f"{ex.index:012x}{number:04x}", "trace_id": trace_id, "parent_span_id": parent,
            "name": name, "kind": f"SpanKind.{kind}" if ex.sdk else kind, "status": "ERROR" if error else "UNSET",
            "start_time": timestamptz(start_us + skew_us), "end_time": timestamptz(end_us + skew_us),
            "duration_ms": round((end_us - start_us) / 1000, 3), "attributes": attributes, "events": events,
            "tokens_used": usage[0] if usage else None, "estimated_cost": usage[1] if usage else None,
            "created_at": timestamptz(uploaded_us),
        }

    spans = []
    if not ex.running:
        start_us, end_us = ex.run[0][0] * 1000, ex.run[-1][0] * 1000
        spans.append(span(f"{flow}.flow", None, start_us, end_us, "INTERNAL",
                          {"agora.flow": flow, "execution_id": ex.id, "total_duration_ms": (end_us - start_us) // 1000},
                          run_failure(ex)))
    for node in ex.finished_nodes:
        failure = final_failure(node)
        start_us, end_us = node.start_ms * 1000, node.run[-1][0] * 1000
        total_ms = (end_us - start_us) // 1000
        node_attributes = {"agora.node": node.name, "agora.kind": "node", "total_duration_ms": total_ms}
        node_span = span(f"{node.name}.node", spans[0]["span_id"] if spans else None, start_us, end_us, "INTERNAL",
                         node_attributes, failure)
        spans.append(node_span)
        at = start_us
        for phase, duration in zip(("prep", "exec", "post"), phases_us(node), strict=True):
            attributes: dict[str, Any] = {"agora.node": node.name, "agora.phase": phase}
            attributes["duration_ms"] = duration // 1000
            if phase == "exec":
                attributes["retry_count"] = retries(node)
                attributes.update(_tool(node))
            phase_span = span(f"{node.name}.{phase}", node_span["span_id"], at, at + duration, "INTERNAL", attributes,
                              failure if phase == "exec" else None)
            spans.append(phase_span)
            if phase == "exec":
                spans += [span(name, phase_span["span_id"], start, end, "CLIENT", attrs, usage=usage)
                          for name, start, end, attrs, usage in _llm_calls(node, at, at + duration)]
            at += duration
    return sorted(spans, key=lambda s: dt.datetime.fromisoformat(s["start_time"]))  # the backend orders by start_time


def _tool(node: Node) -> dict[str, Any]:
    """A tool node's exec span names its first tool, as an instrumented tool would."""
    if node.node_type != "tool":
        return {}
    tool = next(p["tool_name"] for _, kind, p in node.run if kind == "tool_call_started")
    return {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool}


def _llm_calls(node: Node, exec_start_us: int, exec_end_us: int) -> list[tuple[str, int, int, dict, tuple]]:
    """One Traceloop client span per model call of the node, inside its exec span."""
    calls = []
    for at, kind, call in node.run:
        if kind != "model_change":
            continue
        model = MODELS[call["model"]]
        start = min(max(at * 1000, exec_start_us), exec_end_us - 1)
        end = min(start + (250 + int(call["output_tokens"] * model.ms_per_output_token)) * 1000, exec_end_us)
        total = call["input_tokens"] + call["output_tokens"]
        attributes = {
            "llm.request.type": "chat", "gen_ai.system": model.provider.capitalize(),
            "gen_ai.request.model": model.name, "gen_ai.response.model": model.name,
            "gen_ai.request.temperature": call["temperature"], "llm.is_streaming": False,
            "gen_ai.usage.prompt_tokens": call["input_tokens"], "gen_ai.usage.completion_tokens": call["output_tokens"],
            "llm.usage.total_tokens": total,
        }
        calls.append((f"{model.provider}.chat", start, end, attributes, (total, call["cost"])))
    return calls


def telemetry_events(ex: Execution) -> list[dict[str, Any]]:
    """Rows of `telemetry_events` (UTC: the column defaults to now()), each linked to its node execution."""
    uploaded_us = ex.run[-1][0] * 1000 + 400_000
    ids = itertools.count(1)
    return [
        {"id": f"{ex.id[:9]}515a-4000-8000-{ex.index:08x}{next(ids):04x}", "execution_id": ex.id,
         "node_execution_id": node_entry_id(ex, position), "event_type": kind, "timestamp": timestamptz(at * 1000),
         "data": payload, "created_at": timestamptz(uploaded_us)}
        for position, node in enumerate(ex.finished_nodes)
        for at, kind, payload in node.run
    ]


def _naive(epoch_us: int) -> str:
    """Python's `datetime.isoformat()` of a naive time, as the SDK writes span event times."""
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=epoch_us)).isoformat()

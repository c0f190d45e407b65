"""Agora: workflow executions made of nodes, built from the same kind of run as the other sources."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from telemetry_pipeline.loopback import HTTPError
from telemetry_pipeline.simulate.runs import Run, build_run
from telemetry_pipeline.simulate.timelines import SimulationConfig, Timeline, format_ms
from telemetry_pipeline.simulate.vocabulary import MODELS, WORKFLOWS, Workflow

AGORA_RUNNING = 2  # the newest executions are still running, so a client must skip them


@dataclass(frozen=True)
class Node:
    name: str
    node_type: str  # "llm" (planning, answering) or "tool" (a workflow step)
    run: Run
    start_ms: int


@dataclass(frozen=True)
class Execution:
    id: str
    index: int
    workflow: Workflow
    run: Run
    nodes: list[Node]
    running: bool

    @property
    def finished_nodes(self) -> list[Node]:
        return self.nodes[:-1] if self.running else self.nodes


def agora_count(config: SimulationConfig) -> int:
    return config.sessions // 4


def agora_execution_id(seed: int, index: int) -> str:
    # The index is spelled inside the UUID, so looking an execution up needs no table.
    return f"{seed & 0xFFFFFFFF:08x}-5157-4000-8000-{index:012x}"


def execution_index(seed: int, execution_id: str, count: int) -> int:
    head, _, tail = execution_id.rpartition("-")
    try:
        index = int(tail, 16)
    except ValueError:
        index = -1
    if head != agora_execution_id(seed, 0).rpartition("-")[0] or len(tail) != 12 or not 0 <= index < count:
        raise HTTPError(404, "execution not found")
    return index


def build_execution(config: SimulationConfig, anchor_ms: int, index: int) -> Execution:
    count = agora_count(config)
    timeline = Timeline(count, config.seed, anchor_ms)
    builder, run = build_run(f"{config.seed}:agora:{index}", config.events_per_session, timeline.end_ms(index))
    return Execution(
        agora_execution_id(config.seed, index), index, builder.workflow, run, _nodes(run),
        running=index >= count - AGORA_RUNNING,
    )


def _nodes(run: Run) -> list[Node]:
    """Planning until the first tool call, one node per workflow step, answering after the last call."""
    tool_at = [k for k, (_, kind, _) in enumerate(run) if kind.startswith("tool_call_")]
    first, last = (tool_at[0], tool_at[-1] + 1) if tool_at else (1, 1)
    groups: list[tuple[str, str, Run]] = [("plan", "llm", run[:first])]
    for event in run[first:last]:
        # Only tool calls carry a step; everything between them belongs to the step in progress.
        step = event[2].get("step_name", groups[-1][0])
        if step != groups[-1][0]:
            groups.append((step, "tool", []))
        groups[-1][2].append(event)
    groups.append(("respond", "llm", run[last:]))
    nodes: list[Node] = []
    for name, node_type, events in groups:
        if events:
            # A node starts where the previous one ended, so the timeline has no gaps.
            start = nodes[-1].run[-1][0] if nodes else events[0][0]
            nodes.append(Node(name, node_type, events, start))
    return nodes


def _failures(run: Run) -> list[dict[str, Any]]:
    return [p for _, kind, p in run if kind == "tool_call_completed" and not p["success"]]


def _final_failure(node: Node) -> dict[str, Any] | None:
    """The node's last tool result when it failed: a failure followed by a successful retry is no error."""
    completions = [p for _, kind, p in node.run if kind == "tool_call_completed"]
    return completions[-1] if completions and not completions[-1]["success"] else None


def _retries(node: Node) -> int:
    return len(_failures(node.run)) - (1 if _final_failure(node) else 0)


def _run_failure(ex: Execution) -> dict[str, Any] | None:
    """The tool failure that made the agent give up, if it did."""
    gave_up = ex.run[-1][2].get("agent_state") == "failed"
    return _failures(ex.run)[-1] if gave_up and not ex.running else None


def execution_record(ex: Execution) -> dict[str, Any]:
    first, last = ex.run[0], ex.run[-1]
    failure = _run_failure(ex)
    status = "running" if ex.running else "success" if failure is None else "error"
    if failure is not None and failure["error"] == "TimeoutError":
        status = "timeout"
    finished = not ex.running
    return {
        "id": ex.id,
        "workflow_id": _workflow_id(ex.workflow),
        "status": status,
        "started_at": format_ms(first[0]),
        "completed_at": format_ms(last[0]) if finished else None,
        "duration_ms": last[0] - first[0] if finished else None,
        "error_message": f"{failure['error']}: {failure['error_details']}" if failure else None,
        "input_data": {"prompt": first[2]["prompt"]},
        "output_data": {"response": last[2]["response"]} if finished and "response" in last[2] else None,
    }


def _workflow_id(workflow: Workflow) -> str:
    position = WORKFLOWS.index(workflow)
    return f"00000000-0000-4000-a000-{position + 1:012x}"


def _phases(node: Node) -> tuple[int, int, int]:
    """(prep, exec, post) ms: preparing and posting are short; executing is most of the node."""
    total = node.run[-1][0] - node.start_ms
    prep, post = total * 6 // 100, total * 3 // 100
    return prep, total - prep - post, post


def timeline_entries(ex: Execution) -> list[dict[str, Any]]:
    entries = []
    for position, node in enumerate(ex.nodes):
        running = ex.running and position == len(ex.nodes) - 1
        final_failure = _final_failure(node)
        prep, exec_, post = _phases(node)
        entries.append({
            "id": f"{ex.id[:9]}5158-4000-8000-{ex.index:08x}{position:04x}",
            "node_id": f"{ex.workflow.workflow_name}.{node.name}",
            "node_name": node.name,
            "node_type": node.node_type,
            "status": "running" if running else "error" if final_failure else "success",
            "started_at": format_ms(node.start_ms),
            "completed_at": None if running else format_ms(node.run[-1][0]),
            "prep_duration_ms": prep,
            "exec_duration_ms": None if running else exec_,
            "post_duration_ms": None if running else post,
            "retry_count": _retries(node),
            "error_message": final_failure["error"] if final_failure else None,
        })
    return entries


def telemetry_spans(ex: Execution) -> list[dict[str, Any]]:
    """`{flow}.flow` over `{node}.node` over `{node}.prep/.exec/.post`, as Agora's tracer names them."""
    trace_id = ex.id.replace("-", "")
    flow = ex.workflow.workflow_name
    ids = itertools.count(1)

    def span(name: str, parent: str | None, start: int, end: int, attributes: dict[str, Any],
             error: dict[str, Any] | None = None) -> dict[str, Any]:
        events = [] if error is None else [{
            "name": "exception", "timestamp": format_ms(end),
            "attributes": {"exception.type": error["error"], "exception.message": error["error_details"]},
        }]
        return {
            "span_id": f"{ex.index:012x}{next(ids):04x}", "trace_id": trace_id, "parent_span_id": parent,
            "name": name, "kind": "INTERNAL", "status": "ERROR" if error else "OK",
            "start_time": format_ms(start), "end_time": format_ms(end), "duration_ms": end - start,
            "attributes": {"agora.flow": flow, **attributes}, "events": events,
        }

    spans = []
    if not ex.running:
        spans.append(span(f"{flow}.flow", None, ex.run[0][0], ex.run[-1][0],
                          {"traceloop.span.kind": "workflow", "traceloop.workflow.name": flow}, _run_failure(ex)))
    for node in ex.finished_nodes:
        final_failure = _final_failure(node)
        node_span = span(f"{node.name}.node", spans[0]["span_id"] if spans else None, node.start_ms,
                         node.run[-1][0], {"agora.node": node.name, "retry_count": _retries(node)}, final_failure)
        spans.append(node_span)
        start = node.start_ms
        for phase, duration in zip(("prep", "exec", "post"), _phases(node), strict=True):
            is_exec = phase == "exec"
            attributes = {"agora.node": node.name, "agora.phase": phase, **(_genai(node) if is_exec else {})}
            error = final_failure if is_exec else None
            spans.append(span(f"{node.name}.{phase}", node_span["span_id"], start, start + duration, attributes, error))
            start += duration
    return spans


def _genai(node: Node) -> dict[str, Any]:
    """OpenTelemetry GenAI attributes of a node's exec span: the model it used, or its first tool."""
    if node.node_type == "tool":
        tool = next(p["tool_name"] for _, kind, p in node.run if kind == "tool_call_started")
        return {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "traceloop.span.kind": "tool"}
    calls = [p for _, kind, p in node.run if kind == "model_change"]
    if not calls:
        return {}
    call = calls[-1]
    return {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": MODELS[call["model"]].provider,
        "gen_ai.request.model": call["model"], "gen_ai.response.model": call["model"],
        "gen_ai.usage.input_tokens": call["input_tokens"], "gen_ai.usage.output_tokens": call["output_tokens"],
        "llm.usage.total_tokens": call["input_tokens"] + call["output_tokens"], "traceloop.span.kind": "task",
    }


def telemetry_events(ex: Execution) -> list[dict[str, Any]]:
    return [
        {"event_type": kind, "timestamp": format_ms(at), "data": payload}
        for node in ex.finished_nodes
        for at, kind, payload in node.run
    ]

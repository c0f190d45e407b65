"""Agora: workflow executions made of nodes, built from the same kind of run as the other sources, and the
execution/timeline rows the real backend serves for them (SOURCES.md `agora`); spans and events are in
`agora_spans`.

Like the real platform: executions end `success`, `error` or `timeout`; some timelines have a `skipped`
node or a node whose name join came back empty (`"Unknown"`); the SDK fills only `exec_duration_ms`
(fractional), prep/post are null, except for executions that came in over OTLP. Every time is a
timestamptz as PostgREST prints it (`+00:00`, trailing zeros trimmed).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from telemetry_pipeline.simulate.loopback import HTTPError
from telemetry_pipeline.simulate.runs import Run, build_run
from telemetry_pipeline.simulate.timelines import SimulationConfig, Timeline
from telemetry_pipeline.simulate.vocabulary import WORKFLOWS, Workflow

AGORA_RUNNING = 2  # the newest executions are still running, so a client must skip them
# UTC offsets (minutes) of the machines that ran executions through the SDK, which writes span times as their
# naive local time: whole quarter hours of both signs (Berlin, Helsinki, New York, Los Angeles, India, Nepal,
# Tokyo, Newfoundland, London).
CLIENT_OFFSETS = (60, 120, -300, -420, 330, 345, 540, -210, 0)


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
    sdk: bool  # uploaded by the SDK (naive local span times, `SpanKind.*` kinds) or ingested over OTLP
    offset_minutes: int  # the client's UTC offset: what the SDK's span times are ahead of UTC

    @property
    def finished_nodes(self) -> list[Node]:
        return self.nodes[:-1] if self.running else self.nodes


def agora_count(config: SimulationConfig) -> int:
    return config.sessions // 4


def agora_execution_id(seed: int, index: int) -> str:
    # The index is spelled inside the UUID, so looking an execution up needs no table.
    return f"{seed & 0xFFFFFFFF:08x}-5157-4000-8000-{index:012x}"


def execution_index(seed: int, execution_id: str, count: int) -> int:
    try:
        uuid.UUID(execution_id)
    except ValueError:  # FastAPI validates the path parameter before the handler runs
        detail = [{"type": "uuid_parsing", "loc": ["path", "execution_id"], "msg": "Input should be a valid UUID",
                   "input": execution_id}]
        raise HTTPError(422, "execution_id is not a UUID", payload={"detail": detail}) from None
    head, _, tail = execution_id.rpartition("-")
    try:
        index = int(tail, 16)
    except ValueError:
        index = -1
    if head != agora_execution_id(seed, 0).rpartition("-")[0] or len(tail) != 12 or not 0 <= index < count:
        raise HTTPError(404, "Execution not found")
    return index


def build_execution(config: SimulationConfig, anchor_ms: int, index: int) -> Execution:
    count = agora_count(config)
    timeline = Timeline(count, config.seed, anchor_ms)
    builder, run = build_run(f"{config.seed}:agora:{index}", config.events_per_session, timeline.end_ms(index))
    sdk = index % 3 != 2
    offset = random.Random(f"{config.seed}:agora:{index}:client").choice(CLIENT_OFFSETS) if sdk else 0
    return Execution(
        agora_execution_id(config.seed, index), index, builder.workflow, run, _nodes(run),
        running=index >= count - AGORA_RUNNING, sdk=sdk, offset_minutes=offset,
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


def failures(run: Run) -> list[dict[str, Any]]:
    return [p for _, kind, p in run if kind == "tool_call_completed" and not p["success"]]


def final_failure(node: Node) -> dict[str, Any] | None:
    """The node's last tool result when it failed: a failure followed by a successful retry is no error."""
    completions = [p for _, kind, p in node.run if kind == "tool_call_completed"]
    return completions[-1] if completions and not completions[-1]["success"] else None


def retries(node: Node) -> int:
    return len(failures(node.run)) - (1 if final_failure(node) else 0)


def run_failure(ex: Execution) -> dict[str, Any] | None:
    """The tool failure that made the agent give up, if it did."""
    gave_up = ex.run[-1][2].get("agent_state") == "failed"
    return failures(ex.run)[-1] if gave_up and not ex.running else None


def execution_record(ex: Execution) -> dict[str, Any]:
    first, last = ex.run[0], ex.run[-1]
    failure = run_failure(ex)
    status = "running" if ex.running else "success" if failure is None else "error"
    if failure is not None and failure["error"] == "TimeoutError":
        status = "timeout"
    finished = not ex.running
    error = f"{failure['error']}: {failure['error_details']}" if failure else None
    if finished and failure is None and ex.index % 9 == 5:
        # The platform's deadline ran out while the flow was answering: its nodes all look fine.
        status, error = "timeout", "execution exceeded its time limit"
    return {
        "id": ex.id,
        "workflow_id": _workflow_id(ex.workflow),
        "status": status,
        "started_at": timestamptz(first[0] * 1000),
        "completed_at": timestamptz(last[0] * 1000) if finished else None,
        "duration_ms": last[0] - first[0] if finished else None,
        "error_message": error,
        "input_data": {"prompt": first[2]["prompt"]},
        "output_data": {"response": last[2]["response"]} if finished and "response" in last[2] else None,
    }


def _workflow_id(workflow: Workflow) -> str:
    position = WORKFLOWS.index(workflow)
    return f"00000000-0000-4000-a000-{position + 1:012x}"


def phases_us(node: Node) -> tuple[int, int, int]:
    """(prep, exec, post) in microseconds: preparing and posting are short; executing is most of the node."""
    total = (node.run[-1][0] - node.start_ms) * 1000
    prep, post = total * 6 // 100, total * 3 // 100
    return prep, total - prep - post, post


def node_entry_id(ex: Execution, position: int) -> str:
    return f"{ex.id[:9]}5158-4000-8000-{ex.index:08x}{position:04x}"


def timeline_entries(ex: Execution) -> list[dict[str, Any]]:
    """`GET /executions/{id}/timeline`'s list: node_executions joined with their nodes' name and type."""
    entries = []
    for position, node in enumerate(ex.nodes):
        running = ex.running and position == len(ex.nodes) - 1
        failure = final_failure(node)
        prep, exec_, post = phases_us(node)
        unknown = ex.index % 7 == 3 and position == 1  # the node row is gone: the join comes back empty
        entries.append({
            "id": node_entry_id(ex, position),
            "node_id": f"{ex.workflow.workflow_name}.{node.name}",
            "node_name": "Unknown" if unknown else node.name,
            "node_type": "Unknown" if unknown else node.node_type,
            "status": "running" if running else "error" if failure else "success",
            "started_at": timestamptz(node.start_ms * 1000),
            "completed_at": None if running else timestamptz(node.run[-1][0] * 1000),
            # The SDK measures only exec (a float of ms); OTLP-ingested executions carry all three.
            "prep_duration_ms": None if ex.sdk else prep // 1000,
            "exec_duration_ms": None if running else exec_ / 1000 if ex.sdk else exec_ // 1000,
            "post_duration_ms": None if running or ex.sdk else post // 1000,
            "retry_count": retries(node),
            "error_message": failure["error"] if failure else None,
        })
    if not ex.running and ex.index % 5 == 1:
        # An escalation the flow did not need: skipped, where the answer began.
        at = entries[-1]["started_at"]
        entries.insert(-1, {
            "id": node_entry_id(ex, len(entries)), "node_id": f"{ex.workflow.workflow_name}.escalate",
            "node_name": "escalate", "node_type": "llm", "status": "skipped", "started_at": at, "completed_at": at,
            "prep_duration_ms": None, "exec_duration_ms": None, "post_duration_ms": None, "retry_count": 0,
            "error_message": None,
        })
    return entries


def timestamptz(epoch_us: int) -> str:
    """A timestamptz as PostgREST prints it: `2026-01-01T09:00:00.1234+00:00` (no trailing zeros)."""
    seconds, micros = divmod(epoch_us, 1_000_000)
    fraction = f".{micros:06d}".rstrip("0").rstrip(".")
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}{fraction}+00:00"


def node_rows(ex: Execution) -> list[dict[str, Any]]:
    """`GET /executions/{id}/nodes`: the raw node_executions rows, without the node's name or type."""
    return [
        {**{k: v for k, v in entry.items() if k not in ("node_name", "node_type")}, "execution_id": ex.id,
         "prep_result": None, "exec_result": None, "post_result": None}
        for entry in timeline_entries(ex)
    ]

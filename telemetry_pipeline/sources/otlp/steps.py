"""A trace's spans as its agents' steps: which spans are steps, and which agent performed each (DESIGN, "The event
log as process miners read it"; the frameworks' shapes: telemetry_pipeline_tests/traces/PROVENANCE.md).

Roles. A model call (`llm`), a tool call (`tool`), a handoff to another agent (`handoff`: the OpenAI Agents SDK's
`handoff to X` span, a `transfer_to_<agent>` tool as the SDK and langgraph-supervisor name them, Sentry's handoff
operation), an agent's run (`agent`: `invoke_agent`, OpenInference's AGENT spans that name an agent, a Vercel AI SDK
run whose telemetry names its function), a workflow (`workflow`: `invoke_workflow`, Traceloop's workflow span,
OpenInference's AGENT span of the trace itself: the case, not a step), a framework's plumbing (`plumbing`:
OpenInference chains such as the Agents SDK's `turn`, LangChain's and LangGraph's runnables and nodes as task spans,
LangGraph's `goto`, a Vercel call that names no function) and anything else (`other`: an HTTP or database span keeps
its own activity). Workflows and plumbing are folded away: they are the agent steps they serve, and the activity
alphabet stays small. One that really failed stays, so no failure is hidden.

Who acted. A span's own agent is the agent it names (`gen_ai.agent.name`, `agent.name`, the Vercel function id;
the agent a LangGraph span's entity path starts with), else its parent's. An agent's run is performed by its caller:
the nearest agent above it that is not itself (OpenInference names it: `graph.node.parent_id`); a run nobody called
is its own. So a handoff, and a delegation through a tool, show as a change of resource.

Control flow is not failure: LangGraph hands over by raising `ParentCommand` (and interrupts with `GraphInterrupt`),
which instrumentations record as errors; those spans are not failed (the exception stays in `attributes`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from telemetry_pipeline.canonical.genai import AI_SDK_RUNS, GenAI, first_text
from telemetry_pipeline.canonical.values import text


class Role(StrEnum):
    LLM = "llm"
    TOOL = "tool"
    HANDOFF = "handoff"
    AGENT = "agent"
    WORKFLOW = "workflow"
    PLUMBING = "plumbing"
    OTHER = "other"


FOLDED = frozenset({Role.WORKFLOW, Role.PLUMBING})
#: langgraph.errors: how LangGraph hands control over, not failures.
CONTROL_FLOW = frozenset({"ParentCommand", "GraphInterrupt", "GraphBubbleUp", "NodeInterrupt", "Interrupt"})
_LANGCHAIN_SCOPE = "opentelemetry.instrumentation.langchain"
_HANDOFF_NAME = re.compile(r"^handoff (?:from .+? )?to (?P<to>.+)$", re.IGNORECASE)
_TRANSFER_TOOL = re.compile(r"^transfer_(?:back_)?to_(?P<to>.+)$")
_HANDOFF_DESTINATION = "traceloop.association.properties.__handoff_destination"


class Step(Protocol):
    """What the steps need of a span (the normaliser's `_Span` is one)."""

    name: str
    trace_id: str | None
    span_id: str | None
    parent_id: str | None
    attrs: dict[str, Any]
    start_ns: int | None
    op: str | None
    kind: str | None
    tool: str | None
    agent: str | None  # the agent a span of an agent run invokes (`genai.agent_name`)
    llm: bool
    scope: str | None


def control_flow(attrs: Mapping[str, Any], events: Any) -> str | None:
    """The control-flow exception a span's error is (by `error.type` or its exception events), else None."""
    kinds = [attrs.get("error.type")]
    if isinstance(events, list):
        kinds += [e["attributes"].get("exception.type") for e in events
                  if isinstance(e, Mapping) and e.get("name") == "exception" and isinstance(e.get("attributes"), dict)]
    for kind in kinds:
        if isinstance(kind, str) and kind.rsplit(".", 1)[-1] in CONTROL_FLOW:
            return kind
    return None


def handoff_target(span: Step) -> str | None:
    """The agent a span hands the conversation to, if it is a handoff."""
    if (m := _HANDOFF_NAME.match(span.name)) and span.op != "invoke_agent":
        return m.group("to").strip() or None
    destination = text(span.attrs.get(_HANDOFF_DESTINATION), 200)
    if span.op == "handoff" or (span.kind or "") == "handoff":
        return destination or text(span.attrs.get("gen_ai.handoff.to"), 200) or span.tool
    if span.tool and (m := _TRANSFER_TOOL.match(span.tool)):
        return destination or m.group("to")
    return None


def role(span: Step) -> Role:
    kind, op = span.kind or "", span.op or ""
    if span.llm:
        return Role.LLM
    if handoff_target(span):
        return Role.HANDOFF
    if op == "execute_tool" or span.tool:
        return Role.TOOL
    if op == "invoke_workflow" or kind == "workflow" or (kind == "agent" and _is_trace_itself(span)):
        return Role.WORKFLOW
    if op in ("invoke_agent", "create_agent") or kind == "agent":
        return Role.AGENT
    operation_id = str(span.attrs.get("ai.operationId") or "").lower()
    if operation_id in AI_SDK_RUNS:
        return Role.AGENT if first_text(span.attrs, GenAI.AGENT_NAME) else Role.PLUMBING
    if kind == "chain" or op == "goto" or (kind == "task" and span.scope == _LANGCHAIN_SCOPE):
        return Role.PLUMBING
    return Role.OTHER


def _is_trace_itself(span: Step) -> bool:
    """OpenInference's AGENT span for a whole trace (the Agents SDK's workflow) names no agent and has no parent."""
    return span.parent_id is None and not span.attrs.get("agent.name") and not span.attrs.get("graph.node.id")


@dataclass(frozen=True)
class Attribution:
    roles: dict[int, Role]  # id(span) -> its role
    actors: dict[int, str | None]  # id(span) -> the agent that performed it (None: no agent in sight)
    invoked: dict[int, str | None]  # id(span) of an agent's run -> the agent it runs
    agents: list[str]  # the agents the trace runs, first invoked first
    depths: dict[int, int]  # id(span) -> how many ancestors it has (a parent before its child at the same instant)


def attribute(spans: Sequence[Step]) -> Attribution:
    """Roles and actors of one session's spans (traces are trees by `parent_id` within `trace_id`)."""
    by_id = {(s.trace_id, s.span_id): s for s in spans if s.span_id}
    roles = {id(s): role(s) for s in spans}
    invoked = {id(s): _invoked(s) for s in spans if roles[id(s)] is Role.AGENT}
    known = {name for name in invoked.values() if name}
    own: dict[int, str | None] = {id(s): invoked.get(id(s)) or _named(s, known) for s in spans}

    def parent(span: Step) -> Step | None:
        return by_id.get((span.trace_id, span.parent_id)) if span.parent_id else None

    acting: dict[int, str | None] = {}

    def acting_of(span: Step) -> str | None:
        """Its own agent, else the nearest ancestor's (iterative, each span walked once; a cycle of parent ids
        finds nobody)."""
        chain: list[Step] = []
        current = span
        while id(current) not in acting:
            if own[id(current)] is not None:
                acting[id(current)] = own[id(current)]
                break
            if any(c is current for c in chain):
                break
            chain.append(current)
            above = parent(current)
            if above is None:
                break
            current = above
        found = acting.get(id(current))
        for step in chain:
            acting[id(step)] = found
        return acting[id(span)]

    actors: dict[int, str | None] = {}
    for span in spans:
        if roles[id(span)] is Role.AGENT:
            actors[id(span)] = _caller(span, invoked[id(span)], parent, acting_of) or invoked[id(span)]
        else:
            actors[id(span)] = acting_of(span)
    order = sorted((s for s in spans if roles[id(s)] is Role.AGENT and invoked[id(s)]),
                   key=lambda s: s.start_ns or 0)
    first_invoked = list(dict.fromkeys(name for s in order if (name := invoked[id(s)])))
    return Attribution(roles, actors, invoked, first_invoked, {id(s): _depth(s, parent) for s in spans})


def _depth(span: Step, parent: Any) -> int:
    depth, seen, current = 0, {id(span)}, parent(span)
    while current is not None and id(current) not in seen:
        depth, current = depth + 1, parent(current)
        seen.add(id(current))
    return depth


def _invoked(span: Step) -> str | None:
    return span.agent or first_text(span.attrs, GenAI.AGENT_NAME) or (span.name.strip() or None)


def _named(span: Step, known: set[str]) -> str | None:
    """The agent a span says performed it: an agent attribute, else (LangGraph) the agent its entity path or
    checkpoint namespace starts with, when that is an agent the trace runs."""
    named = first_text(span.attrs, GenAI.AGENT_NAME)
    if named:
        return named
    for key in ("traceloop.entity.path", "traceloop.entity.name"):
        head = re.split(r"[.:|]", str(span.attrs.get(key) or ""), maxsplit=1)[0]
        if head in known:
            return head
    namespace = str(span.attrs.get("traceloop.association.properties.checkpoint_ns") or "").split(":", 1)[0]
    return namespace if namespace in known else None


def _caller(span: Step, invoked: str | None, parent: Any, acting_of: Any) -> str | None:
    """Who ran an agent: OpenInference's `graph.node.parent_id`, else the nearest agent above that is another."""
    stated = text(span.attrs.get("graph.node.parent_id"), 200)
    if stated:
        return stated
    current = parent(span)
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        candidate = acting_of(current)
        if candidate and candidate != invoked:
            return str(candidate)
        current = parent(current)
    return None


def display_name(target: str, agents: list[str]) -> str:
    """A handoff's target as the trace names that agent: `billing_specialist` is `Billing Specialist` when the
    trace runs an agent of that name."""
    def plain(name: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")

    return next((a for a in agents if plain(a) == plain(target)), target)

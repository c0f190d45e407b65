"""Agora's tracer spans folded into one node run each, for every normaliser that meets them.

Agora's tracer (`agora/agora_tracer.py`) writes, per node run, a `{node}.node` span (`agora.kind` =
`node`, `total_duration_ms`) with three phase children `{node}.prep`, `{node}.exec`, `{node}.post`
(`agora.node`, `agora.phase`, `duration_ms`; `retry_count` on exec, `next_action` on post), and per flow
run a `{flow}.flow` span (`agora.flow`). An event log wants one activity per node run, not four, so:

- a node run is a `.node` span with its phase spans and every other span made inside it (the LLM call
  an `exec` made). Membership follows the parent ids where the spans have them (OTLP files, the
  platform's span rows). Agora's local JSON export has no span ids: there the SDK writes each span as
  it ends, so a `.node` span takes the phases of its node and the id-less spans written since its
  node's first pending phase;
- phase spans whose `.node` span never came (a run that died) still make a run, marked incomplete;
- a `.flow` span names the case's workflow; it is the case itself, not an activity.

Plain data in, plain data out: callers wrap their own spans in `TracerSpan` (`ref` carries them back).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from telemetry_pipeline.canonical.values import as_float

PHASES = ("prep", "exec", "post")


@dataclass(eq=False)
class TracerSpan:
    name: str
    attributes: Mapping[str, Any]
    start: dt.datetime | None
    end: dt.datetime | None
    span_id: str | None = None
    parent_id: str | None = None
    failed: bool = False
    ref: Any = None  # the caller's own span object

    @property
    def node(self) -> str | None:
        """The Agora node this span belongs to (its `.node` span or a phase), else None."""
        node = self.attributes.get("agora.node")
        if isinstance(node, str) and node.strip():
            return node.strip()
        return None

    @property
    def phase(self) -> str | None:
        phase = self.attributes.get("agora.phase")
        if phase in PHASES:
            return str(phase)
        node = self.node
        return next((p for p in PHASES if node and self.name == f"{node}.{p}"), None)

    @property
    def is_node_span(self) -> bool:
        return self.node is not None and self.phase is None and (
            self.attributes.get("agora.kind") == "node" or self.name == f"{self.node}.node"
        )

    @property
    def flow(self) -> str | None:
        """The workflow a `{flow}.flow` span runs, else None."""
        flow = self.attributes.get("agora.flow")
        if isinstance(flow, str) and flow.strip() and self.node is None:
            return flow.strip()
        return None


@dataclass(eq=False)
class NodeRun:
    node: str
    node_span: TracerSpan | None
    phases: list[TracerSpan] = field(default_factory=list)
    inner: list[TracerSpan] = field(default_factory=list)  # other spans made inside the run (LLM calls…)

    @property
    def spans(self) -> list[TracerSpan]:
        return ([self.node_span] if self.node_span else []) + self.phases + self.inner

    @property
    def complete(self) -> bool:
        return self.node_span is not None

    @property
    def start(self) -> dt.datetime | None:
        return min((s.start or s.end for s in self.spans if s.start or s.end), default=None)  # type: ignore[type-var]

    @property
    def end(self) -> dt.datetime | None:
        return max((s.end for s in self.spans if s.end), default=None)

    @property
    def failed(self) -> bool:
        return any(s.failed for s in self.spans)

    def attributes(self) -> dict[str, Any]:
        """Phase durations, retries and the run's own Agora attributes (what the four spans said)."""
        out: dict[str, Any] = {"agora.node": self.node}
        for phase in PHASES:
            durations = [as_float(s.attributes.get("duration_ms")) for s in self.phases if s.phase == phase]
            present = [d for d in durations if d is not None]
            if present:
                out[f"{phase}_duration_ms"] = round(sum(present), 3)
        if self.node_span is not None:
            total = as_float(self.node_span.attributes.get("total_duration_ms"))
            if total is not None:
                out["total_duration_ms"] = total
        execs = [s for s in self.phases if s.phase == "exec"]
        counted = [as_float(s.attributes.get("retry_count")) for s in execs]
        retries = max([int(c) for c in counted if c is not None] + [len(execs) - 1, 0])
        if execs or retries:
            out["retry_count"] = retries
        post = next((s for s in reversed(self.phases) if s.phase == "post"), None)
        if post is not None and post.attributes.get("next_action") is not None:
            out["next_action"] = post.attributes["next_action"]
        if not self.complete:
            out["incomplete"] = True  # no `.node` span: the run never finished (or its end was lost)
        return out


@dataclass
class FoldedTrace:
    workflow: str | None
    flows: list[TracerSpan]
    runs: list[NodeRun]
    others: list[TracerSpan]  # spans in no node run and no flow span: activities of their own


def is_tracer_span(span: TracerSpan) -> bool:
    return span.node is not None or span.flow is not None


def fold(spans: Sequence[TracerSpan]) -> FoldedTrace:
    """Fold one trace's spans (in the order they were written) into node runs."""
    by_id = {s.span_id: s for s in spans if s.span_id}
    runs: dict[int, NodeRun] = {}  # id(node span) -> its run
    for span in spans:
        if span.is_node_span:
            runs[id(span)] = NodeRun(span.node or "", span)
    flows = [s for s in spans if s.flow is not None]
    placed: set[int] = {id(s) for s in flows} | set(runs)

    # By parent ids: a span whose ancestors include a `.node` span belongs to that run.
    enclosing = _EnclosingRuns(by_id, runs)
    for span in spans:
        if id(span) in placed:
            continue
        run = enclosing.of(span)
        if run is not None:
            (run.phases if span.phase and span.node == run.node else run.inner).append(span)
            placed.add(id(span))

    # Without ids (Agora's local export): by writing order.
    ordered_runs: list[NodeRun] = []
    pending: list[TracerSpan] = []
    for span in spans:
        if id(span) in runs:
            run = runs[id(span)]
            if not run.phases and not run.inner:
                _claim(run, pending)
            ordered_runs.append(run)
        elif id(span) not in placed and (span.phase is not None or span.span_id is None):
            pending.append(span)
    orphans: list[NodeRun] = []
    for span in pending:
        if span.phase is not None and span.node:
            if not orphans or orphans[-1].node != span.node or _has_phase(orphans[-1], span.phase):
                orphans.append(NodeRun(span.node, None))
            orphans[-1].phases.append(span)
            placed.add(id(span))
    claimed = {id(s) for run in [*ordered_runs, *orphans] for s in run.spans}
    all_runs = sorted([*ordered_runs, *orphans], key=lambda r: (r.start is None, r.start or _EPOCH))
    workflow = next((s.flow for s in flows), None)
    claimed |= {id(f) for f in flows}
    others = [s for s in spans if id(s) not in claimed]
    return FoldedTrace(workflow, flows, all_runs, others)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class _EnclosingRuns:
    """The run whose `.node` span is a span's nearest such ancestor; each span is resolved once, so a
    deep trace costs its size, not its size times its depth; a cycle in bad data ends the walk."""

    def __init__(self, by_id: Mapping[str, TracerSpan], runs: Mapping[int, NodeRun]) -> None:
        self._by_id, self._runs = by_id, runs
        self._known: dict[int, NodeRun | None] = {}

    def of(self, span: TracerSpan) -> NodeRun | None:
        path: list[TracerSpan] = []
        on_path: set[int] = set()
        found: NodeRun | None = None
        parent = self._by_id.get(span.parent_id) if span.parent_id else None
        while parent is not None and id(parent) not in on_path:
            if id(parent) in self._runs:
                found = self._runs[id(parent)]
                break
            if id(parent) in self._known:
                found = self._known[id(parent)]
                break
            path.append(parent)
            on_path.add(id(parent))
            parent = self._by_id.get(parent.parent_id) if parent.parent_id else None
        for ancestor in path:
            self._known[id(ancestor)] = found
        return found


def _claim(run: NodeRun, pending: list[TracerSpan]) -> None:
    """The run's phases among `pending`, and the id-less spans written since its first phase."""
    first = next((i for i, s in enumerate(pending) if s.phase is not None and s.node == run.node), None)
    if first is None:
        return
    keep: list[TracerSpan] = []
    for i, span in enumerate(pending):
        if span.phase is not None and span.node == run.node:
            run.phases.append(span)
        elif i > first and span.phase is None and span.node is None:
            run.inner.append(span)
        else:
            keep.append(span)
    pending[:] = keep


def _has_phase(run: NodeRun, phase: str) -> bool:
    return any(s.phase == phase for s in run.phases)


"""Folding Agora's tracer spans into node runs, on Agora's own outputs (../shared/real-telemetry/agora)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from telemetry_pipeline.canonical.agora_tracer import TracerSpan, fold
from telemetry_pipeline_tests.shared import shared_path

pytestmark = pytest.mark.fast  # `make test-fast`


def export_trace(file: str, trace_id: str) -> list[TracerSpan]:
    """The spans of one trace in Agora's local export, as written (no ids; the time is the write time)."""
    spans = []
    for line in shared_path("real-telemetry", "agora", "exports", file).read_text().splitlines():
        record = json.loads(line)
        if record["trace_id"] == trace_id:
            at = dt.datetime.fromisoformat(record["timestamp"]).replace(tzinfo=dt.UTC)
            spans.append(TracerSpan(record["name"], record["attributes"], at, at))
    return spans


def test_an_exported_chat_flow_folds_into_one_run_per_node_with_its_llm_call_inside() -> None:
    folded = fold(export_trace("traces_1762768076.jsonl", "ed6bb32cbc51a3c81617d4c7442c3f1f"))
    assert folded.workflow == "ChatFlow"
    assert [r.node for r in folded.runs] == [
        "GetUserInput", "GenerateResponse", "GetUserInput", "GenerateResponse", "GetUserInput", "ChatExit"]
    assert folded.others == []
    generate = folded.runs[1]
    assert [s.name for s in generate.inner] == ["openai.chat"]
    assert generate.attributes() == {"agora.node": "GenerateResponse", "prep_duration_ms": 0.0,
                                     "exec_duration_ms": 1124.53, "post_duration_ms": 0.0,
                                     "total_duration_ms": 1127.44, "retry_count": 0, "next_action": "input"}
    assert all(r.complete for r in folded.runs)


def test_a_run_whose_node_span_never_came_is_kept_and_marked_incomplete() -> None:
    folded = fold(export_trace("chat.jsonl", "910793a53c74adfcfd3439b8aea3d946"))  # a lone ProcessMessage.prep
    (run,) = folded.runs
    assert run.node == "ProcessMessage" and not run.complete and run.attributes()["incomplete"] is True


def test_with_span_ids_runs_follow_the_parents_and_spans_outside_stay_on_their_own() -> None:
    t = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    s = lambda n, sid, parent, **a: TracerSpan(n, a, t, t, sid, parent)  # noqa: E731
    spans = [
        s("Plan.prep", "p1", "n1", **{"agora.node": "Plan", "agora.phase": "prep", "duration_ms": 1.5}),
        s("openai.chat", "c1", "e1", **{"gen_ai.request.model": "gpt-4o"}),
        s("Plan.exec", "e1", "n1", **{"agora.node": "Plan", "agora.phase": "exec", "retry_count": "2"}),
        s("Plan.node", "n1", "f1", **{"agora.node": "Plan", "agora.kind": "node"}),
        s("http GET", "h1", "f1"),
        s("Flow.flow", "f1", None, **{"agora.flow": "Flow"}),
    ]
    folded = fold(spans)
    (run,) = folded.runs
    assert [x.name for x in run.phases] == ["Plan.prep", "Plan.exec"] and [x.name for x in run.inner] == ["openai.chat"]
    assert run.attributes()["retry_count"] == 2 and run.attributes()["prep_duration_ms"] == 1.5
    assert [x.name for x in folded.others] == ["http GET"] and folded.workflow == "Flow"


def test_parents_in_a_cycle_or_a_long_chain_end_the_walk() -> None:
    t = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    node = TracerSpan("Plan.node", {"agora.node": "Plan", "agora.kind": "node"}, t, t, "n", None)
    chain = [TracerSpan(f"step {i}", {}, t, t, f"s{i}", f"s{i - 1}" if i else "n") for i in range(5000)]
    cycle = [TracerSpan("a", {}, t, t, "a", "b"), TracerSpan("b", {}, t, t, "b", "a")]
    folded = fold([node, *chain, *cycle])
    assert len(folded.runs[0].inner) == 5000 and [s.name for s in folded.others] == ["a", "b"]

"""The event log agent-behaviour mining needs (issue 30): who acted, what it cost, figures a miner adds up.

On the traces five unmodified frameworks emitted (`traces/`, PROVENANCE.md: a triage agent hands the conversation to
a billing specialist, which looks the account up and refunds; in each file's first session the refund fails). The
expectations were written from reading the traces (their span trees and attributes, in PROVENANCE.md), not from the
pipeline's output: which agent called which tool and model, where the handoff is, the tokens of each model call, and
its cost: the trace's own where it states one (Pydantic AI's `operation.cost`), else the providers' published prices
(`PRICES` below, OpenAI's list prices of gpt-4o and gpt-4o-mini, by which the pipeline's price table must agree).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from telemetry_pipeline.canonical.content import ContentPolicy, Governance
from telemetry_pipeline.signavio.schema import EVENTS, RUNS
from telemetry_pipeline_tests.conftest import Pipeline, uploads_by_table
from telemetry_pipeline_tests.shared import shared_path
from telemetry_pipeline_tests.source_double import SourceDouble

TRACES = Path(__file__).parent / "traces"
# USD per million tokens: (input, cached input, output), OpenAI's published prices of the models the traces used.
PRICES = {"gpt-4o-2024-08-06": (2.50, 1.25, 10.00), "gpt-4o-mini-2024-07-18": (0.15, 0.075, 0.60)}
TRIAGE, BILLING = "Triage Agent", "Billing Specialist"
MINI, FOUR_O = "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"

# Per framework, session 0001 (the refund fails): each step's (activity, the agent that performed it), and each model
# call's (model, input tokens, cached input tokens, output tokens), in order.
STEPS: dict[str, list[tuple[str, str]]] = {
    "openai-agents": [  # OpenInference: AGENT spans name the agents, `turn` chains are plumbing, `handoff to X`
        ("Invoke agent Triage Agent", TRIAGE), ("Chat", TRIAGE), ("Hand off to Billing Specialist", TRIAGE),
        ("Invoke agent Billing Specialist", TRIAGE),  # `graph.node.parent_id`: the triage agent ran it
        ("Chat", BILLING), ("Call tool lookup_account", BILLING), ("Chat", BILLING),
        ("Call tool refund_payment", BILLING), ("Chat", BILLING),
    ],
    "langgraph": [  # OpenLLMetry: runnables and nodes are task spans (plumbing); agents by their entity path
        ("Invoke agent support_desk", "support_desk"), ("Invoke agent triage_agent", "support_desk"),
        ("Chat", "triage_agent"), ("Hand off to billing_specialist", "triage_agent"),
        ("Invoke agent billing_specialist", "support_desk"), ("Chat", "billing_specialist"),
        ("Call tool lookup_account", "billing_specialist"), ("Chat", "billing_specialist"),
        ("Call tool refund_payment", "billing_specialist"), ("Chat", "billing_specialist"),
        ("Invoke agent triage_agent", "support_desk"), ("Chat", "triage_agent"),
    ],
    "openai-v2": [  # hand-made agent and tool spans; the model calls are the instrumentation's
        ("Invoke agent Triage Agent", TRIAGE), ("Chat", TRIAGE), ("Hand off to Billing Specialist", TRIAGE),
        ("Invoke agent Billing Specialist", BILLING),  # a sibling nobody above called: its own
        ("Chat", BILLING), ("Call tool lookup_account", BILLING), ("Chat", BILLING),
        ("Call tool refund_payment", BILLING), ("Chat", BILLING),
    ],
    "pydantic-ai": [  # delegation through a tool: the billing agent's run is a child of the triage agent's tool
        ("Invoke agent Triage Agent", TRIAGE), ("Chat", TRIAGE), ("Call tool ask_billing_specialist", TRIAGE),
        ("Invoke agent Billing Specialist", TRIAGE), ("Chat", BILLING), ("Call tool lookup_account", BILLING),
        ("Chat", BILLING), ("Call tool refund_payment", BILLING), ("Chat", TRIAGE),
    ],
    "vercel-ai": [  # the same delegation; agents named by `ai.telemetry.functionId`
        ("Invoke agent Triage Agent", TRIAGE), ("Chat", TRIAGE), ("Call tool ask_billing_specialist", TRIAGE),
        ("Invoke agent Billing Specialist", TRIAGE), ("Chat", BILLING), ("Call tool lookup_account", BILLING),
        ("Chat", BILLING), ("Call tool refund_payment", BILLING), ("Chat", BILLING), ("Chat", TRIAGE),
    ],
}
CALLS: dict[str, list[tuple[str, int, int, int]]] = {
    "openai-agents": [(MINI, 230, 0, 5), (FOUR_O, 453, 256, 10), (FOUR_O, 621, 320, 10), (FOUR_O, 729, 384, 178)],
    "langgraph": [(MINI, 219, 0, 5), (FOUR_O, 378, 192, 10), (FOUR_O, 545, 320, 10), (FOUR_O, 660, 384, 178),
                  (MINI, 471, 256, 39)],
    "openai-v2": [(MINI, 215, 0, 5), (FOUR_O, 377, 0, 10), (FOUR_O, 536, 0, 10), (FOUR_O, 636, 0, 178)],
    "pydantic-ai": [(MINI, 246, 0, 35), (FOUR_O, 275, 0, 10), (FOUR_O, 434, 256, 10), (MINI, 377, 192, 50)],
    "vercel-ai": [(MINI, 255, 0, 35), (FOUR_O, 290, 0, 10), (FOUR_O, 431, 256, 10), (FOUR_O, 510, 256, 178),
                  (MINI, 395, 192, 50)],
}
# Pydantic AI states each call's cost (`operation.cost`, from genai-prices in the framework itself): taken as it is.
STATED = {"pydantic-ai": [5.79e-05, 0.0007875, 0.000865, 7.215e-05]}


def listed_price(model: str, tokens_in: int, cached: int, tokens_out: int) -> float:
    uncached, cache, output = PRICES[model]
    return ((tokens_in - cached) * uncached + cached * cache + tokens_out * output) / 1e6


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """The five files in one inbox, exported to the outbox with the whole text (`full`: the structure of the
    content is not what these tests read)."""
    from telemetry_pipeline import cli
    from telemetry_pipeline.settings import SourcesSettings, for_home

    home = tmp_path_factory.mktemp("mining") / "home"
    inbox = home.parent / "inbox"
    inbox.mkdir()
    for trace in TRACES.glob("*.jsonl"):
        shutil.copy(trace, inbox / trace.name)
    settings = for_home(home, sources=SourcesSettings.of(otlp_dir=inbox),
                        content=Governance(ContentPolicy.FULL))
    assert cli.main(["discover"], settings=settings) == 0
    assert cli.main(["export", "--pending"], settings=settings) == 0
    return uploads_by_table(home)


def session(tables: dict[str, list[dict[str, str]]], framework: str, n: int = 1) -> tuple[dict[str, str], list]:
    prefix = f"{framework}-session-000{n}"
    case = next(r for r in tables["agent_telemetry_runs"] if r["agent_run_id"].startswith(prefix))
    events = sorted((e for e in tables["agent_telemetry_events"] if e["case_id"] == case["agent_run_id"]),
                    key=lambda e: int(e["event_time"]))  # stable: the table's own order at one instant
    return case, events


@pytest.mark.parametrize("framework", sorted(STEPS))
def test_each_step_names_the_agent_that_performed_it(tables: dict[str, list[dict[str, str]]], framework: str):
    case, events = session(tables, framework)
    assert [(e["activity"], e["resource"]) for e in events] == STEPS[framework]
    tools = {e["tool_name"]: e["resource"] for e in events if e["tool_name"]}
    assert tools["lookup_account"] == tools["refund_payment"] == (
        "billing_specialist" if framework == "langgraph" else BILLING), "the specialist called both tools"
    assert not any(e["tool_name"] for e in events if e["activity"].startswith("Hand off")), "a handoff is no tool call"
    assert case["agent_name"] == ("support_desk" if framework == "langgraph" else TRIAGE), "the agent asked first"


@pytest.mark.parametrize("framework", sorted(STEPS))
def test_model_calls_carry_their_tokens_and_cost(tables: dict[str, list[dict[str, str]]], framework: str):
    case, events = session(tables, framework)
    calls = [e for e in events if e["model"]]
    assert [(e["model"], int(e["input_tokens"]), int(e["output_tokens"])) for e in calls] == [
        (model, tokens_in, tokens_out) for model, tokens_in, _, tokens_out in CALLS[framework]]
    expected = STATED.get(framework) or [listed_price(*call) for call in CALLS[framework]]
    assert [float(e["cost_usd"]) for e in calls] == pytest.approx(expected, rel=1e-9)
    assert all(e["cost_usd"] == "" for e in events if not e["model"]), "only a model call costs"

    figures = {name: case[name] for name in ("input_tokens", "output_tokens", "llm_call_count", "tool_call_count",
                                            "tool_error_count", "agent_count")}
    assert figures == {
        "input_tokens": str(sum(c[1] for c in CALLS[framework])),
        "output_tokens": str(sum(c[3] for c in CALLS[framework])),
        "llm_call_count": str(len(CALLS[framework])),
        "tool_call_count": str(3 if framework in ("pydantic-ai", "vercel-ai") else 2),  # the delegation is a tool
        "tool_error_count": "1",
        "agent_count": str(len({resource for _, resource in STEPS[framework]})),
    }
    assert float(case["cost_usd"]) == pytest.approx(sum(expected), rel=1e-9)


def test_control_flow_is_no_failure_and_plumbing_is_no_step(tables: dict[str, list[dict[str, str]]]):
    """LangGraph hands over by raising `ParentCommand` on 4 spans per session; its runnables, nodes and `goto` spans
    are 38 of the 50 spans of a session: neither shows in the event log."""
    failed, events = session(tables, "langgraph", 1)
    ok, ok_events = session(tables, "langgraph", 2)
    assert (failed["status"], ok["status"]) == ("partial", "completed"), "only the refund failed, once"
    assert [e["activity"] for e in events if e["status"] == "failed"] == ["Call tool refund_payment"]
    assert not any(e["error"] for e in ok_events)
    alphabet = {e["activity"] for e in tables["agent_telemetry_events"] if e["case_id"].startswith("langgraph")}
    assert alphabet == {"Invoke agent support_desk", "Invoke agent triage_agent", "Invoke agent billing_specialist",
                        "Chat", "Hand off to billing_specialist", "Call tool lookup_account",
                        "Call tool refund_payment"}


def test_the_new_columns_are_appended_and_the_old_ones_stay(tables: dict[str, list[dict[str, str]]]):
    assert RUNS.column_names[:21] == [
        "agent_run_id", "agent_name", "task_id", "task_description", "start_time", "end_time", "status",
        "outcome_summary", "latency_ms", "notes", "service_name", "workflow_name", "workflow_version", "agent_type",
        "agent_state", "prompt_metrics", "tools_used", "llm_calls", "process_steps", "source", "event_count"]
    assert RUNS.column_names[21:28] == ["input_tokens", "output_tokens", "cost_usd", "llm_call_count",
                                        "tool_call_count", "tool_error_count", "agent_count"]
    assert EVENTS.column_names[15:17] == ["source", "cost_usd"]
    types = {c.name: c.type for c in (*RUNS.columns, *EVENTS.columns)}
    assert types["cost_usd"] == "double" and types["agent_count"] == "long"
    assert list(tables["agent_telemetry_runs"][0]) == RUNS.column_names


def test_the_case_agent_is_what_the_data_names_then_the_operators_then_the_agent_type(
    pipeline: Pipeline, source_double: SourceDouble, capsys: pytest.CaptureFixture[str], home: Path,
):
    """The older exporter's AGENT_NAME keeps its meaning; unset, the agent's type names it, not the host."""
    events: list[dict[str, Any]] = [
        {"timestamp": "2025-01-15T10:30:00Z", "type": "user_prompt", "payload": {"prompt": "hi"}},
        {"timestamp": "2025-01-15T10:30:01Z", "type": "tool_call_started",
         "payload": {"tool_name": "search", "agent_name": "researcher"}},
    ]
    named = source_double.add("extract", "named", {"agent_name": "planner", "agent_type": "sales_agent",
                                                   "events": events})
    typed = source_double.add("extract", "typed", {"agent_type": "sales_agent", "events": events[:1]})
    pipeline.configure(sources={"agent_name": None})
    code, _ = pipeline.cli("export", named, typed)
    assert code == 0
    pipeline.configure(sources={"agent_name": "ops-name"})
    code, _ = pipeline.cli("export", "--force", typed)
    assert code == 0
    out = uploads_by_table(home)
    runs = {r["agent_run_id"]: r["agent_name"] for r in out["agent_telemetry_runs"]}
    assert runs["named"] == "planner", "the document's own agent name wins over everything"
    assert runs["typed"] == "ops-name", "the operator's, last export: before the data's agent type"
    first = next(r["agent_name"] for r in out["agent_telemetry_runs"] if r["agent_run_id"] == "typed")
    assert first == "sales_agent", "unset: the agent type, not the host's name"
    steps = {e["activity"]: e["resource"] for e in out["agent_telemetry_events"] if e["case_id"] == "named"}
    assert steps == {"User prompt": "user", "Call tool search": "researcher"}, "an event's own agent, else the case's"


def test_a_trace_that_states_its_cost_keeps_it(pipeline: Pipeline, home: Path, tmp_path: Path):
    """any-agent's recorded OpenAI Agents SDK run (`../shared/real-telemetry`) states each call's cost as input and
    output parts (`gen_ai.usage.input_cost`, `output_cost`), for a model (mistral-small) the price table may not
    know: the trace's figure is the cost."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(shared_path("real-telemetry", "otlp", "anyagent_openai_trace.json"), inbox)
    pipeline.configure(sources={"otlp_dir": inbox, "extract_url": None, "agent_telemetry_url": None})
    assert pipeline.cli("discover")[0] == 0 and pipeline.cli("export", "--pending")[0] == 0
    out = uploads_by_table(home)
    calls = [e for e in out["agent_telemetry_events"] if e["model"]]
    assert [float(e["cost_usd"]) for e in calls] == pytest.approx(
        [2.69e-05 + 4.8e-06, 3.59e-05 + 4.2e-06, 3.92e-05 + 1.38e-05])
    tools = {e["tool_name"]: e["resource"] for e in out["agent_telemetry_events"] if e["tool_name"]}
    assert tools == {"get_current_time": "any_agent", "write_file": "any_agent"}
    [case] = out["agent_telemetry_runs"]
    assert (case["agent_name"], case["llm_call_count"], case["tool_call_count"]) == ("any_agent", "3", "2")

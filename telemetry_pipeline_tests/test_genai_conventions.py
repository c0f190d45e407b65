"""One LLM call, tool call and agent invocation as each GenAI convention spells it (SOURCES.md, `otlp`): the
shared alias table reads the same model, tokens, tool and agent, and the same activity, from every one."""

from __future__ import annotations

from typing import Any

import pytest

from telemetry_pipeline.canonical.activity import span_activity
from telemetry_pipeline.canonical.genai import GenAI, agent_name, first_int, first_text, operation, span_kind, tool_name

pytestmark = pytest.mark.fast  # `make test-fast`

LLM_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "OpenTelemetry GenAI": ("chat gpt-4o", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30}),
    "deprecated GenAI names (gen_ai.system, prompt/completion tokens)": ("chat gpt-4o", {
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.prompt_tokens": "120", "gen_ai.usage.completion_tokens": "30"}),
    "OpenInference": ("ChatCompletion", {
        "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-2024-08-06", "llm.provider": "openai",
        "llm.token_count.prompt": 120, "llm.token_count.completion": 30, "llm.token_count.total": 150}),
    "Vercel AI SDK (promptTokens)": ("ai.generateText.doGenerate", {
        "ai.operationId": "ai.generateText.doGenerate", "ai.model.id": "gpt-4o-2024-08-06",
        "ai.model.provider": "openai.chat", "ai.usage.promptTokens": 120, "ai.usage.completionTokens": 30}),
    "Vercel AI SDK (inputTokens)": ("ai.streamText.doStream", {
        "ai.operationId": "ai.streamText.doStream", "ai.model.id": "gpt-4o-2024-08-06",
        "ai.usage.inputTokens": 120, "ai.usage.outputTokens": 30}),
    "OpenLLMetry / Traceloop": ("openai.chat", {
        "llm.request.type": "chat", "gen_ai.system": "OpenAI", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.prompt_tokens": 120,
        "gen_ai.usage.completion_tokens": 30, "llm.usage.total_tokens": 150}),
    "LiteLLM (numbers as text)": ("litellm_request", {
        "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.prompt_tokens": "120", "gen_ai.usage.completion_tokens": "30", "litellm.call_id": "abc"}),
    "any-agent (call_llm)": ("call_llm gpt-4o-2024-08-06", {
        "gen_ai.operation.name": "call_llm", "gen_ai.request.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": "120", "gen_ai.usage.output_tokens": "30"}),
}

TOOL_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "OpenTelemetry GenAI": ("execute_tool search", {"gen_ai.operation.name": "execute_tool",
                                                     "gen_ai.tool.name": "search"}),
    "OpenTelemetry span name only": ("execute_tool search", {}),
    "OpenInference": ("search", {"openinference.span.kind": "TOOL", "tool.name": "search"}),
    "Vercel AI SDK": ("ai.toolCall", {"ai.operationId": "ai.toolCall", "ai.toolCall.name": "search",
                                      "ai.toolCall.id": "call_1"}),
    "Traceloop": ("search.tool", {"traceloop.span.kind": "tool", "traceloop.entity.name": "search"}),
}

AGENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "OpenTelemetry GenAI": ("invoke_agent planner", {"gen_ai.operation.name": "invoke_agent",
                                                      "gen_ai.agent.name": "planner"}),
    "OpenTelemetry span name only (Strands)": ("invoke_agent planner", {"gen_ai.request.model": "gpt-4o"}),
    "any-agent (bracketed name)": ("invoke_agent [planner]", {"gen_ai.operation.name": "invoke_agent"}),
    "Traceloop": ("planner.agent", {"traceloop.span.kind": "agent", "traceloop.entity.name": "planner"}),
    "OpenInference": ("planner", {"openinference.span.kind": "AGENT", "agent.name": "planner"}),
}


def activity(name: str, attrs: dict[str, Any]) -> str:
    return span_activity(operation(attrs, name), span_kind(attrs), tool_name(attrs, name), agent_name(attrs, name),
                         first_text(attrs, GenAI.ENTITY_NAME), first_text(attrs, GenAI.WORKFLOW_NAME), name)


@pytest.mark.parametrize("convention", sorted(LLM_CALLS))
def test_an_llm_call_yields_its_model_and_tokens_whatever_the_convention(convention: str) -> None:
    name, attrs = LLM_CALLS[convention]
    assert first_text(attrs, GenAI.MODEL) == "gpt-4o-2024-08-06"
    assert (first_int(attrs, GenAI.INPUT_TOKENS), first_int(attrs, GenAI.OUTPUT_TOKENS)) == (120, 30)
    assert activity(name, attrs) == "Chat"


@pytest.mark.parametrize("convention", sorted(TOOL_CALLS))
def test_a_tool_call_yields_its_tool_name(convention: str) -> None:
    name, attrs = TOOL_CALLS[convention]
    assert tool_name(attrs, name) == "search" and activity(name, attrs) == "Call tool search"


@pytest.mark.parametrize("convention", sorted(AGENTS))
def test_an_agent_invocation_yields_its_agent_name(convention: str) -> None:
    name, attrs = AGENTS[convention]
    assert agent_name(attrs, name) == "planner" and activity(name, attrs) == "Invoke agent planner"


def test_embeddings_and_completions_are_named_by_what_they_do() -> None:
    assert activity("openai.embeddings", {"llm.request.type": "embedding"}) == "Embeddings"
    assert activity("embed", {"openinference.span.kind": "EMBEDDING"}) == "Embeddings"
    assert activity("ai.embed.doEmbed", {"ai.operationId": "ai.embed.doEmbed"}) == "Embeddings"
    assert activity("openai.completion", {"llm.request.type": "completion"}) == "Text completion"


def test_a_span_name_never_brings_an_id_into_an_activity() -> None:
    assert activity("GET /orders/4f1c9e27b3d84a6e0a1b", {}) == "GET /orders/{id}"
    assert activity("job 123e4567-e89b-12d3-a456-426614174000 step 20251130", {}) == "job {id} step {id}"
    assert activity("Sleep 120s", {}) == "Sleep 120s"

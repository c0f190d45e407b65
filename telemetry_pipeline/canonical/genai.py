"""GenAI attribute aliases: which span attributes name the same thing across instrumentations.

A declaration, shared by every normaliser: for each concept, the attribute keys that carry it, in the
order they are tried (the first one present wins). Covers OpenTelemetry GenAI (current and deprecated
names), OpenInference (Arize/Phoenix), the Vercel AI SDK, OpenLLMetry/Traceloop and LiteLLM (which
writes `gen_ai.*`, old names included). See docs/SOURCES.md, `otlp`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from telemetry_pipeline.canonical.values import as_float, as_int, text


class GenAI(StrEnum):
    OPERATION = "operation"  # chat, text_completion, embeddings, execute_tool, invoke_agent, ...
    SPAN_KIND = "span_kind"  # what kind of step a span is, in the instrumentation's own words
    PROVIDER = "provider"
    MODEL = "model"  # the model that answered, else the one asked for
    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"
    TOTAL_TOKENS = "total_tokens"
    CACHE_READ_TOKENS = "cache_read_tokens"  # of the input tokens, read from the provider's prompt cache
    CACHE_WRITE_TOKENS = "cache_write_tokens"  # of the input tokens, written to it
    REASONING_TOKENS = "reasoning_tokens"  # of the output tokens, spent reasoning
    COST = "cost"  # what the call cost, in USD, as the trace says
    INPUT_COST = "input_cost"  # its parts, where a trace gives those instead
    OUTPUT_COST = "output_cost"
    TOOL_NAME = "tool_name"
    TOOL_CALL_ID = "tool_call_id"
    AGENT_NAME = "agent_name"
    ENTITY_NAME = "entity_name"  # Traceloop's name of a workflow, task, agent or tool
    WORKFLOW_NAME = "workflow_name"
    CONVERSATION_ID = "conversation_id"  # the session a span belongs to


ALIASES: Mapping[GenAI, tuple[str, ...]] = MappingProxyType({
    GenAI.OPERATION: ("gen_ai.operation.name", "llm.request.type", "sentry.op"),
    GenAI.SPAN_KIND: ("traceloop.span.kind", "openinference.span.kind", "ai.operationId"),
    GenAI.PROVIDER: ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system", "ai.model.provider"),
    GenAI.MODEL: (
        "gen_ai.response.model", "gen_ai.request.model", "llm.response.model", "llm.request.model",
        "llm.model_name", "ai.response.model", "ai.model.id",
    ),
    GenAI.INPUT_TOKENS: (
        "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens",
        "llm.token_count.prompt", "ai.usage.inputTokens", "ai.usage.promptTokens",
    ),
    GenAI.OUTPUT_TOKENS: (
        "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens",
        "llm.token_count.completion", "ai.usage.outputTokens", "ai.usage.completionTokens",
    ),
    GenAI.TOTAL_TOKENS: (
        "gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total", "ai.usage.totalTokens",
    ),
    # OpenTelemetry GenAI (current, then the spellings before cache_read/cache_creation settled), Sentry, Pydantic
    # AI's details, OpenInference, the Vercel AI SDK v6 and v5, LiteLLM/Anthropic's own names.
    GenAI.CACHE_READ_TOKENS: (
        "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.usage.input_tokens.cached", "gen_ai.usage.details.cache_read_tokens",
        "llm.token_count.prompt_details.cache_read", "ai.usage.inputTokenDetails.cacheReadTokens",
        "ai.usage.cachedInputTokens",
    ),
    GenAI.CACHE_WRITE_TOKENS: (
        "gen_ai.usage.cache_write.input_tokens", "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens", "gen_ai.usage.details.cache_write_tokens",
        "llm.token_count.prompt_details.cache_write", "ai.usage.inputTokenDetails.cacheWriteTokens",
    ),
    GenAI.REASONING_TOKENS: (
        "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens", "gen_ai.usage.output_tokens.reasoning",
        "gen_ai.usage.details.reasoning_tokens", "llm.token_count.completion_details.reasoning",
        "ai.usage.outputTokenDetails.reasoningTokens", "ai.usage.reasoningTokens",
    ),
    # Pydantic AI's `operation.cost`; OpenInference's `llm.cost.*`; Langfuse's and LiteLLM's `gen_ai.usage.cost`;
    # any-agent's input/output parts.
    GenAI.COST: ("gen_ai.usage.cost", "gen_ai.cost.total_cost", "operation.cost", "llm.cost.total"),
    GenAI.INPUT_COST: ("gen_ai.usage.input_cost", "gen_ai.cost.input_cost", "llm.cost.prompt"),
    GenAI.OUTPUT_COST: ("gen_ai.usage.output_cost", "gen_ai.cost.output_cost", "llm.cost.completion"),
    GenAI.TOOL_NAME: ("gen_ai.tool.name", "tool.name", "ai.toolCall.name"),
    GenAI.TOOL_CALL_ID: ("gen_ai.tool.call.id", "tool_call.id", "ai.toolCall.id"),
    # The Vercel AI SDK names no agent: its telemetry's function id is the name a team gives an agent's calls.
    GenAI.AGENT_NAME: ("gen_ai.agent.name", "agent.name", "ai.telemetry.functionId"),
    GenAI.ENTITY_NAME: ("traceloop.entity.name",),
    # `agora.flow`: Agora's `{flow}.flow` spans; `flow_name`: its AuditedFlow (examples/Milvus RAG notebook)
    GenAI.WORKFLOW_NAME: ("gen_ai.workflow.name", "traceloop.workflow.name", "agora.flow", "flow_name"),
    # `custom.session_id`: what Agora's SDK writes (agora/exports/chat.jsonl); Pydantic AI gives a delegated agent's
    # run a conversation of its own and names the one it serves `pydantic_ai.root_conversation_id`; OpenLLMetry
    # carries the run's metadata as association properties; the Vercel AI SDK as telemetry metadata (traces/).
    GenAI.CONVERSATION_ID: (
        "pydantic_ai.root_conversation_id", "gen_ai.conversation.id", "session.id", "custom.session_id",
        "traceloop.association.properties.session_id", "ai.telemetry.metadata.sessionId",
    ),
})

#: Span kinds (lower-cased) and Vercel operation ids that say which GenAI operation a span is.
OPERATION_OF_KIND: Mapping[str, str] = MappingProxyType({
    # OpenInference `openinference.span.kind`, Traceloop `traceloop.span.kind`
    "llm": "chat", "embedding": "embeddings", "tool": "execute_tool", "agent": "invoke_agent",
    # Vercel AI SDK `ai.operationId`: the provider calls and tool calls inside ai.generateText & co.
    "ai.generatetext.dogenerate": "chat", "ai.streamtext.dostream": "chat",
    "ai.generateobject.dogenerate": "chat", "ai.streamobject.dostream": "chat",
    "ai.embed.doembed": "embeddings", "ai.embedmany.doembed": "embeddings", "ai.toolcall": "execute_tool",
})


#: The Vercel AI SDK's calls that run a model in steps (with tools): an agent's run when its telemetry names a
#: function, else framework plumbing around the model calls inside.
AI_SDK_RUNS = frozenset({"ai.generatetext", "ai.streamtext", "ai.generateobject", "ai.streamobject"})

#: Operation names as instrumentations spell them -> the OpenTelemetry GenAI operation they are.
OPERATION_SYNONYMS: Mapping[str, str] = MappingProxyType({
    "call_llm": "chat",  # any-agent (OpenAI Agents SDK, LangChain, LlamaIndex, Google ADK, smolagents…)
    # Sentry's span ops (`sentry.op`) for its AI agents monitoring
    "gen_ai.chat": "chat", "gen_ai.invoke_agent": "invoke_agent", "gen_ai.execute_tool": "execute_tool",
    "gen_ai.handoff": "handoff", "gen_ai.create_agent": "create_agent",
    "completion": "text_completion", "embedding": "embeddings",  # Traceloop `llm.request.type`
})
#: Operations that are a call of a model (its model and usage are the call's own).
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
#: OpenTelemetry GenAI span names are `{operation} {model}`, `execute_tool {tool}`, `invoke_agent {agent}`:
#: the operation a span name starts with, for spans whose attributes do not say it (Strands, Spring AI).
_NAMED_OPERATIONS = frozenset({
    *LLM_OPERATIONS, "execute_tool", "invoke_agent", "create_agent", "invoke_workflow", "plan", "call_llm",
})


def first(attributes: Mapping[str, Any], concept: GenAI) -> Any:
    """The value of the first alias of `concept` present (not None) in `attributes`, else None."""
    return next((attributes[k] for k in ALIASES[concept] if attributes.get(k) is not None), None)


def first_text(attributes: Mapping[str, Any], concept: GenAI, limit: int = 200) -> str | None:
    """The first alias of `concept` holding non-blank text (numbers become text)."""
    return next((t for k in ALIASES[concept] if (t := text(attributes.get(k), limit))), None)


def first_int(attributes: Mapping[str, Any], concept: GenAI) -> int | None:
    """The first alias of `concept` holding a number."""
    return next((n for k in ALIASES[concept] if (n := as_int(attributes.get(k))) is not None), None)


def first_float(attributes: Mapping[str, Any], concept: GenAI) -> float | None:
    """The first alias of `concept` holding a finite number."""
    return next((n for k in ALIASES[concept] if (n := as_float(attributes.get(k))) is not None), None)


def usage_of(calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The usage of model calls (each one's attributes), as `EventRow` fields: each kind of token summed, the first
    provider named, and the cost the calls state (None unless each states one: `canonical.cost` prices the rest)."""
    def total(concept: GenAI) -> int | None:
        counts = [n for c in calls if (n := first_int(c, concept)) is not None]
        return sum(counts) if counts else None

    costs = [stated_cost(c) for c in calls]
    return {
        "input_tokens": total(GenAI.INPUT_TOKENS), "output_tokens": total(GenAI.OUTPUT_TOKENS),
        "cache_read_tokens": total(GenAI.CACHE_READ_TOKENS), "cache_write_tokens": total(GenAI.CACHE_WRITE_TOKENS),
        "reasoning_tokens": total(GenAI.REASONING_TOKENS),
        "provider": next((p for c in calls if (p := first_text(c, GenAI.PROVIDER, 100))), None),
        "cost_usd": sum(c for c in costs if c is not None) if costs and None not in costs else None,
    }


def stated_cost(attributes: Mapping[str, Any]) -> float | None:
    """The cost in USD a span states for its call: in one figure, else as input and output parts."""
    total = first_float(attributes, GenAI.COST)
    if total is not None:
        return total
    parts = [first_float(attributes, GenAI.INPUT_COST), first_float(attributes, GenAI.OUTPUT_COST)]
    return sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None


def span_kind(attributes: Mapping[str, Any]) -> str | None:
    """The span's kind, lower-cased (`tool`, `agent`, `llm`, `workflow`, `ai.toolcall`, ...)."""
    kind = first_text(attributes, GenAI.SPAN_KIND, 100)
    return kind.lower() if kind else None


def operation(attributes: Mapping[str, Any], span_name: str = "") -> str | None:
    """The GenAI operation: as the span states it, else as its kind implies, else as its name starts;
    in OpenTelemetry's spelling (`call_llm` is `chat`)."""
    op = first_text(attributes, GenAI.OPERATION, 100) or OPERATION_OF_KIND.get(span_kind(attributes) or "")
    op = op or _named(span_name)[0]
    return OPERATION_SYNONYMS.get(op.lower(), op) if op else None


def tool_name(attributes: Mapping[str, Any], span_name: str = "") -> str | None:
    """The tool a span calls: named by a tool alias, else the entity of a span of kind `tool`, else the
    name of an `execute_tool <tool>` span."""
    return first_text(attributes, GenAI.TOOL_NAME) or _entity_of_kind(attributes, "tool") or _subject(
        attributes, span_name, "execute_tool")


def agent_name(attributes: Mapping[str, Any], span_name: str = "") -> str | None:
    """The agent a span invokes: named by an agent alias, else the entity of a span of kind `agent`, else
    the name of an `invoke_agent <agent>` span."""
    return first_text(attributes, GenAI.AGENT_NAME) or _entity_of_kind(attributes, "agent") or _subject(
        attributes, span_name, "invoke_agent")


def _named(span_name: str) -> tuple[str | None, str | None]:
    """(`operation`, `subject`) of a span named the OpenTelemetry GenAI way, else (None, None)."""
    head, _, rest = span_name.strip().partition(" ")
    if head not in _NAMED_OPERATIONS:
        return None, None
    return head, rest.strip().strip("[]").strip() or None


def _subject(attributes: Mapping[str, Any], span_name: str, op: str) -> str | None:
    named_op, subject = _named(span_name)
    stated = first_text(attributes, GenAI.OPERATION, 100)
    return text(subject, 200) if named_op == op and stated in (None, op) else None


def _entity_of_kind(attributes: Mapping[str, Any], kind: str) -> str | None:
    return first_text(attributes, GenAI.ENTITY_NAME) if span_kind(attributes) == kind else None

"""Official OTel `opentelemetry-instrumentation-openai-v2` under a hand-made two-agent loop on the plain openai client.

Writes ../openai_v2_otel.jsonl (one line per session). The `chat` spans come from the unmodified instrumentation
(scope `opentelemetry.util.genai.handler`: it emits them through `opentelemetry-util-genai`). The workflow, agent
and tool spans are this script's own, under the scope `support_desk`, named and attributed per the GenAI semantic
conventions (`invoke_workflow`, `invoke_agent {agent}`, `execute_tool {tool}`). Run with
`OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=span_only`
(the script sets both when unset).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
os.environ.setdefault("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")

import scenario as sc
from fake_openai_server import fake_openai_server
from openai import OpenAI
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Status, StatusCode, Tracer
from otlp_json import Capture

OUT = Path(__file__).resolve().parent.parent / "openai_v2_otel.jsonl"
HANDOFF_TOOL = "transfer_to_billing_specialist"


def function(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": list(properties),
                       "additionalProperties": False}}}


TRIAGE_TOOLS = [function(HANDOFF_TOOL, "Handoff to the Billing Specialist agent.", {})]
BILLING_TOOLS = [
    function("lookup_account", sc.LOOKUP_DESCRIPTION, {"customer_email": {"type": "string"}}),
    function("refund_payment", sc.REFUND_DESCRIPTION, {"account_id": {"type": "string"}, "amount": {"type": "number"}}),
]


class SupportDesk:
    def __init__(self, client: OpenAI, tracer: Tracer, fail_refund: bool) -> None:
        self.client = client
        self.tracer = tracer
        self.tools: dict[str, Callable[..., Any]] = {
            HANDOFF_TOOL: lambda: {"assistant": sc.BILLING_NAME},
            "lookup_account": sc.lookup_account_impl,
            "refund_payment": lambda account_id, amount: sc.refund_payment_impl(account_id, amount, fail_refund),
        }
        self.descriptions = {t["function"]["name"]: t["function"]["description"] for t in TRIAGE_TOOLS + BILLING_TOOLS}

    def run(self, session_id: str, user_prompt: str) -> str:
        with self.tracer.start_as_current_span("invoke_workflow Support Desk", attributes={
            gen_ai.GEN_AI_OPERATION_NAME: gen_ai.GenAiOperationNameValues.INVOKE_WORKFLOW.value,
            gen_ai.GEN_AI_WORKFLOW_NAME: "Support Desk",
            gen_ai.GEN_AI_CONVERSATION_ID: session_id,
        }):
            history: list[dict[str, Any]] = [{"role": "user", "content": user_prompt}]
            answer, handed_off = self.agent(session_id, sc.TRIAGE_NAME, sc.TRIAGE_MODEL, sc.TRIAGE_INSTRUCTIONS,
                                            TRIAGE_TOOLS, history)
            if handed_off:
                answer, _ = self.agent(session_id, sc.BILLING_NAME, sc.BILLING_MODEL, sc.BILLING_INSTRUCTIONS,
                                       BILLING_TOOLS, history)
        return answer

    def agent(self, session_id: str, name: str, model: str, instructions: str, tools: list[dict[str, Any]],
              history: list[dict[str, Any]]) -> tuple[str, bool]:
        """Run one agent on the shared history until it answers or hands off; (answer, handed off)."""
        with self.tracer.start_as_current_span(f"invoke_agent {name}", attributes={
            gen_ai.GEN_AI_OPERATION_NAME: gen_ai.GenAiOperationNameValues.INVOKE_AGENT.value,
            gen_ai.GEN_AI_PROVIDER_NAME: "openai",
            gen_ai.GEN_AI_AGENT_NAME: name,
            gen_ai.GEN_AI_REQUEST_MODEL: model,
            gen_ai.GEN_AI_CONVERSATION_ID: session_id,
        }):
            while True:
                completion = self.client.chat.completions.create(
                    model=model, messages=[{"role": "system", "content": instructions}, *history], tools=tools)
                message = completion.choices[0].message
                if not message.tool_calls:
                    history.append({"role": "assistant", "content": message.content})
                    return message.content or "", False
                history.append(message.model_dump(include={"role", "content", "tool_calls"}))
                for call in message.tool_calls:
                    result = self.tool(session_id, name, call.id, call.function.name, call.function.arguments)
                    history.append({"role": "tool", "tool_call_id": call.id, "content": result})
                    if call.function.name == HANDOFF_TOOL:
                        return "", True

    def tool(self, session_id: str, agent_name: str, call_id: str, tool_name: str, arguments: str) -> str:
        """Execute a tool call; its result, or the error, as the text the model gets."""
        with self.tracer.start_as_current_span(f"execute_tool {tool_name}", record_exception=False,
                                               set_status_on_exception=False, attributes={
            gen_ai.GEN_AI_OPERATION_NAME: gen_ai.GenAiOperationNameValues.EXECUTE_TOOL.value,
            gen_ai.GEN_AI_TOOL_NAME: tool_name,
            gen_ai.GEN_AI_TOOL_TYPE: "function",
            gen_ai.GEN_AI_TOOL_DESCRIPTION: self.descriptions[tool_name],
            gen_ai.GEN_AI_TOOL_CALL_ID: call_id,
            gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS: arguments,
            gen_ai.GEN_AI_AGENT_NAME: agent_name,
            gen_ai.GEN_AI_CONVERSATION_ID: session_id,
        }) as span:
            try:
                result = json.dumps(self.tools[tool_name](**json.loads(arguments or "{}")))
            except Exception as exc:
                span.record_exception(exc)
                span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                return f"Error: {type(exc).__name__}: {exc}"
            span.set_attribute(gen_ai.GEN_AI_TOOL_CALL_RESULT, result)
            return result


def main() -> None:
    capture = Capture("support-desk-openai-v2", OUT)
    OpenAIInstrumentor().instrument(tracer_provider=capture.provider)
    tracer = capture.provider.get_tracer("support_desk", "0.1.0")
    with fake_openai_server() as url:
        client = OpenAI(base_url=url, api_key="sk-fake-not-a-real-key")
        for session_id, fail in sc.sessions("openai-v2").items():
            SupportDesk(client, tracer, fail).run(session_id, sc.USER_PROMPT)
            capture.end_session()
    capture.close()


if __name__ == "__main__":
    main()

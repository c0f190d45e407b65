"""LangGraph supervisor + OpenLLMetry: a triage supervisor transfers to a billing ReAct agent with two tools.

Writes ../langgraph_openllmetry.jsonl (one line per session). Instrumented by Traceloop's OpenLLMetry packages
`opentelemetry-instrumentation-langchain` and `opentelemetry-instrumentation-openai` (both, as Traceloop's SDK
would enable them), without the Traceloop SDK itself. The session id travels as LangChain run metadata, which the
LangChain instrumentation records as `traceloop.association.properties.session_id`.

OpenAI function and message names may not contain spaces, so the agents are `triage_agent` and `billing_specialist`
here (langgraph-supervisor names the handoff tool `transfer_to_billing_specialist`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import scenario as sc
from fake_openai_server import fake_openai_server
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import ToolNode, create_react_agent
from langgraph_supervisor import create_supervisor
from opentelemetry.instrumentation.langchain import LangchainInstrumentor
from opentelemetry.instrumentation.openai import OpenAIInstrumentor
from otlp_json import Capture

OUT = Path(__file__).resolve().parent.parent / "langgraph_openllmetry.jsonl"
FAIL_REFUND = {"value": False}


@tool(description=sc.LOOKUP_DESCRIPTION)
def lookup_account(customer_email: str) -> str:
    """Look up a customer's billing account by e-mail address."""
    return json.dumps(sc.lookup_account_impl(customer_email))


@tool(description=sc.REFUND_DESCRIPTION)
def refund_payment(account_id: str, amount: float) -> str:
    """Refund an amount (EUR) to the payment method on file of an account."""
    return json.dumps(sc.refund_payment_impl(account_id, amount, FAIL_REFUND["value"]))


def build_graph(base_url: str) -> Any:
    def model(name: str) -> ChatOpenAI:
        return ChatOpenAI(model=name, base_url=base_url, api_key="sk-fake-not-a-real-key", temperature=0)

    # handle_tool_errors=True: the refund error goes back to the model as a ToolMessage (the default re-raises it).
    billing = create_react_agent(model(sc.BILLING_MODEL),
                                 ToolNode([lookup_account, refund_payment], handle_tool_errors=True),
                                 prompt=sc.BILLING_INSTRUCTIONS, name="billing_specialist")
    supervisor = create_supervisor([billing], model=model(sc.TRIAGE_MODEL), prompt=sc.TRIAGE_INSTRUCTIONS,
                                   supervisor_name="triage_agent")
    return supervisor.compile(name="support_desk")


def main() -> None:
    capture = Capture("support-desk-langgraph", OUT)
    LangchainInstrumentor().instrument(tracer_provider=capture.provider)
    OpenAIInstrumentor().instrument(tracer_provider=capture.provider)
    with fake_openai_server() as url:
        graph = build_graph(url)
        for session_id, fail in sc.sessions("langgraph").items():
            FAIL_REFUND["value"] = fail
            graph.invoke({"messages": [HumanMessage(sc.USER_PROMPT)]},
                         config={"metadata": {"session_id": session_id}, "run_name": "support_desk"})
            capture.end_session()
    capture.close()


if __name__ == "__main__":
    main()

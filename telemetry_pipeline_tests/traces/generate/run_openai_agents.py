"""OpenAI Agents SDK + OpenInference: triage agent hands off to a billing agent with two function tools.

Writes ../openai_agents_openinference.jsonl (one line per session). The SDK talks to the fake server through its
default Responses API; OpenInference replaces the SDK's own trace processor (its default, exclusive mode), so
nothing is sent anywhere else.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import scenario as sc
from agents import Agent, RunConfig, RunContextWrapper, Runner, function_tool, set_default_openai_client
from fake_openai_server import fake_openai_server
from openai import AsyncOpenAI
from openinference.instrumentation import using_session
from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor
from otlp_json import Capture

OUT = Path(__file__).resolve().parent.parent / "openai_agents_openinference.jsonl"
FAIL_REFUND = {"value": False}


@function_tool(description_override=sc.LOOKUP_DESCRIPTION)
def lookup_account(customer_email: str) -> str:
    """Look up a customer's billing account.

    Args:
        customer_email: The customer's e-mail address.
    """
    return json.dumps(sc.lookup_account_impl(customer_email))


def report_tool_error(ctx: RunContextWrapper[Any], error: Exception) -> str:
    """Tell the model what failed (the SDK's default message hides it, and then redacts it in the trace too)."""
    return f"Error: {type(error).__name__}: {error}"


@function_tool(description_override=sc.REFUND_DESCRIPTION, failure_error_function=report_tool_error)
def refund_payment(account_id: str, amount: float) -> str:
    """Refund an amount to an account.

    Args:
        account_id: The account id, e.g. ACC-1042.
        amount: The amount in EUR.
    """
    return json.dumps(sc.refund_payment_impl(account_id, amount, FAIL_REFUND["value"]))


billing_agent = Agent(name=sc.BILLING_NAME, instructions=sc.BILLING_INSTRUCTIONS, model=sc.BILLING_MODEL,
                      handoff_description="Handles charges, invoices and refunds.",
                      tools=[lookup_account, refund_payment])
triage_agent = Agent(name=sc.TRIAGE_NAME, instructions=sc.TRIAGE_INSTRUCTIONS, model=sc.TRIAGE_MODEL,
                     handoffs=[billing_agent])


async def run_sessions(base_url: str, capture: Capture) -> None:
    set_default_openai_client(AsyncOpenAI(base_url=base_url, api_key="sk-fake-not-a-real-key"), use_for_tracing=False)
    for session_id, fail in sc.sessions("openai-agents").items():
        FAIL_REFUND["value"] = fail
        with using_session(session_id):
            await Runner.run(triage_agent, sc.USER_PROMPT,
                             run_config=RunConfig(workflow_name="Support Desk", group_id=session_id))
        capture.end_session()


def main() -> None:
    capture = Capture("support-desk-openai-agents", OUT)
    OpenAIAgentsInstrumentor().instrument(tracer_provider=capture.provider)
    with fake_openai_server() as url:
        asyncio.run(run_sessions(url, capture))
    capture.close()


if __name__ == "__main__":
    main()

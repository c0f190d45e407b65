"""Pydantic AI with its built-in OpenTelemetry instrumentation: a triage agent delegates to a billing agent.

Writes ../pydantic_ai.jsonl (one line per session). Agent delegation as Pydantic AI's multi-agent docs show it: the
triage agent's tool `ask_billing_specialist` runs the billing agent (`usage=ctx.usage`). Instrumented with
`Agent.instrument_all(InstrumentationSettings(version=6))` (the newest data format) on a plain OTel tracer provider,
no Logfire. The triage run gets the session id as `conversation_id`. `refund_payment` raises in the first session;
the exception ends the billing agent's run, and the delegation tool reports it to the triage agent, which answers.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import scenario as sc
from fake_openai_server import fake_openai_server
from otlp_json import Capture
from pydantic_ai import Agent, RunContext
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

OUT = Path(__file__).resolve().parent.parent / "pydantic_ai.jsonl"


def build_agents(base_url: str, fail_refund: bool) -> Agent[None, str]:
    provider = OpenAIProvider(base_url=base_url, api_key="sk-fake-not-a-real-key")
    billing = Agent(OpenAIChatModel(sc.BILLING_MODEL, provider=provider), name=sc.BILLING_NAME,
                    instructions=sc.BILLING_INSTRUCTIONS)
    triage = Agent(OpenAIChatModel(sc.TRIAGE_MODEL, provider=provider), name=sc.TRIAGE_NAME,
                   instructions=sc.TRIAGE_INSTRUCTIONS)

    @billing.tool_plain(description=sc.LOOKUP_DESCRIPTION)
    def lookup_account(customer_email: str) -> str:
        return json.dumps(sc.lookup_account_impl(customer_email))

    @billing.tool_plain(description=sc.REFUND_DESCRIPTION)
    def refund_payment(account_id: str, amount: float) -> str:
        return json.dumps(sc.refund_payment_impl(account_id, amount, fail_refund))

    @triage.tool(description="Hand a billing request (charges, invoices, refunds) to the Billing Specialist.")
    async def ask_billing_specialist(ctx: RunContext[None], request: str) -> str:
        try:
            result = await billing.run(request, usage=ctx.usage)
        except Exception as exc:
            return f"The Billing Specialist failed: {type(exc).__name__}: {exc}"
        return result.output

    return triage


async def run_sessions(base_url: str, capture: Capture) -> None:
    Agent.instrument_all(InstrumentationSettings(tracer_provider=capture.provider, version=6))
    for session_id, fail in sc.sessions("pydantic-ai").items():
        triage = build_agents(base_url, fail)
        await triage.run(sc.USER_PROMPT, conversation_id=session_id)
        capture.end_session()


def main() -> None:
    capture = Capture("support-desk-pydantic-ai", OUT)
    with fake_openai_server() as url:
        asyncio.run(run_sessions(url, capture))
    capture.close()


if __name__ == "__main__":
    main()

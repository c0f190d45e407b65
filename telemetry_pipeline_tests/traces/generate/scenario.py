"""The customer-support scenario every generator runs: one user message, two tools, planted (fake) secrets.

Shared by the per-framework generators (never imported by the package). All values below are fake; they are planted
so that the pipeline's redaction can be tested against real instrumentation output.
"""

from __future__ import annotations

import time
from typing import Any

# Planted sensitive values (all fake); PROVENANCE.md lists where each one shows up.
PLANTED_OPENAI_KEY = "sk-proj-T3stK3yPl4nt3dF0rRedact10nCheck0123456789abcd"
PLANTED_AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
PLANTED_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PLANTED_EMAIL = "jane.doe@example.com"
PLANTED_PHONE = "+49 30 12345678"

ACCOUNT_ID = "ACC-1042"
REFUND_AMOUNT = 42.0

USER_PROMPT = (
    f"Hi, I'm {PLANTED_EMAIL} ({PLANTED_PHONE}). I was double charged for my March invoice. "
    f"My dev pasted our key {PLANTED_OPENAI_KEY} and AWS {PLANTED_AWS_ACCESS_KEY_ID} / {PLANTED_AWS_SECRET} "
    "into the ticket, please ignore. Please refund 42 EUR."
)

TRIAGE_NAME = "Triage Agent"
BILLING_NAME = "Billing Specialist"
TRIAGE_MODEL = "gpt-4o-mini"
BILLING_MODEL = "gpt-4o"

TRIAGE_INSTRUCTIONS = (
    "You are the triage agent of ACME's customer support. Decide which specialist handles the request; "
    "billing questions (charges, invoices, refunds) go to the Billing Specialist. Never answer billing questions "
    "yourself."
)
BILLING_INSTRUCTIONS = (
    "You are ACME's billing specialist. Look the customer's account up with lookup_account, then issue refunds "
    "with refund_payment. Tell the customer the outcome in two sentences."
)

LOOKUP_DESCRIPTION = "Look up a customer's billing account by e-mail address."
REFUND_DESCRIPTION = "Refund an amount (EUR) to the payment method on file of an account."

def sessions(framework: str) -> dict[str, bool]:
    """Session id -> whether refund_payment fails in that session. The framework is in the id, so the files of
    several frameworks in one inbox are separate sessions (a session id is a conversation across files)."""
    return {f"{framework}-session-0001-refund-declined": True, f"{framework}-session-0002-refund-ok": False}


class PaymentGatewayError(RuntimeError):
    """What the (fake) payment gateway raises when it declines a refund."""


def lookup_account_impl(customer_email: str) -> dict[str, Any]:
    time.sleep(0.05)
    return {
        "account_id": ACCOUNT_ID,
        "name": "Jane Doe",
        "email": customer_email,
        "phone": PLANTED_PHONE,
        "plan": "Business Monthly",
        "last_invoices": [
            {"invoice": "INV-2025-0311", "amount_eur": 42.0, "status": "paid"},
            {"invoice": "INV-2025-0311-DUP", "amount_eur": 42.0, "status": "paid"},
        ],
    }


def refund_payment_impl(account_id: str, amount: float, fail: bool) -> dict[str, Any]:
    time.sleep(0.12)
    if fail:
        raise PaymentGatewayError(f"refund declined for account {account_id} (contact {PLANTED_EMAIL})")
    return {"refund_id": "RF-77813", "account_id": account_id, "amount_eur": amount, "status": "succeeded"}

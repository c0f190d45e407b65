"""What agents, tools and models exist: a small vocabulary with enough variety for process mining."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tool:
    name: str
    category: str
    median_ms: int
    failure_rate: float
    parameters: Mapping[str, tuple[Any, ...]]  # each parameter takes one of these values


@dataclass(frozen=True)
class Step:
    name: str
    tools: tuple[str, ...]


@dataclass(frozen=True)
class Workflow:
    service_name: str
    workflow_name: str
    agent_type: str
    versions: tuple[str, ...]  # newest first; the newest is the most common
    models: tuple[str, ...]
    steps: tuple[Step, ...]
    prompts: tuple[str, ...]
    follow_ups: tuple[str, ...]
    responses: tuple[str, ...]  # responses[i] answers prompts[i]

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.responses):
            raise ValueError(f"{self.workflow_name}: every prompt needs its response")


@dataclass(frozen=True)
class Model:
    name: str
    provider: str  # OpenTelemetry's gen_ai.provider.name
    context_length: int
    usd_per_m_input: float
    usd_per_m_output: float
    ms_per_output_token: float


MODELS = {
    m.name: m
    for m in (
        Model("gpt-4o", "openai", 128_000, 2.50, 10.00, 12.0),
        Model("gpt-4o-mini", "openai", 128_000, 0.15, 0.60, 6.0),
        Model("claude-sonnet-4", "anthropic", 200_000, 3.00, 15.00, 14.0),
        Model("claude-3-5-haiku", "anthropic", 200_000, 0.80, 4.00, 7.0),
        Model("llama-3.1-70b", "meta", 128_000, 0.88, 0.88, 18.0),
    )
}

TOOLS = {
    t.name: t
    for t in (
        Tool("search_knowledge_base", "retrieval", 180, 0.08,
             {"query": ("password reset", "refund policy", "sso setup", "billing cycle"), "top_k": (3, 5, 10)}),
        Tool("lookup_customer", "retrieval", 120, 0.09, {"customer_id": ("C-1042", "C-2291", "C-3107", "C-4410")}),
        Tool("create_ticket", "action", 420, 0.12,
             {"priority": ("low", "normal", "high"), "queue": ("billing", "technical", "account")}),
        Tool("send_email", "communication", 650, 0.10, {"template": ("resolution", "follow_up", "escalation")}),
        Tool("read_file", "retrieval", 40, 0.08,
             {"path": ("src/app/api.py", "src/app/models.py", "tests/test_api.py", "README.md")}),
        Tool("run_tests", "compute", 4200, 0.15, {"selector": ("tests/", "tests/test_api.py", "-k auth")}),
        Tool("git_diff", "retrieval", 90, 0.08, {"base": ("main", "HEAD~1")}),
        Tool("apply_patch", "action", 260, 0.13, {"files_changed": (1, 2, 3)}),
        Tool("web_search", "retrieval", 900, 0.10,
             {"query": ("eu ai act obligations", "market size process mining", "competitor pricing"),
              "max_results": (5, 10)}),
        Tool("fetch_url", "retrieval", 1300, 0.14, {"url": ("https://example.com/report", "https://example.org/news")}),
        Tool("summarize_document", "compute", 2100, 0.09, {"max_words": (150, 300, 500)}),
        Tool("write_report", "action", 1600, 0.08, {"format": ("markdown", "pdf")}),
        Tool("fetch_invoice", "retrieval", 300, 0.09, {"invoice_id": ("INV-88012", "INV-88347", "INV-90115")}),
        Tool("query_erp", "retrieval", 750, 0.12, {"table": ("BSEG", "EKKO", "LFA1"), "fiscal_year": (2025, 2026)}),
        Tool("match_purchase_order", "compute", 520, 0.11, {"tolerance_pct": (0.5, 1.0, 2.0)}),
        Tool("post_journal_entry", "action", 880, 0.14, {"company_code": ("1000", "2000"), "currency": ("EUR", "USD")}),
        Tool("notify_approver", "communication", 400, 0.08, {"channel": ("email", "teams")}),
        Tool("lookup_crm", "retrieval", 220, 0.09, {"account": ("Acme GmbH", "Globex Ltd", "Initech AG")}),
        Tool("enrich_company", "retrieval", 1100, 0.15, {"provider": ("clearbit", "crunchbase")}),
        Tool("score_lead", "compute", 300, 0.08, {"model_version": ("v3", "v4")}),
        Tool("update_crm", "action", 350, 0.10, {"stage": ("qualified", "nurture", "disqualified")}),
        Tool("schedule_meeting", "communication", 700, 0.12, {"duration_min": (30, 45, 60)}),
    )
}

# Data, not logic: `duplicates` pairs these entries by their shape (each workflow written out in full, so a reader
# sees what the simulator generates).
WORKFLOWS = (
    Workflow(
        "support-desk", "ticket_triage", "support_agent", ("2.3.0", "2.2.1"), ("gpt-4o", "gpt-4o-mini"),
        (Step("understand_request", ("search_knowledge_base", "lookup_customer")),
         Step("resolve", ("search_knowledge_base", "create_ticket")),
         Step("respond", ("send_email", "create_ticket"))),
        ("I can't log in after the password reset, please help.",
         "Why was I charged twice this month?",
         "How do I set up SSO for my team?",
         "Please cancel my subscription and refund the last invoice."),
        ("Can you also send me a confirmation by email?", "It still does not work, can you escalate?"),
        ("I reset your credentials and sent a confirmation email.",
         "I opened a billing ticket; the duplicate charge will be refunded within 5 days.",
         "Here are the SSO setup steps for your identity provider.",
         "Your subscription is cancelled and the last invoice refunded."),
    ),
    Workflow(
        "code-assistant", "bug_fix", "coding_agent", ("1.8.0", "1.7.3", "1.7.0"), ("claude-sonnet-4", "gpt-4o"),
        (Step("investigate", ("read_file", "git_diff", "read_file")),
         Step("fix", ("apply_patch", "read_file")),
         Step("verify", ("run_tests", "git_diff"))),
        ("The /users endpoint returns 500 when the email is missing, fix it.",
         "Tests in test_api.py started failing after the last merge.",
         "Add input validation to the order creation API."),
        ("Please also add a regression test.", "Can you keep the public signature unchanged?"),
        ("Fixed the missing-email case and all tests pass.",
         "Reverted the faulty change in models.py; the suite is green again.",
         "Added validation with clear error messages and tests."),
    ),
    Workflow(
        "research-hub", "market_research", "research_agent", ("0.9.2", "0.9.0"), ("claude-sonnet-4", "llama-3.1-70b"),
        (Step("search", ("web_search", "fetch_url")),
         Step("analyse", ("summarize_document", "fetch_url")),
         Step("report", ("write_report",))),
        ("Summarise what the EU AI Act requires from agent vendors.",
         "How big is the process mining market and who leads it?",
         "Compare our pricing with the three main competitors."),
        ("Add sources for each claim, please.", "Can you shorten it to one page?"),
        ("Report ready: obligations grouped by risk class, with sources.",
         "Market overview written; leaders and growth rates are in section 2.",
         "Pricing comparison table attached to the report."),
    ),
    Workflow(
        "finance-ops", "invoice_reconciliation", "finance_agent", ("3.1.0", "3.0.4"), ("gpt-4o", "claude-3-5-haiku"),
        (Step("collect", ("fetch_invoice", "query_erp")),
         Step("match", ("match_purchase_order", "query_erp")),
         Step("book", ("post_journal_entry", "notify_approver"))),
        ("Reconcile invoice INV-88012 against its purchase order.",
         "Why is vendor Globex's invoice blocked for payment?",
         "Book the open March invoices for company code 1000."),
        ("Please notify the approver as well.", "Use a 2% price tolerance instead."),
        ("Invoice matched within tolerance and posted; approver notified.",
         "The invoice is blocked by a quantity variance on line 3.",
         "Posted 12 invoices; 2 need manual review."),
    ),
    Workflow(
        "sales-crm", "lead_qualification", "sales_agent", ("1.2.0", "1.1.0"), ("gpt-4o-mini", "llama-3.1-70b"),
        (Step("research_lead", ("lookup_crm", "enrich_company")),
         Step("qualify", ("score_lead", "enrich_company")),
         Step("follow_up", ("update_crm", "schedule_meeting"))),
        ("Qualify the new inbound lead from Acme GmbH.",
         "Is Initech worth a sales call this quarter?",
         "Update the pipeline for the leads from yesterday's webinar."),
        ("Book a meeting with them next week.", "Also mark the duplicates as disqualified."),
        ("Acme scores 82/100; meeting booked for Tuesday.",
         "Initech is a poor fit right now; marked as nurture.",
         "Pipeline updated for 14 webinar leads."),
    ),
)

THOUGHTS = (
    "I need more context before acting.",
    "The previous result answers part of the question.",
    "Checking whether the data is consistent before continuing.",
    "Choosing the cheapest tool that can answer this.",
)
MEMORY_KEYS = ("user_profile", "conversation_summary", "intermediate_results", "plan")
# (error, details, whether it is a timeout): a timeout takes the tool's full timeout.
ERRORS = (
    ("TimeoutError", "no response within 10000 ms", True),
    ("HTTPError", "upstream returned 503 Service Unavailable", False),
    ("RateLimitError", "429 Too Many Requests, retry after 2 s", False),
    ("ValidationError", "parameter rejected by the tool's schema", False),
    ("PermissionError", "service account lacks access to this resource", False),
)
TOOL_TIMEOUT_MS = 10_000

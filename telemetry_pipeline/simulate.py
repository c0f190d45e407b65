"""A loopback server that serves generated agent telemetry, for demos (`make run`) and the benchmark.

It speaks the `extract` and `agent_telemetry` contracts plus their session discovery (SOURCES.md) on one
port, so both sources can point at `Simulator.url`; Agora's execution endpoints are served there too.
Nothing is precomputed: a session's events are generated on request from `(seed, session index)`, which
keeps a 10,000-session server as cheap to start as a 10-session one and makes every body byte-identical
for the same `(seed, sessions, events)`.

Session `i` belongs to `extract` when `i` is even (`sim-ex-000042`) and to `agent_telemetry` when odd
(`sim-at-000043`). Session end times grow strictly with `i`, so "ordered by (last_event_at, session_id)"
is index order and `since` is a binary search, never a scan.
"""

from __future__ import annotations

import base64
import bisect
import binascii
import datetime as dt
import itertools
import json
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

EXTRACT = "extract"
AGENT_TELEMETRY = "agent_telemetry"
SOURCES = (EXTRACT, AGENT_TELEMETRY)
_ID_PREFIX = {EXTRACT: "sim-ex-", AGENT_TELEMETRY: "sim-at-"}
_PARITY = {EXTRACT: 0, AGENT_TELEMETRY: 1}

# Without live sessions the newest session ends at this fixed instant, so bodies never depend on the
# wall clock; it lies in the past, so every session is already "finished" when the server starts.
FIXED_ANCHOR = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SESSION_SPACING_MS = 60_000  # one session ends about every minute
LIVE_SETTLED_MS = 10 * 60_000  # in live mode, history ends this long before start (already finished)
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class SimulationConfig:
    """What to serve. Same values (with `live_rate == 0`) → byte-identical responses."""

    sessions: int = 200
    events_per_session: int = 30
    seed: int = 7
    live_rate: float = 0.0  # new sessions per minute after start; 0 = a fixed population

    def __post_init__(self) -> None:
        if self.sessions < 0:
            raise ValueError("sessions must be >= 0")
        if self.events_per_session < 1:
            raise ValueError("events_per_session must be >= 1")
        if self.live_rate < 0:
            raise ValueError("live_rate must be >= 0")


# --------------------------------------------------------------------------------------------------
# When sessions end


@dataclass(frozen=True)
class Timeline:
    """End time (epoch ms) of every session index, strictly increasing with the index.

    History (the first `sessions` indexes) ends at `anchor_ms`, one session per spacing going back.
    In live mode (`live_interval_ms > 0`) later indexes end one interval apart after `live_start_ms`
    and become visible once their end time has passed.
    """

    sessions: int
    seed: int
    anchor_ms: int
    live_start_ms: int = 0
    live_interval_ms: int = 0

    @classmethod
    def fixed(cls, config: SimulationConfig) -> Timeline:
        return cls(config.sessions, config.seed, int(FIXED_ANCHOR.timestamp() * 1000))

    @classmethod
    def live(cls, config: SimulationConfig, now_ms: int) -> Timeline:
        interval = max(1, round(60_000 / config.live_rate))
        return cls(config.sessions, config.seed, now_ms - LIVE_SETTLED_MS, now_ms, interval)

    def end_ms(self, index: int) -> int:
        if index >= self.sessions:
            return self.live_start_ms + (index - self.sessions + 1) * self.live_interval_ms
        # Jitter below half a spacing keeps ends strictly increasing while avoiding a metronome.
        jitter = random.Random(f"{self.seed}:{index}:end").randrange(SESSION_SPACING_MS // 2)
        return self.anchor_ms - (self.sessions - 1 - index) * SESSION_SPACING_MS - jitter

    def visible_count(self, now_ms: int) -> int:
        if self.live_interval_ms <= 0 or now_ms < self.live_start_ms:
            return self.sessions
        return self.sessions + (now_ms - self.live_start_ms) // self.live_interval_ms


# --------------------------------------------------------------------------------------------------
# What agents, tools and models exist (a small vocabulary with enough variety for process mining)


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


# --------------------------------------------------------------------------------------------------
# Generating one session


Run = list[tuple[int, str, dict[str, Any]]]  # (epoch ms, event type, payload)


def session_id(index: int) -> str:
    return f"{_ID_PREFIX[source_of(index)]}{index:06d}"


def source_of(index: int) -> str:
    return EXTRACT if index % 2 == 0 else AGENT_TELEMETRY


def generate_events(config: SimulationConfig, index: int, timeline: Timeline | None = None) -> list[dict[str, Any]]:
    """The events of session `index`: pure, deterministic per `(config, index)` (and the timeline)."""
    timeline = timeline or Timeline.fixed(config)
    _, run = _run(f"{config.seed}:{index}", config.events_per_session, timeline.end_ms(index))
    sid = session_id(index)
    return [
        {"timestamp": format_ms(at), "session_id": sid, "type": kind, "payload": payload} for at, kind, payload in run
    ]


def _run(key: str, n: int, end_ms: int) -> tuple[_RunBuilder, Run]:
    """A run of `n` events from the random stream `key`, ending exactly at `end_ms`."""
    builder = _RunBuilder(random.Random(key))
    relative = builder.build(n)
    shift = end_ms - relative[-1][0]
    return builder, [(shift + offset, kind, payload) for offset, kind, payload in relative]


class _RunBuilder:
    """Builds one agent run as exactly `n` events of `(offset_ms, type, payload)`.

    Shape: user prompt → planning → tool calls walking through the workflow's steps in order (with
    retries after failures, some parallel calls, thoughts and memory writes) → summarising → response.
    Optional parts are dropped when `n` is small so the count is always exact.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.workflow = rng.choice(WORKFLOWS)
        self.version = self.workflow.versions[0] if rng.random() < 0.7 else rng.choice(self.workflow.versions[1:])
        self.request = rng.randrange(len(self.workflow.prompts))
        self.events: Run = []  # offsets from 0 until `_run` shifts them
        self.now = 0
        self.model: str | None = None
        self.state = "idle"
        self.prompt_at = 0
        self.step = self.workflow.steps[0]
        self.finished_tools: list[str] = []  # successful tools of earlier steps: the next step's inputs
        self.step_tools: list[str] = []
        self.retry: str | None = None
        self.last_failed = False

    def build(self, n: int) -> Run:
        self._user_prompt(self.workflow.prompts[self.request], first=True)
        if n == 1:
            return self.events
        middle = n - 2
        head = [part for part, needs in (("planning", 6), ("model", 1), ("executing", 8)) if middle >= needs]
        tail = [part for part, needs in (("summarising", 7), ("responding", 6)) if middle >= needs]
        for part in head:
            self._fixed_part(part)
        self._body(middle - len(head) - len(tail))
        for part in tail:
            self._fixed_part(part)
        self._response(final=True)
        return self.events

    # -- structure

    def _fixed_part(self, part: str) -> None:
        if part == "model":
            self._model_change("planning")
        elif part == "summarising":
            self._model_change("summarization")
        else:
            self._state_change(part)

    def _body(self, n: int) -> None:
        """Fill exactly `n` events; the step follows progress so every run visits the steps in order."""
        follow_up_at = int(n * 0.6) if n >= 14 and self.rng.random() < 0.25 else None
        done = 0
        while done < n:
            self._enter_step(self.workflow.steps[done * len(self.workflow.steps) // n])
            left = n - done
            if follow_up_at is not None and done >= follow_up_at and left >= 4:
                self._response(final=False)
                self._user_prompt(self.rng.choice(self.workflow.follow_ups), first=False)
                follow_up_at = None
                done += 2
                continue
            done += self._block(left)

    def _block(self, left: int) -> int:
        """One unit of work that fits in `left` events; returns how many events it added."""
        if left == 1:
            self._single()
            return 1
        if self.retry is not None:
            tool, self.retry = self.retry, None
            self._tool_call(tool)
            return 2
        roll = self.rng.random()
        if roll < 0.12 and left >= 4 and len(set(self.step.tools)) >= 2:
            self._parallel_calls()
            return 4
        if roll < 0.72:
            self._tool_call(self.rng.choice(self.step.tools))
            return 2
        self._single()
        return 1

    def _single(self) -> None:
        roll = self.rng.random()
        if roll < 0.45:
            self._thought()
        elif roll < 0.7:
            self._memory_write()
        elif roll < 0.85 and self.last_failed:
            self._state_change("reflecting")
        else:
            self._model_change("tool_selection")

    def _enter_step(self, step: Step) -> None:
        if step is not self.step:
            self.finished_tools.extend(self.step_tools)
            # A failure at the end of a step is not retried in the next one: the agent moved on.
            self.step, self.step_tools, self.retry = step, [], None

    # -- events

    def _emit(self, kind: str, payload: dict[str, Any], at: int | None = None) -> None:
        """Append at `at`, or after a short pause of the agent's own bookkeeping."""
        self.now = at if at is not None else self._next_time()
        self.events.append((self.now, kind, payload))

    def _next_time(self) -> int:
        return self.now + self.rng.randint(15, 400)

    def _user_prompt(self, prompt: str, first: bool) -> None:
        wf = self.workflow
        payload: dict[str, Any] = {"prompt": prompt, "tokens": _token_count(prompt, self.rng)}
        if first:
            payload |= {"service_name": wf.service_name, "workflow_name": wf.workflow_name,
                        "workflow_version": self.version, "agent_type": wf.agent_type}
        self.now += self.rng.randint(2_000, 20_000)  # the user reads and types
        self._emit("user_prompt", payload, at=self.now)
        self.prompt_at = self.now

    def _response(self, final: bool) -> None:
        failed = final and self.last_failed
        answer = self.workflow.responses[self.request]
        text = ("Sorry, I could not finish: a required tool kept failing." if failed
                else answer if final else f"First results: {answer}")
        state = "failed" if failed else "completed" if final else "waiting_for_user"
        at = self._next_time()
        payload = {"response": text, "tokens": _token_count(text, self.rng), "latency_ms": at - self.prompt_at,
                   "agent_state": state}
        self._emit("agent_response", payload, at=at)

    def _state_change(self, state: str) -> None:
        self._emit("agent_state_change", {"agent_state": state, "previous_state": self.state})
        self.state = state

    def _model_change(self, purpose: str) -> None:
        model = MODELS[self.rng.choice(self.workflow.models)]
        input_tokens = self.rng.randint(600, 6_000) + 40 * len(self.events)  # context grows with the run
        output_tokens = self.rng.randint(40, 900)
        payload: dict[str, Any] = {
            "model": model.name, "purpose": purpose, "temperature": self.rng.choice((0.0, 0.2, 0.3, 0.7)),
            "input_tokens": input_tokens, "output_tokens": output_tokens,
            "cost": round((input_tokens * model.usd_per_m_input + output_tokens * model.usd_per_m_output) / 1e6, 6),
            "context_length": model.context_length,
        }
        if self.model is not None:
            payload["previous_model"] = self.model
        self._emit("model_change", payload)
        self.model = model.name
        # The model's generation time passes before the agent's next move.
        self.now += 250 + int(output_tokens * model.ms_per_output_token)

    # Only tool calls carry `step_name`: the normaliser names an instant event after its step, which would
    # blur thoughts, memory writes and state changes into one activity per step.

    def _thought(self) -> None:
        self._emit("agent_thought", {"thought": self.rng.choice(THOUGHTS)})

    def _memory_write(self) -> None:
        size = self.rng.randint(200, 20_000)
        self._emit("memory_write", {"memory_key": self.rng.choice(MEMORY_KEYS), "size_bytes": size})

    def _tool_call(self, name: str) -> None:
        self._emit("tool_call_started", self._started_payload(name, parallel=False))
        latency, completed = self._outcome(name)
        self._emit("tool_call_completed", completed, at=self.now + latency)

    def _parallel_calls(self) -> None:
        """Two different tools in flight at once; completions are emitted in the order they finish."""
        first, second = self.rng.sample(sorted(set(self.step.tools)), 2)
        self._emit("tool_call_started", self._started_payload(first, parallel=True))
        start_first = self.now
        self._emit("tool_call_started", self._started_payload(second, parallel=True),
                   at=self.now + self.rng.randint(1, 40))
        start_second = self.now
        ends = []
        for name, started in ((first, start_first), (second, start_second)):
            latency, completed = self._outcome(name)
            ends.append((started + latency, started, completed))
        ends.sort(key=lambda end: end[0])
        for finish, started, completed in ends:
            finish = max(finish, self.now + 1)  # strictly increasing timestamps, even on a tie
            completed["latency_ms"] = finish - started
            self._emit("tool_call_completed", completed, at=finish)

    def _started_payload(self, name: str, parallel: bool) -> dict[str, Any]:
        tool = TOOLS[name]
        payload: dict[str, Any] = {
            "tool_name": name,
            "parameters": {key: self.rng.choice(values) for key, values in tool.parameters.items()},
            "category": tool.category,
            "step_name": self.step.name,
        }
        if not self.step_tools and self.finished_tools:
            # Until this step has a result of its own, it works from what the earlier steps produced.
            payload["dependencies"] = sorted(set(self.finished_tools[-2:]))
        if parallel:
            payload["parallel"] = True
        return payload

    def _outcome(self, name: str) -> tuple[int, dict[str, Any]]:
        """(latency_ms, completed payload); a failure is retried next with probability 0.6."""
        tool = TOOLS[name]
        latency = max(5, int(self.rng.lognormvariate(math.log(tool.median_ms), 0.45)))
        payload: dict[str, Any] = {"tool_name": name, "success": True, "latency_ms": latency,
                                   "step_name": self.step.name}
        self.last_failed = self.rng.random() < tool.failure_rate
        if self.last_failed:
            error, details, is_timeout = self.rng.choice(ERRORS)
            latency = TOOL_TIMEOUT_MS + self.rng.randint(0, 50) if is_timeout else max(5, latency // 4)
            payload |= {"success": False, "latency_ms": latency, "error": error, "error_details": details}
            if self.rng.random() < 0.6:
                self.retry = name
        else:
            self.step_tools.append(name)
        return latency, payload


def _token_count(text: str, rng: random.Random) -> int:
    # Roughly 4/3 tokens per word, with tokenizer noise.
    return len(text.split()) * 4 // 3 + rng.randint(0, 5)


def format_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. `2025-12-31T23:59:01.042Z`."""
    # gmtime + strftime is several times faster than datetime here, and this runs once per event.
    seconds, millis = divmod(epoch_ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def session_summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The Extract service's per-session figures, computed from the events themselves."""
    prompts = [e["payload"] for e in events if e["type"] == "user_prompt"]
    started = [e for e in events if e["type"] == "tool_call_started"]
    completed = [e["payload"] for e in events if e["type"] == "tool_call_completed"]
    successes = sum(1 for p in completed if p["success"])
    responses = [e["payload"] for e in events if e["type"] == "agent_response"]
    first = prompts[0]
    return {
        "metrics": {
            "user_prompt_count": len(prompts),
            "tool_call_count": len(completed),
            "tool_call_started_count": len(started),
            "tool_success_count": successes,
            "tool_error_count": len(completed) - successes,
            "tool_success_rate": round(successes / len(completed), 4) if completed else 0.0,
            "avg_tool_latency_ms": _mean([p["latency_ms"] for p in completed]),
            "model_change_count": sum(1 for e in events if e["type"] == "model_change"),
            "last_user_prompt": prompts[-1]["prompt"],
        },
        "service_name": first["service_name"],
        "workflow_name": first["workflow_name"],
        "agent_type": first["agent_type"],
        "prompt_count": len(prompts),
        "total_prompt_tokens": sum(p["tokens"] for p in prompts),
        "total_response_tokens": sum(p["tokens"] for p in responses),
        "avg_prompt_latency_ms": _mean([p["latency_ms"] for p in responses]),
    }


def _mean(values: list[int]) -> float:
    return round(sum(values) / len(values), 1) if values else 0.0


# --------------------------------------------------------------------------------------------------
# Agora: workflow executions made of nodes, built from the same kind of run


AGORA_RUNNING = 2  # the newest executions are still running, so a client must skip them


@dataclass(frozen=True)
class _Node:
    name: str
    node_type: str  # "llm" (planning, answering) or "tool" (a workflow step)
    run: Run
    start_ms: int


@dataclass(frozen=True)
class _Execution:
    id: str
    index: int
    workflow: Workflow
    run: Run
    nodes: list[_Node]
    running: bool

    @property
    def finished_nodes(self) -> list[_Node]:
        return self.nodes[:-1] if self.running else self.nodes


def agora_count(config: SimulationConfig) -> int:
    return config.sessions // 4


def agora_execution_id(seed: int, index: int) -> str:
    # The index is spelled inside the UUID, so looking an execution up needs no table.
    return f"{seed & 0xFFFFFFFF:08x}-5157-4000-8000-{index:012x}"


def _agora_index(seed: int, execution_id: str, count: int) -> int:
    head, _, tail = execution_id.rpartition("-")
    try:
        index = int(tail, 16)
    except ValueError:
        index = -1
    if head != agora_execution_id(seed, 0).rpartition("-")[0] or len(tail) != 12 or not 0 <= index < count:
        raise _NotFound("execution not found")
    return index


def _build_execution(config: SimulationConfig, anchor_ms: int, index: int) -> _Execution:
    count = agora_count(config)
    timeline = Timeline(count, config.seed, anchor_ms)
    builder, run = _run(f"{config.seed}:agora:{index}", config.events_per_session, timeline.end_ms(index))
    return _Execution(
        agora_execution_id(config.seed, index), index, builder.workflow, run, _nodes(run),
        running=index >= count - AGORA_RUNNING,
    )


def _nodes(run: Run) -> list[_Node]:
    """Planning until the first tool call, one node per workflow step, answering after the last call."""
    tool_at = [k for k, (_, kind, _) in enumerate(run) if kind.startswith("tool_call_")]
    first, last = (tool_at[0], tool_at[-1] + 1) if tool_at else (1, 1)
    groups: list[tuple[str, str, Run]] = [("plan", "llm", run[:first])]
    for event in run[first:last]:
        # Only tool calls carry a step; everything between them belongs to the step in progress.
        step = event[2].get("step_name", groups[-1][0])
        if step != groups[-1][0]:
            groups.append((step, "tool", []))
        groups[-1][2].append(event)
    groups.append(("respond", "llm", run[last:]))
    nodes: list[_Node] = []
    for name, node_type, events in groups:
        if events:
            # A node starts where the previous one ended, so the timeline has no gaps.
            start = nodes[-1].run[-1][0] if nodes else events[0][0]
            nodes.append(_Node(name, node_type, events, start))
    return nodes


def _failures(run: Run) -> list[dict[str, Any]]:
    return [p for _, kind, p in run if kind == "tool_call_completed" and not p["success"]]


def _final_failure(node: _Node) -> dict[str, Any] | None:
    """The node's last tool result when it failed: a failure followed by a successful retry is no error."""
    completions = [p for _, kind, p in node.run if kind == "tool_call_completed"]
    return completions[-1] if completions and not completions[-1]["success"] else None


def _retries(node: _Node) -> int:
    return len(_failures(node.run)) - (1 if _final_failure(node) else 0)


def _run_failure(ex: _Execution) -> dict[str, Any] | None:
    """The tool failure that made the agent give up, if it did."""
    gave_up = ex.run[-1][2].get("agent_state") == "failed"
    return _failures(ex.run)[-1] if gave_up and not ex.running else None


def _execution_record(ex: _Execution) -> dict[str, Any]:
    first, last = ex.run[0], ex.run[-1]
    failure = _run_failure(ex)
    status = "running" if ex.running else "success" if failure is None else "error"
    if failure is not None and failure["error"] == "TimeoutError":
        status = "timeout"
    finished = not ex.running
    return {
        "id": ex.id,
        "workflow_id": _workflow_id(ex.workflow),
        "status": status,
        "started_at": format_ms(first[0]),
        "completed_at": format_ms(last[0]) if finished else None,
        "duration_ms": last[0] - first[0] if finished else None,
        "error_message": f"{failure['error']}: {failure['error_details']}" if failure else None,
        "input_data": {"prompt": first[2]["prompt"]},
        "output_data": {"response": last[2]["response"]} if finished and "response" in last[2] else None,
    }


def _workflow_id(workflow: Workflow) -> str:
    position = WORKFLOWS.index(workflow)
    return f"00000000-0000-4000-a000-{position + 1:012x}"


def _phases(node: _Node) -> tuple[int, int, int]:
    """(prep, exec, post) ms: preparing and posting are short; executing is most of the node."""
    total = node.run[-1][0] - node.start_ms
    prep, post = total * 6 // 100, total * 3 // 100
    return prep, total - prep - post, post


def _timeline(ex: _Execution) -> list[dict[str, Any]]:
    entries = []
    for position, node in enumerate(ex.nodes):
        running = ex.running and position == len(ex.nodes) - 1
        final_failure = _final_failure(node)
        prep, exec_, post = _phases(node)
        entries.append({
            "id": f"{ex.id[:9]}5158-4000-8000-{ex.index:08x}{position:04x}",
            "node_id": f"{ex.workflow.workflow_name}.{node.name}",
            "node_name": node.name,
            "node_type": node.node_type,
            "status": "running" if running else "error" if final_failure else "success",
            "started_at": format_ms(node.start_ms),
            "completed_at": None if running else format_ms(node.run[-1][0]),
            "prep_duration_ms": prep,
            "exec_duration_ms": None if running else exec_,
            "post_duration_ms": None if running else post,
            "retry_count": _retries(node),
            "error_message": final_failure["error"] if final_failure else None,
        })
    return entries


def _spans(ex: _Execution) -> list[dict[str, Any]]:
    """`{flow}.flow` over `{node}.node` over `{node}.prep/.exec/.post`, as Agora's tracer names them."""
    trace_id = ex.id.replace("-", "")
    flow = ex.workflow.workflow_name
    ids = itertools.count(1)

    def span(name: str, parent: str | None, start: int, end: int, attributes: dict[str, Any],
             error: dict[str, Any] | None = None) -> dict[str, Any]:
        events = [] if error is None else [{
            "name": "exception", "timestamp": format_ms(end),
            "attributes": {"exception.type": error["error"], "exception.message": error["error_details"]},
        }]
        return {
            "span_id": f"{ex.index:012x}{next(ids):04x}", "trace_id": trace_id, "parent_span_id": parent,
            "name": name, "kind": "INTERNAL", "status": "ERROR" if error else "OK",
            "start_time": format_ms(start), "end_time": format_ms(end), "duration_ms": end - start,
            "attributes": {"agora.flow": flow, **attributes}, "events": events,
        }

    spans = []
    if not ex.running:
        spans.append(span(f"{flow}.flow", None, ex.run[0][0], ex.run[-1][0],
                          {"traceloop.span.kind": "workflow", "traceloop.workflow.name": flow}, _run_failure(ex)))
    for node in ex.finished_nodes:
        final_failure = _final_failure(node)
        node_span = span(f"{node.name}.node", spans[0]["span_id"] if spans else None, node.start_ms,
                         node.run[-1][0], {"agora.node": node.name, "retry_count": _retries(node)}, final_failure)
        spans.append(node_span)
        start = node.start_ms
        for phase, duration in zip(("prep", "exec", "post"), _phases(node), strict=True):
            is_exec = phase == "exec"
            attributes = {"agora.node": node.name, "agora.phase": phase, **(_genai(node) if is_exec else {})}
            error = final_failure if is_exec else None
            spans.append(span(f"{node.name}.{phase}", node_span["span_id"], start, start + duration, attributes, error))
            start += duration
    return spans


def _genai(node: _Node) -> dict[str, Any]:
    """OpenTelemetry GenAI attributes of a node's exec span: the model it used, or its first tool."""
    if node.node_type == "tool":
        tool = next(p["tool_name"] for _, kind, p in node.run if kind == "tool_call_started")
        return {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "traceloop.span.kind": "tool"}
    calls = [p for _, kind, p in node.run if kind == "model_change"]
    if not calls:
        return {}
    call = calls[-1]
    return {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": MODELS[call["model"]].provider,
        "gen_ai.request.model": call["model"], "gen_ai.response.model": call["model"],
        "gen_ai.usage.input_tokens": call["input_tokens"], "gen_ai.usage.output_tokens": call["output_tokens"],
        "llm.usage.total_tokens": call["input_tokens"] + call["output_tokens"], "traceloop.span.kind": "task",
    }


def _telemetry_events(ex: _Execution) -> list[dict[str, Any]]:
    return [
        {"event_type": kind, "timestamp": format_ms(at), "data": payload}
        for node in ex.finished_nodes
        for at, kind, payload in node.run
    ]


# --------------------------------------------------------------------------------------------------
# HTTP: routing is a pure function of (target, Authorization) so it stays independent of the socket plumbing


class _NotFound(Exception):
    """The message is the 404's `detail`."""


class _BadRequest(Exception):
    pass


class _Routes:
    def __init__(self, config: SimulationConfig, timeline: Timeline, clock: Callable[[], float]) -> None:
        self.config = config
        self.timeline = timeline
        self.clock = clock

    def handle(self, target: str, authorization: str | None = None) -> tuple[int, Any]:
        """(status, JSON body) for a GET of `target`; `authorization` is the header, if any."""
        parts = urlsplit(target)
        # Split before decoding so an encoded "/" stays inside its segment.
        segments = [unquote(s) for s in parts.path.split("/") if s]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            match segments:
                case ["signavio", "agent-metrics"]:
                    return 200, self.listing(EXTRACT, query)
                case ["signavio", "agent-metrics", sid]:
                    events = self.events(EXTRACT, sid)
                    return 200, {"session_id": sid, **session_summary(events), "events": events}
                case ["agent_metrics", "sessions"]:
                    return 200, self.listing(AGENT_TELEMETRY, query)
                case ["agent_metrics", sid, "events"]:
                    return 200, {"session_id": sid, "events": self.events(AGENT_TELEMETRY, sid)}
                case ["executions", *_] if not (authorization or "").startswith("Bearer "):
                    return 401, {"detail": "Not authenticated"}
                case ["executions"]:
                    return 200, self.executions(query)
                case ["executions", execution_id, "timeline"]:
                    ex = self.execution(execution_id)
                    return 200, {"execution": _execution_record(ex), "timeline": _timeline(ex)}
                case ["executions", execution_id, "telemetry-spans"]:
                    return 200, _spans(self.execution(execution_id))
                case ["executions", execution_id, "telemetry-events"]:
                    return 200, _telemetry_events(self.execution(execution_id))
        except _NotFound as exc:
            return 404, {"detail": str(exc)}
        except _BadRequest as exc:
            return 400, {"detail": str(exc)}
        return 404, {"detail": "not found"}

    def visible_count(self) -> int:
        return self.timeline.visible_count(int(self.clock() * 1000))

    def index_of(self, source: str, sid: str) -> int:
        prefix = _ID_PREFIX[source]
        digits = sid.removeprefix(prefix)
        if not digits.isdigit() or not digits.isascii():
            raise _NotFound("session not found")
        index = int(digits)
        # Only the canonical spelling exists ("sim-ex-42" is not "sim-ex-000042").
        if session_id(index) != sid or index >= self.visible_count():
            raise _NotFound("session not found")
        return index

    def events(self, source: str, sid: str) -> list[dict[str, Any]]:
        return generate_events(self.config, self.index_of(source, sid), self.timeline)

    def execution(self, execution_id: str) -> _Execution:
        index = _agora_index(self.config.seed, execution_id, agora_count(self.config))
        return _build_execution(self.config, self.timeline.anchor_ms, index)

    def executions(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """Newest first, like Agora. Filters scan every execution: fine at the sizes Agora demos use."""
        limit = _parse_int(query.get("limit"), "limit", default=100, low=1, high=100)
        offset = _parse_int(query.get("offset"), "offset", default=0, low=0, high=None)
        records = (
            _execution_record(_build_execution(self.config, self.timeline.anchor_ms, index))
            for index in reversed(range(agora_count(self.config)))
        )
        wanted = (
            r for r in records
            if query.get("status") in (None, r["status"]) and query.get("workflow_id") in (None, r["workflow_id"])
        )
        return list(itertools.islice(wanted, offset, offset + limit))

    def listing(self, source: str, query: dict[str, str]) -> dict[str, Any]:
        """One page of the source's sessions, ordered by end time, from `since` or the cursor on."""
        # Discovery clamps an oversized limit: a client asking for more simply gets full pages.
        limit = min(_parse_int(query.get("limit"), "limit", default=DEFAULT_PAGE_SIZE, low=1, high=None), MAX_PAGE_SIZE)
        count = _source_count(source, self.visible_count())
        index = _indexer(source)
        start = 0
        if query.get("since"):
            since_ms = _parse_since(query["since"])
            start = bisect.bisect_left(range(count), since_ms, key=lambda p: self.timeline.end_ms(index(p)))
        if query.get("cursor"):
            start = max(start, _decode_cursor(query["cursor"]))
        stop = min(count, start + limit)
        sessions = [
            {"session_id": session_id(index(p)), "last_event_at": format_ms(self.timeline.end_ms(index(p)))}
            for p in range(start, stop)
        ]
        return {"sessions": sessions, "next_cursor": _encode_cursor(stop) if stop < count else None}


def _source_count(source: str, visible: int) -> int:
    return (visible + 1 - _PARITY[source]) // 2


def _indexer(source: str) -> Callable[[int], int]:
    """A source's n-th session → global session index."""
    parity = _PARITY[source]
    return lambda position: 2 * position + parity


def _parse_int(raw: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        raise _BadRequest(f"{name} must be between {low} and {high}" if high else f"{name} must be >= {low}")
    return value


def _parse_since(raw: str) -> int:
    """RFC 3339 → epoch ms, rounded up so `>= since` stays exact for sub-millisecond values."""
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise _BadRequest("since must be an RFC 3339 timestamp") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    micros = (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    return -(-micros // 1000)


def _encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"p:{position}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        kind, _, value = text.partition(":")
        if kind != "p" or not value.isdigit():
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeError):
        raise _BadRequest("invalid cursor") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out as two writes; don't wait for a delayed ACK
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        super().finish()

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's naming)
        try:
            status, payload = self.server.routes.handle(self.path, self.headers.get("Authorization"))
        except Exception:
            logger.exception("simulator failed on %s", self.path)
            status, payload = 500, {"detail": "internal error"}
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's signature)
        """Silent: a benchmark makes tens of thousands of requests."""


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a benchmark opens many connections at once
    block_on_close = False  # idle keep-alive connections must not block `stop()`

    def __init__(self, address: tuple[str, int], routes: _Routes) -> None:
        super().__init__(address, _Handler)
        self.routes = routes
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Hang up on kept-alive clients, so a stopped simulator really stops answering."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client


class Simulator:
    """Serves the generated population on `url` (one port for both sources). A context manager."""

    def __init__(self, config: SimulationConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        now_ms = int(time.time() * 1000)
        self.timeline = Timeline.live(config, now_ms) if config.live_rate > 0 else Timeline.fixed(config)
        self._routes = _Routes(config, self.timeline, time.time)
        self._server = _Server((host, port), self._routes)
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self._thread: threading.Thread | None = None
        self._stopping = threading.Lock()

    def start(self) -> Simulator:
        """Serve on a background thread (idempotent); returns self."""
        if self._thread is None:
            # A short poll keeps `stop()` quick; the default 0.5 s would dominate test run time.
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="simulator", daemon=True
            )
            self._thread.start()
            logger.debug("simulator serving %d sessions on %s", self.config.sessions, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and hang up on clients. Idempotent, and safe to call from several threads
        (the CLI's `serve_forever` stops on its way out while its `with` block stops too)."""
        with self._stopping:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._server.shutdown()
                thread.join()
            self._server.close_connections()
            self._server.server_close()

    def serve_forever(self) -> None:
        """Serve until interrupted (the CLI's `simulate`), started or not; KeyboardInterrupt propagates."""
        thread = self.start()._thread
        try:
            while thread is not None and thread.is_alive():
                thread.join(timeout=0.5)  # a timed join lets Ctrl-C through
        finally:
            self.stop()

    def session_ids(self, source: str | None = None) -> list[str]:
        """Ids visible now, in end-time order; `source` is `extract`, `agent_telemetry` or None for both."""
        if source is not None and source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
        indexes = range(self._routes.visible_count())
        return [session_id(i) for i in indexes if source is None or source_of(i) == source]

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""The console's texts: a session's tags, its timeline and errors as markdown tables short enough for the UI to
render inline, an outcome in words, and the cell and percentage rules every table of `defs/metadata.py` uses."""

from __future__ import annotations

import itertools
import re

from telemetry_pipeline.canonical.model import Conformance
from telemetry_pipeline.console.overview import AgentConformance, Outcome
from telemetry_pipeline.console.session_summary import Deviation, Failure, SessionSummary, Step

# The UI renders markdown under 1,000 characters inline (longer opens behind a dialog), and a markdown
# table serialises to a fifth of the bytes of a `TableMetadataValue` with the same rows.
MAX_INLINE_MARKDOWN = 999
TIMELINE_ACTIVITY_CHARS = 40
ERROR_ACTIVITY_CHARS = 30
ERROR_CHARS = 110
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def session_tags(s: SessionSummary) -> dict[str, str]:
    """`agent`, `workflow`, `outcome` and (when a playbook matched it) `conformance` as tags of the session's
    materialisation. Dagster takes tag values of at most 63 characters of `[A-Za-z0-9_.-]`: anything else
    becomes `_`."""
    checked = s.conformance if s.conformance != Conformance.UNCHECKED else None  # a playbook matched it
    values = {"agent": s.agent, "workflow": s.workflow, "outcome": s.status, "conformance": checked}
    return {name: _TAG_UNSAFE.sub("_", value)[:63] for name, value in values.items() if value}


def event_counts_text(source_events: int, event_log_rows: int) -> str:
    """Why the source's count and the event log's differ (`events` and `events_rows` in the metadata)."""
    if source_events == event_log_rows:
        return f"{source_events} source events = {event_log_rows} event-log rows"
    return (f"{source_events} source events → {event_log_rows} event-log rows "
            "(a start and its end, e.g. of a tool call, are paired into one row)")


def timeline_markdown(steps: tuple[Step, ...], total: int) -> str:
    """The first and last of `total` steps as a markdown table short enough to render inline, with a
    "… N more steps" row where steps are left out (the last head step goes first when it is too long)."""
    shown = list(steps)
    while True:
        text = _timeline_table(shown, total)
        if len(text) <= MAX_INLINE_MARKDOWN or len(shown) <= 1:
            return text
        gap = next((i for i, (a, b) in enumerate(itertools.pairwise(shown)) if b.step > a.step + 1), len(shown) // 2)
        del shown[gap]


def _timeline_table(steps: list[Step], total: int) -> str:
    lines = ["| # | s | activity | status | ms |", "|--:|--:|---|---|--:|"]
    previous = 0
    for step in steps:
        if step.step > previous + 1:
            lines.append(_more_steps(step.step - previous - 1))
        at = f"{step.offset_ms / 1000:.1f}" if step.offset_ms is not None else ""
        ms = str(step.latency_ms) if step.latency_ms is not None else ""
        lines.append(f"| {step.step} | {at} | {cell(step.activity, TIMELINE_ACTIVITY_CHARS)} "
                     f"| {cell(step.status or '', 12)} | {ms} |")
        previous = step.step
    if total > previous:
        lines.append(_more_steps(total - previous))
    return "\n".join(lines)


def _more_steps(n: int) -> str:
    return f"| | | … {n} more step{'s' if n != 1 else ''} | | |"


def errors_markdown(errors: tuple[Failure, ...], total: int) -> str:
    """Every error with its message, the same one at the same activity on one row with its steps, as a
    markdown table short enough to render inline; "… N more errors" names what did not fit."""
    groups: dict[tuple[str, str], list[int]] = {}
    for failure in errors:
        groups.setdefault((failure.activity, failure.error or "(failed, no message)"), []).append(failure.step)
    rows = [
        f"| {_steps(numbers)} | {cell(activity, ERROR_ACTIVITY_CHARS)} | {cell(error, ERROR_CHARS)} |"
        for (activity, error), numbers in groups.items()
    ]
    counts = [len(numbers) for numbers in groups.values()]
    header = ["| step | activity | error |", "|--:|---|---|"]
    while True:
        hidden = total - sum(counts[: len(rows)])
        more = [f"| | … {hidden} more error{'s' if hidden != 1 else ''} | |"] if hidden else []
        text = "\n".join(header + rows + more)
        if len(text) <= MAX_INLINE_MARKDOWN or not rows:
            return text
        rows.pop()


def deviations_markdown(deviations: tuple[Deviation, ...]) -> str:
    """The rules a session broke as a markdown table short enough to render inline ("… N more" says what did
    not fit; the case table's `deviations` has them all)."""
    header = ["| playbook | rule | detail |", "|---|---|---|"]
    rows = [f"| {cell(d.playbook, 30)} | {d.rule} | {cell(d.detail, ERROR_CHARS)}"
            f"{f' ({d.times}×)' if d.times > 1 else ''} |" for d in deviations]
    while True:
        hidden = len(deviations) - len(rows)
        more = [f"| | … {hidden} more | |"] if hidden else []
        text = "\n".join(header + rows + more)
        if len(text) <= MAX_INLINE_MARKDOWN or not rows:
            return text
        rows.pop()


def _steps(numbers: list[int], shown: int = 4) -> str:
    head = ", ".join(str(n) for n in numbers[:shown])
    return head if len(numbers) <= shown else f"{head} +{len(numbers) - shown}"


def cell(text: str, width: int) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def outcome_text(o: Outcome) -> str:
    """`210 sessions: 69 completed (32.9%), 109 partial (51.9%), 32 failed (15.2%)`."""
    if not o.cases:
        return "no sessions in the window"
    parts = ", ".join(f"{n} {name} ({pct(n / o.cases)}%)" for name, n in counts(o))
    return f"{o.cases} sessions: {parts}; success rate {pct(o.success_rate)}% (completed or partial)"


def counts(o: Outcome) -> list[tuple[str, int]]:
    return [("completed", o.completed), ("partial", o.partial), ("failed", o.failed)]


def top_errors(errors: tuple[tuple[str, int], ...]) -> str:
    return "; ".join(f"{n}× {cell(message or '(no message)', ERROR_CHARS)}" for message, n in errors)


def conformance_text(agents: tuple[AgentConformance, ...]) -> str:
    """`12 of 40 sessions checked against a playbook deviate (30.0%); 5 unchecked (no playbook matches them)`."""
    cases, checked = sum(a.cases for a in agents), sum(a.checked for a in agents)
    deviating = sum(a.deviating for a in agents)
    if not checked:
        return f"no playbook matched any of the {cases} sessions (PLAYBOOKS_FILE)" if cases else "no sessions"
    unchecked = f"; {cases - checked} unchecked (no playbook matches them)" if cases > checked else ""
    share = pct(deviating / checked)
    return f"{deviating} of {checked} sessions checked against a playbook deviate ({share}%){unchecked}"


def keys_text(keys: tuple[str, ...], shown: int = 10) -> str:
    """Session keys to open (each is a partition of signavio_export), the first `shown` of them."""
    more = f" … +{len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def pct(share: float) -> float:
    return round(100 * share, 1)

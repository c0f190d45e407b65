"""The console's texts: a session's tags, its timeline and errors as markdown tables short enough for the UI to
render inline, an outcome in words, and the cell and percentage rules every table of `defs/metadata.py` uses."""

from __future__ import annotations

import re
from urllib.parse import quote

from telemetry_pipeline.canonical.model import Conformance
from telemetry_pipeline.console.overview import AgentConformance, Outcome
from telemetry_pipeline.console.session_summary import Deviation, Failure, SessionSummary, Step
from telemetry_pipeline.names import SIGNAVIO_EXPORT

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


def outcome_words(s: SessionSummary) -> str:
    """How the agent's run ended, for a person to read once beside "Materialized" (which says it was exported)."""
    if s.status == "failed":
        return f"✗ the agent's run failed: {s.first_error or 'its last step failed'}"
    if s.status == "partial":
        return f"◐ the agent recovered from {s.error_count} failed step{'s' if s.error_count != 1 else ''}"
    return "✓ the agent completed its run"


def event_counts_text(source_events: int, event_log_rows: int) -> str:
    """Why the source's count and the event log's differ (`events` and `events_rows` in the metadata)."""
    if source_events == event_log_rows:
        return f"{source_events} source events = {event_log_rows} event-log rows"
    return (f"{source_events} source events → {event_log_rows} event-log rows "
            "(a start and its end, e.g. of a tool call, are paired into one row)")


def timeline_markdown(steps: tuple[Step, ...], total: int) -> str:
    """The steps kept of `total` (the first and last ones, every failed one with its neighbours) as a markdown table
    short enough to render inline, "… N more steps (F failed)" where steps are left out. When it has to cut, the
    plain first and last steps go before the neighbours of failures, those before the failures themselves; the
    first and the last step stay."""
    shown = list(steps)
    while True:
        text = _timeline_table(shown, total, steps)
        if len(text) <= MAX_INLINE_MARKDOWN or len(shown) <= 2:
            return text
        del shown[max(range(1, len(shown) - 1), key=lambda i: _expendable(shown, i))]


def _expendable(shown: list[Step], i: int) -> tuple[int, int]:
    """How readily row `i` goes: failures last, then the steps next to one; among equals the middle ones first."""
    step = shown[i]
    near = any(s.failed for s in shown[max(0, i - 1):i + 2])
    rank = 0 if step.failed else 1 if near else 2
    return rank, min(i, len(shown) - 1 - i)


def _timeline_table(steps: list[Step], total: int, kept: tuple[Step, ...]) -> str:
    failed = {s.step for s in kept if s.failed}
    usage = any(s.input_tokens is not None or s.output_tokens is not None or s.cost_usd is not None for s in steps)
    columns = 7 if usage else 5  # tokens and cost only where a model call is shown
    lines = ["| # | s | activity | status | ms |" + (" tokens | USD |" if usage else ""),
             "|--:|--:|---|---|--:|" + ("--:|--:|" if usage else "")]
    previous = 0
    for step in [*steps, None]:
        upto = step.step if step else total + 1
        if upto > previous + 1:
            lines.append(_more_steps(upto - previous - 1, sum(1 for n in failed if previous < n < upto), columns))
        if step is None:
            break
        at = f"{step.offset_ms / 1000:.1f}" if step.offset_ms is not None else ""
        ms = str(step.latency_ms) if step.latency_ms is not None else ""
        status = f"**{cell(step.status or 'failed', 12)}**" if step.failed else cell(step.status or "", 12)
        row = f"| {step.step} | {at} | {cell(step.activity, TIMELINE_ACTIVITY_CHARS)} | {status} | {ms} |"
        if usage:
            tokens = f"{step.input_tokens or 0}→{step.output_tokens or 0}" if (
                step.input_tokens is not None or step.output_tokens is not None) else ""
            row += f" {tokens} | {f'{step.cost_usd:.4f}' if step.cost_usd is not None else ''} |"
        lines.append(row)
        previous = step.step
    return "\n".join(lines)


def _more_steps(n: int, failed: int, columns: int) -> str:
    hidden_failures = f" ({failed} failed: see errors)" if failed else ""
    return f"| | | … {n} more step{'s' if n != 1 else ''}{hidden_failures} |" + " |" * (columns - 3)


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


def partition_link(key: str) -> str:
    """A markdown link to the session's page in the UI (its partition of `signavio_export`), on the webserver the
    page is read on (a path, so any host and port; a webserver under a path prefix needs the prefix added)."""
    return f"[{cell(key, 60)}](/assets/{SIGNAVIO_EXPORT}?view=partitions&partition={quote(key, safe=':')})"


def links_text(keys: tuple[str, ...], shown: int = 1) -> str:
    """The first `shown` sessions as links, and how many more."""
    more = f" +{len(keys) - shown}" if len(keys) > shown else ""
    return ", ".join(partition_link(k) for k in keys[:shown]) + more


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]], cut: str | None = None) -> str:
    """A markdown table. With `cut` (what its rows are), short enough to render inline: the first rows that fit,
    then "… N more <cut>"; without, whole (the UI opens a table over 1,000 characters behind "Show Markdown")."""
    head = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    body = ["| " + " | ".join(row) + " |" for row in rows]
    while True:
        hidden = len(rows) - len(body)
        more = [f"| … {hidden} more {cut} |" + " |" * (len(header) - 1)] if hidden else []
        text = "\n".join(head + body + more)
        if cut is None or len(text) <= MAX_INLINE_MARKDOWN or not body:
            return text
        body.pop()


def compact(n: int) -> str:
    """12345 -> 12.3k, 1234567 -> 1.2M: figures that fit a narrow column."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def pct(share: float) -> float:
    return round(100 * share, 1)

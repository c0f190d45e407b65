"""Each exported session at a glance: the figures a person looks for on its partition page (agent,
workflow, status, times, counts, tool calls, models, tokens), every error with its message, and its
first and last steps (the start, and how it ended). One set-based DuckDB query per batch over the
canonical model; no Dagster here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from telemetry_pipeline.canonical.identity import USER

#: Steps shown of a session's timeline: its first ones and its last ones (the final answer, the error
#: it ended on); the full event log is in Signavio. Kept short so each materialisation stays small
#: (bench/README.md: bytes of metadata per session).
HEAD_STEPS = 5
TAIL_STEPS = 3
MAX_ERRORS = 50  # errors carried per session; the page shows as many as fit, and says how many more
MAX_TEXT = 160  # characters of an activity or error shown; the rest is in the event log
_SUMMARY_SQL = """
WITH batch AS (SELECT unnest($keys::VARCHAR[]) AS session_key),
ev AS (SELECT * FROM events WHERE session_key IN (SELECT session_key FROM batch)),
agg AS (
    SELECT session_key,
           count(*) FILTER (WHERE tool_name IS NOT NULL) AS tool_calls,
           count(*) FILTER (WHERE tool_name IS NOT NULL AND status = 'success') AS tool_calls_succeeded,
           count(*) FILTER (WHERE tool_name IS NOT NULL AND status = 'failed') AS tool_calls_failed,
           list_sort(list(DISTINCT model) FILTER (WHERE model IS NOT NULL)) AS models,
           coalesce(sum(input_tokens) FILTER (WHERE model IS NOT NULL), 0) AS input_tokens,
           coalesce(sum(output_tokens) FILTER (WHERE model IS NOT NULL), 0) AS output_tokens,
           sum(cost_usd) AS cost_usd,
           list_sort(list(DISTINCT resource) FILTER (WHERE resource IS NOT NULL AND resource <> $user)) AS agents,
           arg_min(error, (event_time, seq)) FILTER (WHERE error IS NOT NULL) AS first_error,
           count(*) AS event_log_rows,
           count(*) FILTER (WHERE status = 'failed' OR error IS NOT NULL) AS errors
    FROM ev GROUP BY session_key
)
SELECT s.session_key, s.agent_name, s.workflow_name, s.status, s.start_time, s.end_time, s.event_count,
       coalesce(a.tool_calls, 0), coalesce(a.tool_calls_succeeded, 0), coalesce(a.tool_calls_failed, 0),
       coalesce(a.models, []), coalesce(a.input_tokens, 0), coalesce(a.output_tokens, 0), a.first_error,
       coalesce(a.event_log_rows, 0), coalesce(a.errors, 0), a.cost_usd, coalesce(a.agents, []), s.conformance
FROM sessions s LEFT JOIN agg a USING (session_key)
WHERE s.session_key IN (SELECT session_key FROM batch)
"""

# The steps shown: the first and last ones, every failed one (up to MAX_ERRORS) with the step before and after it
# (what led to it, what the agent did next), in one pass. Offsets from the session's start (not absolute times) keep
# each row short and readable; a model call carries its tokens and cost.
_STEPS_SQL = """
WITH batch AS (SELECT unnest($keys::VARCHAR[]) AS session_key),
ranked AS (
    SELECT e.session_key, e.activity, e.status, e.latency_ms, e.error, e.model, e.input_tokens, e.output_tokens,
           e.cost_usd, date_diff('millisecond', coalesce(s.start_time, e.event_time), e.event_time) AS offset_ms,
           row_number() OVER w AS step, count(*) OVER (PARTITION BY e.session_key) AS steps,
           e.status = 'failed' OR e.error IS NOT NULL AS is_failed,
           count(*) FILTER (WHERE e.status = 'failed' OR e.error IS NOT NULL) OVER w AS nth_error
    FROM events e JOIN sessions s USING (session_key)
    WHERE e.session_key IN (SELECT session_key FROM batch)
    WINDOW w AS (PARTITION BY e.session_key ORDER BY e.event_time, e.seq)
),
marked AS (
    SELECT *, is_failed AND nth_error <= $max_errors AS failed,
           bool_or(is_failed AND nth_error <= $max_errors) OVER (
               PARTITION BY session_key ORDER BY step ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS near_failure
    FROM ranked
)
SELECT session_key, step, offset_ms, activity, status, latency_ms, error, model, input_tokens, output_tokens, cost_usd,
       step <= $head OR step > steps - $tail OR near_failure AS shown, failed
FROM marked
WHERE step <= $head OR step > steps - $tail OR near_failure
ORDER BY session_key, step
"""

# The rules each session broke, each once with how often (`policy.conformance`).
_DEVIATIONS_SQL = """
SELECT session_key, playbook, rule, detail, count(*) AS times FROM deviations
WHERE session_key IN (SELECT unnest($keys::VARCHAR[])) GROUP BY ALL ORDER BY session_key, playbook, rule, detail
"""


@dataclass(frozen=True)
class Deviation:
    playbook: str
    rule: str
    detail: str
    times: int = 1  # events that broke it this way (a limit, a required activity: once)


@dataclass(frozen=True)
class Step:
    step: int
    offset_ms: int | None
    activity: str
    status: str | None
    latency_ms: int | None
    failed: bool = False
    input_tokens: int | None = None  # of a model call
    output_tokens: int | None = None
    cost_usd: float | None = None


@dataclass(frozen=True)
class Failure:
    """A failed step: where and what (the error's kind and message, cut at `MAX_TEXT`)."""

    step: int
    offset_ms: int | None
    activity: str
    error: str | None  # None: the source marked the step failed without saying why


@dataclass(frozen=True)
class SessionSummary:
    agent: str | None
    workflow: str | None
    status: str
    start: dt.datetime | None
    end: dt.datetime | None
    source_events: int  # events in the source's payload
    event_log_rows: int  # rows of the event log: paired starts and ends are one row (README)
    tool_calls: int
    tool_calls_succeeded: int
    tool_calls_failed: int
    models: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    first_error: str | None
    error_count: int = 0
    cost_usd: float | None = None  # of the model calls whose price is known
    agents: tuple[str, ...] = ()  # the agents that acted in it
    conformance: str | None = None  # against the playbooks: conforming | deviating | unchecked
    deviations: tuple[Deviation, ...] = ()  # the rules it broke
    errors: tuple[Failure, ...] = field(default=())  # the first `MAX_ERRORS`
    timeline: tuple[Step, ...] = field(default=())  # the first and last steps and the failed ones, numbered

    @property
    def steps(self) -> int:
        return self.event_log_rows

    @property
    def duration_s(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return round((self.end - self.start).total_seconds(), 3)


def summarize(
    con: duckdb.DuckDBPyConnection, keys: Sequence[str], head: int = HEAD_STEPS, tail: int = TAIL_STEPS,
) -> dict[str, SessionSummary]:
    """{key: summary} for the normalised sessions among `keys`."""
    keys = list(keys)
    if not keys:
        return {}
    timelines: dict[str, list[Step]] = {}
    failures: dict[str, list[Failure]] = {}
    params = {"keys": keys, "head": head, "tail": tail, "max_errors": MAX_ERRORS}
    for key, step, offset, activity, status, latency, error, model, tin, tout, cost, shown, failed in con.execute(
        _STEPS_SQL, params
    ).fetchall():
        if shown:
            timelines.setdefault(key, []).append(Step(
                step, offset, _clip(activity) or "", status, latency, bool(failed),
                *((tin, tout, cost) if model else (None, None, None))))
        if failed:
            failures.setdefault(key, []).append(Failure(step, offset, _clip(activity) or "", _clip(error)))
    deviations: dict[str, list[Deviation]] = {}
    for key, *deviation in con.execute(_DEVIATIONS_SQL, {"keys": keys}).fetchall():
        deviations.setdefault(key, []).append(Deviation(*deviation))
    summaries = {}
    for row in con.execute(_SUMMARY_SQL, {"keys": keys, "user": USER}).fetchall():
        (key, agent, workflow, status, start, end, events, calls, ok, failed, models, tin, tout, error, rows, errs,
         cost, agents, conformance) = row
        summaries[key] = SessionSummary(
            agent=agent, workflow=workflow, status=status, start=start, end=end, source_events=events,
            event_log_rows=rows, tool_calls=calls, tool_calls_succeeded=ok, tool_calls_failed=failed,
            models=tuple(models), input_tokens=tin, output_tokens=tout, first_error=_clip(error),
            error_count=errs, errors=tuple(failures.get(key, ())), timeline=tuple(timelines.get(key, ())),
            cost_usd=cost, agents=tuple(agents), conformance=conformance,
            deviations=tuple(deviations.get(key, ())),
        )
    return summaries


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[: MAX_TEXT - 1] + "…"

"""What the agents did and the process as Signavio will mine it, from the canonical model over a recent
window: outcomes (completed / partial / failed) overall, per agent and per workflow; the activities that
fail, with their most common errors; the slowest and the latest failed sessions, by key; directly-follows
relations (with the start and end of each case), per-activity figures, variants, per-model tokens and cost,
the costliest sessions, and conformance to the playbooks per agent and per rule, with the deviating sessions.
Set-based DuckDB SQL over `sessions` and `events`; no Dagster here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb

from telemetry_pipeline.canonical.model import Conformance

START, END = "▶ start", "■ end"  # pseudo-activities: where cases begin and end on the map
OUTCOMES = ("completed", "partial", "failed")  # a session's `status`: `partial` recovered from failures
NO_NAME = "(none)"  # a session without an agent or workflow name
TOP_ERRORS = 3  # most common error messages shown per failing activity

# The window: sessions that reached the warehouse (were normalised) at or after $since, i.e. what was
# exported recently, whatever the age of the events themselves (a backfill of old sessions counts).
_WINDOW = """
cases AS (
    SELECT session_key FROM sessions WHERE normalized_at >= $since
),
ev AS (
    SELECT e.session_key, e.activity, e.event_time, e.end_time, e.status, e.latency_ms, e.model,
           e.input_tokens, e.output_tokens, e.error, e.cost_usd,
           row_number() OVER (PARTITION BY e.session_key ORDER BY e.event_time, e.seq) AS pos
    FROM events e WHERE e.session_key IN (SELECT session_key FROM cases)
)
"""

_TOTALS_SQL = f"WITH {_WINDOW} SELECT (SELECT count(*) FROM cases), (SELECT count(*) FROM ev)"

# Directly-follows pairs within a case, plus start -> first and last -> end; duration = time from one
# event's start to the next one's start.
_EDGES_SQL = f"""
WITH {_WINDOW},
steps AS (
    SELECT session_key, activity, event_time, status = 'failed' AS failed,
           lead(activity, 1, '{END}') OVER w AS next_activity,
           lead(event_time) OVER w AS next_time,
           pos
    FROM ev WINDOW w AS (PARTITION BY session_key ORDER BY pos)
),
pairs AS (
    SELECT '{START}' AS source, activity AS target, NULL::DOUBLE AS ms, false AS failed FROM steps WHERE pos = 1
    UNION ALL
    SELECT activity, next_activity, date_diff('millisecond', event_time, next_time)::DOUBLE, failed FROM steps
)
SELECT source, target, count(*) AS n, median(ms) AS median_ms, count(*) FILTER (WHERE failed) AS failures
FROM pairs GROUP BY ALL ORDER BY n DESC, source, target
"""

_ACTIVITIES_SQL = f"""
WITH {_WINDOW}
SELECT activity, count(*) AS n, count(DISTINCT session_key) AS cases,
       count(*) FILTER (WHERE status = 'failed') / count(*) AS failure_rate,
       median(coalesce(latency_ms, date_diff('millisecond', event_time, end_time))) AS median_ms
FROM ev GROUP BY activity ORDER BY n DESC, activity
"""

# Variants by the set of activities a case went through: agents rarely take the same exact path twice (in the
# simulator's 100 sessions, 100 distinct paths, 94 even with repeats collapsed, 14 activity sets). Each is shown
# in its typical order (the median position where the activity first occurs), with an example case.
_VARIANTS_SQL = f"""
WITH {_WINDOW},
firsts AS (SELECT session_key, activity, min(pos) AS first_pos FROM ev GROUP BY session_key, activity),
per_case AS (SELECT session_key, list_sort(list(activity)) AS activity_set FROM firsts GROUP BY session_key),
grouped AS (
    SELECT activity_set, count(*) AS cases, min(session_key) AS example FROM per_case GROUP BY activity_set
    ORDER BY cases DESC, len(activity_set), activity_set::VARCHAR LIMIT $top
),
typical AS (
    SELECT p.activity_set, f.activity, median(f.first_pos) AS at
    FROM per_case p JOIN firsts f USING (session_key)
    WHERE p.activity_set IN (SELECT activity_set FROM grouped) GROUP BY p.activity_set, f.activity
)
SELECT list(t.activity ORDER BY t.at, t.activity) AS activities, any_value(g.cases) AS cases,
       any_value(g.example) AS example
FROM typical t JOIN grouped g USING (activity_set)
GROUP BY t.activity_set ORDER BY cases DESC, len(t.activity_set), t.activity_set::VARCHAR
"""

_PATHS_SQL = f"""
WITH {_WINDOW}
SELECT count(DISTINCT trace) FROM (SELECT list(activity ORDER BY pos) AS trace FROM ev GROUP BY session_key)
"""

# What a session's model calls used and cost (cost: of the calls whose price is known).
_USAGE = """
usage AS (
    SELECT session_key, sum(input_tokens) FILTER (WHERE model IS NOT NULL) AS input_tokens,
           sum(output_tokens) FILTER (WHERE model IS NOT NULL) AS output_tokens, sum(cost_usd) AS cost_usd
    FROM events WHERE session_key IN (SELECT session_key FROM sessions WHERE normalized_at >= $since)
    GROUP BY session_key
)
"""

# One row overall ("all"), one per agent, one per workflow: GROUPING SETS reads the window once.
_OUTCOMES_SQL = f"""
WITH {_USAGE}
SELECT CASE WHEN grouping(agent) = 0 THEN 'agent' WHEN grouping(workflow) = 0 THEN 'workflow' ELSE 'all' END
           AS dimension,
       coalesce(agent, workflow, '') AS name, count(*) AS cases,
       {", ".join(f"count(*) FILTER (WHERE status = '{o}')" for o in OUTCOMES)},
       coalesce(sum(input_tokens), 0)::BIGINT, coalesce(sum(output_tokens), 0)::BIGINT, sum(cost_usd)
FROM (SELECT coalesce(s.agent_name, '{NO_NAME}') AS agent, coalesce(s.workflow_name, '{NO_NAME}') AS workflow,
             s.status, u.input_tokens, u.output_tokens, u.cost_usd
      FROM sessions s LEFT JOIN usage u USING (session_key) WHERE s.normalized_at >= $since)
GROUP BY GROUPING SETS ((), (agent), (workflow))
ORDER BY dimension, cases DESC, name
"""

_COSTLIEST_SQL = f"""
WITH {_USAGE}
SELECT s.session_key, s.agent_name, s.workflow_name, s.status, u.cost_usd
FROM sessions s JOIN usage u USING (session_key)
WHERE s.normalized_at >= $since AND u.cost_usd IS NOT NULL
ORDER BY u.cost_usd DESC, s.session_key LIMIT $top
"""

# A failure is a failed step (status) or one that names an error; its message, else none given.
_FAILING_SQL = f"""
WITH {_WINDOW},
failed AS (SELECT activity, error FROM ev WHERE status = 'failed' OR error IS NOT NULL),
counted AS (SELECT activity, coalesce(error, '') AS error, count(*) AS n FROM failed GROUP BY 1, 2),
per_error AS (SELECT *, row_number() OVER (PARTITION BY activity ORDER BY n DESC, error) AS rank FROM counted),
totals AS (SELECT activity, count(*) AS n FROM ev GROUP BY activity)
SELECT p.activity, sum(p.n)::BIGINT AS failures, any_value(t.n) AS count,
       list({{'error': p.error, 'n': p.n}} ORDER BY p.n DESC, p.error) FILTER (WHERE p.rank <= {TOP_ERRORS}) AS top
FROM per_error p JOIN totals t USING (activity)
GROUP BY p.activity ORDER BY failures DESC, p.activity LIMIT $top
"""

_SLOWEST_SQL = """
SELECT session_key, agent_name, workflow_name, status, date_diff('millisecond', start_time, end_time) AS ms
FROM sessions WHERE normalized_at >= $since AND start_time IS NOT NULL AND end_time IS NOT NULL
ORDER BY ms DESC, session_key LIMIT $top
"""

_FAILED_SESSIONS_SQL = """
WITH failed AS (
    SELECT session_key, agent_name, workflow_name, end_time FROM sessions
    WHERE normalized_at >= $since AND status = 'failed'
    ORDER BY end_time DESC NULLS LAST, session_key LIMIT $top
)
SELECT f.session_key, f.agent_name, f.workflow_name, f.end_time,
       (SELECT arg_max(e.error, (e.event_time, e.seq)) FROM events e
        WHERE e.session_key = f.session_key AND e.error IS NOT NULL) AS last_error
FROM failed f ORDER BY f.end_time DESC NULLS LAST, f.session_key
"""

# Per model: its calls, tokens and cost, and the calls no price was found for (a model the price table does not
# know: their cost is left empty, and counted here and by the `model_prices_known` check).
_MODELS_SQL = f"""
WITH {_WINDOW}
SELECT model, count(*) AS calls, coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens, sum(cost_usd) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL))
           AS unpriced_calls
FROM ev WHERE model IS NOT NULL GROUP BY model
ORDER BY coalesce(sum(input_tokens), 0) + coalesce(sum(output_tokens), 0) DESC, model
"""


# Conformance per agent: its sessions a playbook checked, those that deviated (by key), the rules they broke.
_CONFORMANCE_SQL = f"""
WITH cases AS (
    SELECT session_key, coalesce(agent_name, '{NO_NAME}') AS agent,
           coalesce(conformance, '{Conformance.UNCHECKED}') AS conformance
    FROM sessions WHERE normalized_at >= $since
),
broken AS (
    SELECT session_key, list(DISTINCT rule) AS rules FROM deviations
    WHERE session_key IN (SELECT session_key FROM cases) GROUP BY session_key
)
SELECT agent, count(*) AS cases, count(*) FILTER (WHERE conformance <> '{Conformance.UNCHECKED}') AS checked,
       count(*) FILTER (WHERE conformance = '{Conformance.DEVIATING}') AS deviating,
       coalesce(list_sort(list_distinct(flatten(list(b.rules) FILTER (WHERE b.rules IS NOT NULL)))), []) AS rules,
       coalesce(list_sort(list(session_key) FILTER (WHERE conformance = '{Conformance.DEVIATING}')), []) AS sessions
FROM cases c LEFT JOIN broken b USING (session_key)
GROUP BY agent ORDER BY deviating DESC, checked DESC, agent
"""

# Per rule of each playbook: the sessions that broke it (by key), how often, and its commonest detail.
_RULES_SQL = """
SELECT playbook, rule, count(DISTINCT session_key) AS sessions, count(*) AS breaches, mode(detail) AS example,
       list_sort(list_distinct(list(session_key))) AS session_keys
FROM deviations WHERE session_key IN (SELECT session_key FROM sessions WHERE normalized_at >= $since)
GROUP BY playbook, rule ORDER BY sessions DESC, breaches DESC, playbook, rule
"""


@dataclass(frozen=True)
class AgentConformance:
    """How one agent's sessions in the window stood against the playbooks."""

    agent: str
    cases: int
    checked: int  # matched by a playbook
    deviating: int
    rules: tuple[str, ...]  # the rules its sessions broke
    sessions: tuple[str, ...]  # the deviating ones, by key

    @property
    def unchecked(self) -> int:
        return self.cases - self.checked


@dataclass(frozen=True)
class RuleDeviations:
    """A rule of a playbook and the sessions in the window that broke it."""

    playbook: str
    rule: str
    sessions: int
    breaches: int  # a rule broken at several events counts each
    example: str  # its commonest detail
    session_keys: tuple[str, ...]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    count: int
    median_ms: float | None
    failures: int = 0  # of these transitions, those out of a failed step


@dataclass(frozen=True)
class ActivityFigures:
    activity: str
    count: int
    cases: int
    failure_rate: float
    median_ms: float | None


@dataclass(frozen=True)
class Variant:
    """The cases that went through the same set of activities (in any order, any number of times)."""

    activities: tuple[str, ...]  # in their typical order of first occurrence
    cases: int
    example: str  # one of its cases' session key


@dataclass(frozen=True)
class ModelTokens:
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = None  # of its calls whose price is known
    unpriced_calls: int = 0  # calls with tokens and no known price


@dataclass(frozen=True)
class Outcome:
    """How the sessions of one group ended: `by` is "all", "agent" or "workflow", `name` the agent's or
    workflow's."""

    by: str
    name: str
    cases: int
    completed: int
    partial: int
    failed: int
    input_tokens: int = 0  # of the sessions' model calls
    output_tokens: int = 0
    cost_usd: float | None = None  # of the calls whose price is known

    @property
    def success_rate(self) -> float:
        """The share that did not end on a failure (completed, or recovered from failures: partial)."""
        return (self.completed + self.partial) / self.cases if self.cases else 0.0


@dataclass(frozen=True)
class FailingActivity:
    activity: str
    failures: int
    count: int  # every occurrence, failed or not
    top_errors: tuple[tuple[str, int], ...]  # (message, occurrences), most common first; "" = none given


@dataclass(frozen=True)
class SessionRef:
    """A session to open (its key is its partition) and what it is about."""

    session_key: str
    agent: str | None
    workflow: str | None
    status: str | None = None
    duration_ms: int | None = None
    end: dt.datetime | None = None
    error: str | None = None
    cost_usd: float | None = None


@dataclass(frozen=True)
class ProcessOverview:
    since: dt.datetime
    cases: int
    events: int
    edges: tuple[Edge, ...]
    activities: tuple[ActivityFigures, ...]
    variants: tuple[Variant, ...]
    models: tuple[ModelTokens, ...]
    distinct_paths: int = 0  # exact sequences of activities
    outcomes: tuple[Outcome, ...] = ()
    failing: tuple[FailingActivity, ...] = ()
    slowest: tuple[SessionRef, ...] = ()
    failed_sessions: tuple[SessionRef, ...] = ()
    costliest: tuple[SessionRef, ...] = ()
    conformance: tuple[AgentConformance, ...] = ()
    deviations: tuple[RuleDeviations, ...] = ()

    @property
    def overall(self) -> Outcome:
        return next((o for o in self.outcomes if o.by == "all"), Outcome("all", "", 0, 0, 0, 0))

    def outcomes_by(self, by: str) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.by == by)


def compute_overview(
    con: duckdb.DuckDBPyConnection, since: dt.datetime, top_variants: int = 10, top: int = 10
) -> ProcessOverview:
    """Every figure of the overview for the cases in the window starting at `since`; `top` rows of the
    failing activities, slowest and failed sessions."""
    window = {"since": since}
    totals = con.execute(_TOTALS_SQL, window).fetchone()
    assert totals is not None, "an aggregate without GROUP BY returns one row"
    cases, events = totals
    return ProcessOverview(
        since=since,
        cases=cases,
        events=events,
        edges=tuple(Edge(*row) for row in con.execute(_EDGES_SQL, window).fetchall()),
        activities=tuple(ActivityFigures(*row) for row in con.execute(_ACTIVITIES_SQL, window).fetchall()),
        variants=tuple(
            Variant(tuple(activities), n, example)
            for activities, n, example in con.execute(_VARIANTS_SQL, {**window, "top": top_variants}).fetchall()
        ),
        distinct_paths=_one(con, _PATHS_SQL, window),
        models=tuple(ModelTokens(*row) for row in con.execute(_MODELS_SQL, window).fetchall()),
        outcomes=tuple(Outcome(*row) for row in con.execute(_OUTCOMES_SQL, window).fetchall()),
        failing=tuple(
            FailingActivity(activity, failures, count, tuple((e["error"], e["n"]) for e in top_errors))
            for activity, failures, count, top_errors in con.execute(_FAILING_SQL, {**window, "top": top}).fetchall()
        ),
        slowest=tuple(
            SessionRef(key, agent, workflow, status=status, duration_ms=ms)
            for key, agent, workflow, status, ms in con.execute(_SLOWEST_SQL, {**window, "top": top}).fetchall()
        ),
        failed_sessions=tuple(
            SessionRef(key, agent, workflow, status="failed", end=end, error=error)
            for key, agent, workflow, end, error in con.execute(
                _FAILED_SESSIONS_SQL, {**window, "top": top}
            ).fetchall()
        ),
        costliest=tuple(
            SessionRef(key, agent, workflow, status=status, cost_usd=cost)
            for key, agent, workflow, status, cost in con.execute(_COSTLIEST_SQL, {**window, "top": top}).fetchall()
        ),
        conformance=tuple(
            AgentConformance(agent, cases, checked, deviating, tuple(rules), tuple(sessions))
            for agent, cases, checked, deviating, rules, sessions in con.execute(_CONFORMANCE_SQL, window).fetchall()
        ),
        deviations=tuple(
            RuleDeviations(playbook, rule, n, breaches, example, tuple(keys))
            for playbook, rule, n, breaches, example, keys in con.execute(_RULES_SQL, window).fetchall()
        ),
    )


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, object]) -> int:
    row = con.execute(sql, params).fetchone()
    assert row is not None, "an aggregate without GROUP BY returns one row"
    return int(row[0])

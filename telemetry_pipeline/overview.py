"""The process as Signavio will mine it, from the canonical model over a recent window: directly-follows
relations (with the start and end of each case), per-activity figures, top variants and per-model
token sums. Set-based DuckDB SQL over `sessions` and `events`; no Dagster here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

START, END = "▶ start", "■ end"  # pseudo-activities: where cases begin and end on the map

# The window: sessions that reached the warehouse (were normalised) at or after $since, i.e. what was
# exported recently, whatever the age of the events themselves (a backfill of old sessions counts).
_WINDOW = """
cases AS (
    SELECT session_key FROM sessions WHERE normalized_at >= $since
),
ev AS (
    SELECT e.session_key, e.activity, e.event_time, e.end_time, e.status, e.latency_ms, e.model,
           e.input_tokens, e.output_tokens,
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
    SELECT session_key, activity, event_time,
           lead(activity, 1, '{END}') OVER w AS next_activity,
           lead(event_time) OVER w AS next_time,
           pos
    FROM ev WINDOW w AS (PARTITION BY session_key ORDER BY pos)
),
pairs AS (
    SELECT '{START}' AS source, activity AS target, NULL::DOUBLE AS ms FROM steps WHERE pos = 1
    UNION ALL
    SELECT activity, next_activity, date_diff('millisecond', event_time, next_time)::DOUBLE FROM steps
)
SELECT source, target, count(*) AS n, median(ms) AS median_ms
FROM pairs GROUP BY ALL ORDER BY n DESC, source, target
"""

_ACTIVITIES_SQL = f"""
WITH {_WINDOW}
SELECT activity, count(*) AS n, count(DISTINCT session_key) AS cases,
       count(*) FILTER (WHERE status = 'failed') / count(*) AS failure_rate,
       median(coalesce(latency_ms, date_diff('millisecond', event_time, end_time))) AS median_ms
FROM ev GROUP BY activity ORDER BY n DESC, activity
"""

_VARIANTS_SQL = f"""
WITH {_WINDOW},
per_case AS (SELECT session_key, list(activity ORDER BY pos) AS trace FROM ev GROUP BY session_key)
SELECT trace, count(*) AS cases FROM per_case GROUP BY trace ORDER BY cases DESC, len(trace), trace::VARCHAR LIMIT $top
"""

_MODELS_SQL = f"""
WITH {_WINDOW}
SELECT model, count(*) AS calls, coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens
FROM ev WHERE model IS NOT NULL GROUP BY model
ORDER BY coalesce(sum(input_tokens), 0) + coalesce(sum(output_tokens), 0) DESC, model
"""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    count: int
    median_ms: float | None


@dataclass(frozen=True)
class ActivityFigures:
    activity: str
    count: int
    cases: int
    failure_rate: float
    median_ms: float | None


@dataclass(frozen=True)
class Variant:
    trace: tuple[str, ...]
    cases: int


@dataclass(frozen=True)
class ModelTokens:
    model: str
    calls: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class ProcessOverview:
    since: dt.datetime
    cases: int
    events: int
    edges: tuple[Edge, ...]
    activities: tuple[ActivityFigures, ...]
    variants: tuple[Variant, ...]
    models: tuple[ModelTokens, ...]


def compute_overview(con: duckdb.DuckDBPyConnection, since: dt.datetime, top_variants: int = 10) -> ProcessOverview:
    """Every figure of the overview for the cases in the window starting at `since`."""
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
            Variant(tuple(trace), n)
            for trace, n in con.execute(_VARIANTS_SQL, {**window, "top": top_variants}).fetchall()
        ),
        models=tuple(ModelTokens(*row) for row in con.execute(_MODELS_SQL, window).fetchall()),
    )

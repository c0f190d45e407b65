"""Data-quality checks on one upload (the two tables a batch sends), computed in DuckDB over the
rendered Arrow tables, so they cost a few scans of data already in memory. No Dagster here: the asset turns
each `CheckOutcome` into an asset check result that warns and never blocks the upload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from telemetry_pipeline.canonical.activity import looks_like_id
from telemetry_pipeline.canonical.model import Conformance, Outcome
from telemetry_pipeline.warehouse import engine

SAMPLE = 5  # offending values named in a check's metadata

EVENT_ID_UNIQUE = "event_id_unique"
EVENTS_HAVE_CASE = "events_have_case"
EVENT_TIMES_VALID = "event_times_valid"
ACTIVITY_ALPHABET = "activity_alphabet"
MODEL_PRICES_KNOWN = "model_prices_known"
PLAYBOOK_CONFORMANCE = "playbook_conformance"
AGENT_OUTCOME = "agent_outcome"

DESCRIPTIONS = {
    AGENT_OUTCOME: "Not about the data: how the agents' runs ended. Every session of the upload was exported (its "
    "materialisation says so); this check WARNs when an agent's run ended on a failure, and names those sessions "
    "(`agent_outcome` on each session's page says it in words).",
    EVENT_ID_UNIQUE: "`event_id` is unique within each upload of the events table.",
    EVENTS_HAVE_CASE: "Every event's `case_id` has a row in the case table of the same upload.",
    EVENT_TIMES_VALID: "Every event has an `event_time`, and `event_time` <= `end_time` where an end is given.",
    ACTIVITY_ALPHABET: "Distinct activities per upload stay under the limit, and no activity label holds an id.",
    MODEL_PRICES_KNOWN: "Every model call with tokens has a cost: the trace's own, or a price the table knows for its "
    "model (an unknown model leaves `cost_usd` empty; the check names it).",
    PLAYBOOK_CONFORMANCE: "No session of the upload broke a rule of its agent's playbook (`PLAYBOOKS_FILE`); the "
    "check names the deviating sessions and the rules they broke (`conformance` and `deviations` in the case table).",
}


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


def check_upload(runs: pd.DataFrame, events: pd.DataFrame, alphabet_limit: int) -> list[CheckOutcome]:
    """The checks over one batch's `<dataset>_runs` and `<dataset>_events` frames."""
    con = engine.connect()
    try:
        con.register("up_runs", runs)
        con.register("up_events", events)
        return [
            _agent_outcome(con),
            _unique_ids(con),
            _events_have_case(con),
            _times_valid(con),
            _alphabet(con, alphabet_limit),
            _prices_known(con),
            _conformance(con),
        ]
    finally:
        con.close()


def combine(earlier: list[CheckOutcome], later: list[CheckOutcome]) -> list[CheckOutcome]:
    """One outcome per check over a run's uploads (its chunks): passed when it passed on each; counts added (the
    distinct activities: the most of one upload, as the check is per upload), samples and maps joined."""
    if not earlier:
        return later
    before = {o.name: o for o in earlier}
    return [CheckOutcome(o.name, o.passed and before[o.name].passed,
                         {k: _joined(k, before[o.name].metadata.get(k), v) for k, v in o.metadata.items()})
            if o.name in before else o for o in later]


def _joined(name: str, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if name in ("distinct_activities", "limit"):
        return max(a, b)
    if isinstance(b, bool) or not isinstance(b, int | list | dict):
        return b
    if isinstance(b, int):
        return a + b
    if isinstance(b, list):
        return list(dict.fromkeys(a + b))[:SAMPLE]
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def _agent_outcome(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    counts = dict(con.execute("SELECT status, count(*) FROM up_runs GROUP BY ALL").fetchall())
    failed = _column(con, "SELECT source || ':' || agent_run_id FROM up_runs WHERE status = 'failed' ORDER BY 1 "
                          f"LIMIT {SAMPLE}")
    return CheckOutcome(AGENT_OUTCOME, not counts.get(Outcome.FAILED), {
        **{o.value: counts.get(o, 0) for o in Outcome}, "failed_sessions_sample": failed})


def _unique_ids(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    rows, duplicated = _row(con, "SELECT count(*), count(*) - count(DISTINCT event_id) FROM up_events")
    sample = _column(con, f"SELECT event_id FROM up_events GROUP BY ALL HAVING count(*) > 1 LIMIT {SAMPLE}")
    return CheckOutcome(EVENT_ID_UNIQUE, duplicated == 0, {"events": rows, "duplicates": duplicated, "sample": sample})


def _events_have_case(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    orphans = _column(
        con,
        "SELECT DISTINCT e.case_id FROM up_events e ANTI JOIN up_runs r ON e.case_id = r.agent_run_id",
    )
    return CheckOutcome(EVENTS_HAVE_CASE, not orphans, {"cases_without_row": len(orphans), "sample": orphans[:SAMPLE]})


def _times_valid(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    missing, reversed_ = _row(
        con,
        "SELECT count(*) FILTER (WHERE event_time IS NULL), count(*) FILTER (WHERE end_time < event_time) "
        "FROM up_events",
    )
    sample = _column(
        con, f"SELECT event_id FROM up_events WHERE event_time IS NULL OR end_time < event_time LIMIT {SAMPLE}"
    )
    return CheckOutcome(
        EVENT_TIMES_VALID, missing == 0 and reversed_ == 0,
        {"without_time": missing, "end_before_start": reversed_, "sample": sample},
    )


def _alphabet(con: duckdb.DuckDBPyConnection, limit: int) -> CheckOutcome:
    (distinct,) = _row(con, "SELECT count(DISTINCT activity) FROM up_events")
    # An activity that holds an id (the rule activity names are made by) or its case's own id makes the process
    # map explode into one activity per case.
    labels = _column(con, "SELECT DISTINCT activity FROM up_events WHERE activity IS NOT NULL")
    holding_case = set(_column(
        con, "SELECT DISTINCT activity FROM up_events WHERE length(case_id) >= 4 AND contains(activity, case_id)"
    ))
    id_like = sorted(a for a in labels if a in holding_case or looks_like_id(a))[:SAMPLE]
    return CheckOutcome(
        ACTIVITY_ALPHABET, distinct <= limit and not id_like,
        {"distinct_activities": distinct, "limit": limit, "id_like_sample": id_like},
    )


def _prices_known(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    unpriced = "model IS NOT NULL AND cost_usd IS NULL AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL)"
    calls, missing = _row(con, f"SELECT count(*) FILTER (WHERE model IS NOT NULL), count(*) FILTER (WHERE {unpriced}) "
                               "FROM up_events")
    models = _column(con, f"SELECT model FROM up_events WHERE {unpriced} GROUP BY model ORDER BY count(*) DESC, model "
                          f"LIMIT {SAMPLE}")
    return CheckOutcome(MODEL_PRICES_KNOWN, missing == 0,
                        {"model_calls": calls, "without_cost": missing, "models_sample": models})


def _conformance(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    verdicts = dict(con.execute("SELECT conformance, count(*) FROM up_runs GROUP BY ALL").fetchall())
    deviating = f"conformance = '{Conformance.DEVIATING}'"
    sessions = _column(con, f"SELECT source || ':' || agent_run_id FROM up_runs WHERE {deviating} "
                            f"ORDER BY deviation_count DESC, 1 LIMIT {SAMPLE}")
    rules = dict(con.execute(
        "SELECT d->>'rule', count(DISTINCT id) FROM (SELECT agent_run_id AS id, unnest(deviations::JSON[]) AS d "
        f"FROM up_runs WHERE {deviating}) WHERE d->>'rule' IS NOT NULL GROUP BY ALL ORDER BY 2 DESC, 1"
    ).fetchall())
    return CheckOutcome(PLAYBOOK_CONFORMANCE, not verdicts.get(Conformance.DEVIATING), {
        **{v.value: verdicts.get(v, 0) for v in Conformance},
        "sessions_sample": sessions,
        "rules_broken": rules,  # rule -> deviating sessions that broke it
    })


def _row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    row = con.execute(sql).fetchone()
    assert row is not None, "an aggregate without GROUP BY returns one row"
    return row


def _column(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    return [row[0] for row in con.execute(sql, params or {}).fetchall()]

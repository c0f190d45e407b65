"""Each session checked against the playbooks that match it (`playbooks.py`), set-based in DuckDB over the batch's
canonical rows: its verdict (`sessions.conformance`: conforming | deviating | unchecked) and the rules it broke
(`deviations`, one row per breach, at the event that broke it or by the session as a whole), replaced per session.

The playbooks become four small tables (matches, named lists, precedence pairs, limits) and every rule is one join:
a tool or model outside its allowed list, a forbidden activity, a required one that never happened, the second of
a precedence pair with no first before it, a figure over its limit (steps: event-log rows; cost: of the model
calls; duration: from the first event to the last; tool errors: failed tool calls). No Python loop over events.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa

from telemetry_pipeline.canonical.model import DEVIATIONS, Conformance
from telemetry_pipeline.canonical.replace import duckdb_transaction, replace_rows
from telemetry_pipeline.policy.playbooks import ALLOW_LISTS, LIMITS, NAME_LISTS, Playbook


def _number(sql: str) -> str:
    """A figure as people write it: 12, 0.5 (not 12.0, 0.500000)."""
    return f"CASE WHEN {sql} = trunc({sql}) THEN {sql}::BIGINT::VARCHAR ELSE round({sql}, 6)::VARCHAR END"


_FOUND = f"""
CREATE OR REPLACE TEMP TABLE found AS
WITH matched AS (
    SELECT s.session_key, p.playbook FROM sessions s JOIN pb_playbooks p
      ON (p.agent IS NULL OR p.agent = s.agent_name) AND (p.workflow IS NULL OR p.workflow = s.workflow_name)
    WHERE s.session_key IN (SELECT unnest($keys::VARCHAR[]))
),
ev AS (
    SELECT e.*, row_number() OVER (PARTITION BY e.session_key ORDER BY e.event_time, e.seq) AS pos
    FROM events e WHERE e.session_key IN (SELECT session_key FROM matched)
),
limited AS (  -- each playbook's lists that exist (an empty `allowed_tools: []` allows none)
    SELECT DISTINCT playbook, rule FROM pb_lists
    UNION SELECT playbook, rule FROM pb_empty
),
figures AS (  -- the case table's own figures: its rows in the event log, cost, latency, tool errors
    SELECT s.session_key, count(e.event_id)::DOUBLE AS max_steps, coalesce(sum(e.cost_usd), 0) AS max_cost_usd,
           coalesce(date_diff('millisecond', any_value(s.start_time), any_value(s.end_time)), 0) / 1000.0
               AS max_duration_s,
           count(*) FILTER (WHERE e.tool_name IS NOT NULL AND e.status = 'failed')::DOUBLE AS max_tool_errors
    FROM sessions s LEFT JOIN ev e USING (session_key)
    WHERE s.session_key IN (SELECT session_key FROM matched) GROUP BY s.session_key
)
SELECT m.session_key, m.playbook, 'allowed_tools' AS rule, e.event_id,
       'tool ' || e.tool_name || ' is not allowed' AS detail
FROM matched m JOIN ev e USING (session_key) JOIN limited l ON l.playbook = m.playbook AND l.rule = 'allowed_tools'
WHERE e.tool_name IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM pb_lists a WHERE a.playbook = m.playbook AND a.rule = 'allowed_tools' AND a.name = e.tool_name)
UNION ALL
SELECT m.session_key, m.playbook, 'allowed_models', e.event_id, 'model ' || e.model || ' is not allowed'
FROM matched m JOIN ev e USING (session_key) JOIN limited l ON l.playbook = m.playbook AND l.rule = 'allowed_models'
WHERE e.model IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM pb_lists a WHERE a.playbook = m.playbook AND a.rule = 'allowed_models' AND a.name = e.model)
UNION ALL
SELECT m.session_key, m.playbook, 'forbidden_activities', e.event_id, e.activity || ' is forbidden'
FROM matched m JOIN ev e USING (session_key)
JOIN pb_lists f ON f.playbook = m.playbook AND f.rule = 'forbidden_activities' AND f.name = e.activity
UNION ALL
SELECT m.session_key, m.playbook, 'required_activities', NULL, r.name || ' never happened'
FROM matched m JOIN pb_lists r ON r.playbook = m.playbook AND r.rule = 'required_activities'
WHERE NOT EXISTS (SELECT 1 FROM ev e WHERE e.session_key = m.session_key AND e.activity = r.name)
UNION ALL
SELECT m.session_key, m.playbook, 'precedence', b.event_id, b.activity || ' without ' || p.first || ' before it'
FROM matched m JOIN pb_pairs p ON p.playbook = m.playbook
JOIN ev b ON b.session_key = m.session_key AND b.activity = p.second
WHERE NOT EXISTS (
    SELECT 1 FROM ev a WHERE a.session_key = b.session_key AND a.activity = p.first AND a.pos < b.pos)
UNION ALL
SELECT m.session_key, m.playbook, l.rule, NULL,
       format('{{}} {{}}, over the limit of {{}}', replace(l.rule, 'max_', ''), {_number("v.value")},
              {_number("l.bound")})
FROM matched m JOIN pb_limits l ON l.playbook = m.playbook
JOIN (UNPIVOT figures ON {", ".join(LIMITS)} INTO NAME rule VALUE value) v
  ON v.session_key = m.session_key AND v.rule = l.rule
WHERE v.value > l.bound
"""

_VERDICTS = f"""
CREATE OR REPLACE TEMP TABLE verdicts AS
SELECT s.session_key,
       CASE WHEN s.session_key NOT IN (SELECT session_key FROM sessions t JOIN pb_playbooks p
                                       ON (p.agent IS NULL OR p.agent = t.agent_name)
                                      AND (p.workflow IS NULL OR p.workflow = t.workflow_name))
            THEN '{Conformance.UNCHECKED}'
            WHEN s.session_key IN (SELECT session_key FROM found) THEN '{Conformance.DEVIATING}'
            ELSE '{Conformance.CONFORMING}' END AS conformance
FROM sessions s WHERE s.session_key IN (SELECT unnest($keys::VARCHAR[]))
"""

_ROWS = """
SELECT DISTINCT md5(concat_ws(chr(31), session_key, playbook, rule, coalesce(event_id, ''), detail)) AS deviation_id,
       session_key, playbook, rule, detail, event_id
FROM found
"""


def check_conformance(con: duckdb.DuckDBPyConnection, keys: Sequence[str], playbooks: Sequence[Playbook]) -> None:
    """Replace the verdict and the deviations of the sessions `keys` (their canonical rows are in `con`)."""
    keys = list(keys)
    if not keys:
        return
    if not playbooks:  # every case unchecked, and what an earlier playbook found goes
        replace_rows(duckdb_transaction(con), (DEVIATIONS,), keys, lambda cur: cur.execute(
            "UPDATE sessions SET conformance = $verdict WHERE session_key IN (SELECT unnest($keys::VARCHAR[]))",
            {"verdict": Conformance.UNCHECKED.value, "keys": keys}))
        return
    tables = _tables(playbooks)
    for name, table in tables.items():
        con.register(name, table)
    try:
        con.execute(_FOUND, {"keys": keys})
        con.execute(_VERDICTS, {"keys": keys})

        def insert(cur: duckdb.DuckDBPyConnection) -> None:
            cur.execute(DEVIATIONS.insert_sql(f"({_ROWS})"))
            cur.execute("UPDATE sessions s SET conformance = v.conformance FROM verdicts v "
                        "WHERE s.session_key = v.session_key")

        replace_rows(duckdb_transaction(con), (DEVIATIONS,), keys, insert)
    finally:
        con.execute("DROP TABLE IF EXISTS found")
        con.execute("DROP TABLE IF EXISTS verdicts")
        for name in tables:
            con.unregister(name)


def _tables(playbooks: Sequence[Playbook]) -> dict[str, pa.Table]:
    """The playbooks as four small Arrow tables the SQL joins against."""
    lists = [(p.name, rule, name) for p in playbooks for rule in NAME_LISTS for name in getattr(p, rule) or ()]
    # an allowed list that is there and empty allows nothing; absent (None), it allows everything
    empty = [(p.name, rule) for p in playbooks for rule in ALLOW_LISTS if getattr(p, rule) == ()]
    pairs = [(p.name, a, b) for p in playbooks for a, b in p.precedence]
    limits = [(p.name, rule, float(getattr(p, rule))) for p in playbooks for rule in LIMITS
              if getattr(p, rule) is not None]
    return {
        "pb_playbooks": _table(["playbook", "agent", "workflow"], [(p.name, p.agent, p.workflow) for p in playbooks]),
        "pb_lists": _table(["playbook", "rule", "name"], lists),
        "pb_empty": _table(["playbook", "rule"], empty),
        "pb_pairs": _table(["playbook", "first", "second"], pairs),
        "pb_limits": _table(["playbook", "rule", "bound"], limits),
    }


def _table(names: list[str], rows: Sequence[tuple[object, ...]]) -> pa.Table:
    types = {"bound": pa.float64()}
    return pa.table({name: pa.array([row[i] for row in rows], types.get(name, pa.string()))
                     for i, name in enumerate(names)})

"""Canonical rows -> the two Signavio tables as pandas DataFrames (Arrow-backed dtypes, taken from DuckDB's result
without a copy: what a user extending the CSV step knows), and their CSV, which DuckDB writes from the frames.

Measured per batch of 500 LangGraph sessions (6,000 events): the frames cost 1 ms to make from Arrow and the
CSV from them 73 ms against 66 ms from Arrow (0.016 ms a session, under 1 % of our own work); pandas' own
`to_csv` took 328 ms, so DuckDB writes the bytes.

The case table's aggregate columns (tools used, LLM calls, process steps, summaries) are derived
from the canonical `events` here, in SQL, so every source gets them the same way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from telemetry_pipeline.canonical.content import Governance
from telemetry_pipeline.canonical.identity import USER
from telemetry_pipeline.canonical.model import Conformance
from telemetry_pipeline.signavio.models import TableUpload
from telemetry_pipeline.signavio.schema import EVENTS, RUNS, Table


def _bounded(items: str, what: str) -> str:
    """A JSON list cell of the case table kept under $cell characters: its first items, then
    `{"cut": "N more <what>"}`."""
    whole = f"length(to_json({items})::VARCHAR)"
    keep = f"greatest(1, (len({items}) * ($cell - 40) // {whole})::BIGINT)"
    cut = f"json_object('cut', printf('%d more {what}', len({items}) - {keep}))"
    kept = f"list_append(list_slice({items}, 1, {keep}), {cut})"
    return f"CASE WHEN {whole} <= $cell THEN to_json({items}) ELSE to_json({kept}) END"


# Times leave as epoch milliseconds, floored: epoch_ms() alone truncates some sub-millisecond instants
# before 1970 toward zero (0514-03-17 15:07:26.001982 gave ...753998 instead of ...753999).
_RUNS_SQL = f"""
WITH batch AS (SELECT unnest($keys::VARCHAR[]) AS session_key),
ev AS (SELECT * FROM events WHERE session_key IN (SELECT session_key FROM batch)),
tools AS (
    SELECT session_key, to_json(list(json_object(
               'tool_name', tool_name, 'call_count', n, 'success_count', ok, 'error_count', failed,
               'total_latency_ms', latency, 'error_details', last_error) ORDER BY tool_name)) AS tools_used,
           sum(n) AS calls, sum(ok) AS calls_ok, sum(failed) AS calls_failed, count(*) AS tool_types,
           sum(latency) / nullif(sum(n), 0) AS avg_latency
    FROM (SELECT session_key, tool_name, count(*) AS n, count(*) FILTER (WHERE status = 'success') AS ok,
                 count(*) FILTER (WHERE status = 'failed') AS failed, sum(latency_ms) AS latency,
                 arg_max(error, event_time) FILTER (WHERE error IS NOT NULL) AS last_error
          FROM ev WHERE tool_name IS NOT NULL GROUP BY ALL)
    GROUP BY session_key
),
llm AS (
    SELECT session_key, to_json(list(json_object(
               'model', model, 'purpose', purpose, 'call_count', n, 'input_tokens', tin, 'output_tokens', tout,
               'total_latency_ms', latency) ORDER BY model, purpose)) AS llm_calls,
           count(DISTINCT model) AS models
    FROM (SELECT session_key, model, coalesce(attributes->>'purpose', 'general') AS purpose, count(*) AS n,
                 sum(input_tokens) AS tin, sum(output_tokens) AS tout, sum(latency_ms) AS latency
          FROM ev WHERE model IS NOT NULL GROUP BY ALL)
    GROUP BY session_key
),
all_steps AS (
    SELECT session_key,
           list(json_object(
               'step_name', activity, 'start_time', epoch_ms(date_trunc('millisecond', event_time)),
               'end_time', epoch_ms(date_trunc('millisecond', end_time)),
               'status', status, 'duration_ms', latency_ms) ORDER BY event_time, seq) AS step_list,
           count(*) FILTER (WHERE event_type = 'model_change') AS model_changes,
           count(*) AS activities
    FROM ev GROUP BY session_key
),
figures AS (  -- what a miner adds up: the model calls' tokens and cost, tool calls, the agents that acted
    SELECT session_key,
           coalesce(sum(input_tokens) FILTER (WHERE model IS NOT NULL), 0) AS input_tokens,
           coalesce(sum(output_tokens) FILTER (WHERE model IS NOT NULL), 0) AS output_tokens,
           sum(cost_usd) AS cost_usd,
           count(*) FILTER (WHERE model IS NOT NULL AND tool_name IS NULL) AS llm_call_count,
           count(*) FILTER (WHERE tool_name IS NOT NULL) AS tool_call_count,
           count(*) FILTER (WHERE tool_name IS NOT NULL AND status = 'failed') AS tool_error_count,
           count(DISTINCT resource) FILTER (WHERE resource <> '{USER}') AS agent_count
    FROM ev GROUP BY session_key
),
breaches AS (  -- the rules it broke, each once (with how often), bounded as the steps are
    SELECT session_key, sum(n) AS deviation_count,
           list(json_object('playbook', playbook, 'rule', rule,
                            'detail', CASE WHEN n > 1 THEN printf('%s (%d times)', detail, n) ELSE detail END)
                ORDER BY playbook, rule, detail) AS breach_list
    FROM (SELECT session_key, playbook, rule, detail, count(*) AS n FROM deviations
          WHERE session_key IN (SELECT session_key FROM batch) GROUP BY ALL)
    GROUP BY session_key
),
deviated AS (
    SELECT session_key, deviation_count,
           {_bounded("breach_list", "deviations")} AS deviations
    FROM breaches
),
steps AS (  -- a cell stays under $cell characters: the first steps, then how many more there were
    SELECT session_key, model_changes, activities,
           {_bounded("step_list", "steps")} AS process_steps
    FROM all_steps
)
SELECT s.session_id AS agent_run_id, s.agent_name, s.session_id AS task_id, s.task_description,
       epoch_ms(date_trunc('millisecond', s.start_time)) AS start_time,
       epoch_ms(date_trunc('millisecond', s.end_time)) AS end_time, s.status,
       printf('%d tool calls (%d succeeded, %d failed); %d model changes; status %s',
              coalesce(t.calls, 0), coalesce(t.calls_ok, 0), coalesce(t.calls_failed, 0),
              coalesce(st.model_changes, 0), s.status) AS outcome_summary,
       date_diff('millisecond', s.start_time, s.end_time) AS latency_ms,
       printf('Total events: %d | Activities: %d | Tools: %d types | Models: %d | Average tool latency: %s ms',
              s.event_count, coalesce(st.activities, 0), coalesce(t.tool_types, 0), coalesce(l.models, 0),
              coalesce(round(t.avg_latency, 1)::VARCHAR, 'n/a')) AS notes,
       s.service_name, s.workflow_name, s.workflow_version, s.agent_type, s.agent_state,
       s.prompt_metrics::VARCHAR AS prompt_metrics, t.tools_used::VARCHAR AS tools_used,
       l.llm_calls::VARCHAR AS llm_calls, st.process_steps::VARCHAR AS process_steps,
       s.source, s.event_count,
       coalesce(f.input_tokens, 0) AS input_tokens, coalesce(f.output_tokens, 0) AS output_tokens, f.cost_usd,
       coalesce(f.llm_call_count, 0) AS llm_call_count, coalesce(f.tool_call_count, 0) AS tool_call_count,
       coalesce(f.tool_error_count, 0) AS tool_error_count, coalesce(f.agent_count, 0) AS agent_count,
       coalesce(s.conformance, '{Conformance.UNCHECKED}') AS conformance,
       coalesce(d.deviation_count, 0) AS deviation_count,
       coalesce(d.deviations::VARCHAR, CASE WHEN s.conformance = '{Conformance.CONFORMING}' THEN '[]' END)
           AS deviations
FROM sessions s
LEFT JOIN tools t USING (session_key) LEFT JOIN llm l USING (session_key) LEFT JOIN steps st USING (session_key)
LEFT JOIN figures f USING (session_key) LEFT JOIN deviated d USING (session_key)
WHERE s.session_key IN (SELECT session_key FROM batch)
ORDER BY s.session_key
"""

_EVENTS_SQL = """
SELECT e.event_id, s.session_id AS case_id, e.activity,
       epoch_ms(date_trunc('millisecond', e.event_time)) AS event_time,
       epoch_ms(date_trunc('millisecond', e.end_time)) AS end_time, e.resource, e.event_type, e.status, e.tool_name,
       e.model, e.latency_ms, e.input_tokens, e.output_tokens, e.error, e.attributes::VARCHAR AS attributes, s.source,
       e.cost_usd, d.deviation
FROM events e JOIN sessions s USING (session_key)
LEFT JOIN (SELECT event_id, string_agg(DISTINCT rule, ', ' ORDER BY rule) AS deviation FROM deviations
           WHERE event_id IS NOT NULL AND session_key IN (SELECT unnest($keys::VARCHAR[])) GROUP BY event_id) d
  USING (event_id)
WHERE e.session_key IN (SELECT unnest($keys::VARCHAR[]))
ORDER BY e.session_key, e.event_time, e.seq
"""


@dataclass(frozen=True)
class RenderedBatch:
    uploads: tuple[TableUpload, TableUpload]  # runs, events
    rows_by_session: dict[str, tuple[int, int]]  # key -> (runs rows, events rows)
    runs: pd.DataFrame  # the tables the CSV was written from, for the data-quality checks
    events: pd.DataFrame


def render(con: duckdb.DuckDBPyConnection, keys: Sequence[str], dataset: str,
           cell_max_chars: int = Governance.attributes_max_chars) -> RenderedBatch:
    """Both tables for the sessions in `keys` (which must already be normalised); no JSON cell of the case table
    over `cell_max_chars` (the event log's cells were bounded by `govern`)."""
    keys = list(keys)
    runs = _frame(con.sql(_RUNS_SQL, params={"keys": keys, "cell": cell_max_chars}))
    events = _frame(con.sql(_EVENTS_SQL, params={"keys": keys}))
    counts = dict(
        con.execute(
            "SELECT session_key, count(*) FROM events WHERE session_key IN (SELECT unnest($keys::VARCHAR[])) "
            "GROUP BY session_key",
            {"keys": keys},
        ).fetchall()
    )
    return RenderedBatch(
        uploads=(_upload(con, RUNS, runs, dataset), _upload(con, EVENTS, events, dataset)),
        rows_by_session={k: (1, counts.get(k, 0)) for k in keys},
        runs=runs,
        events=events,
    )


def _frame(relation: duckdb.DuckDBPyRelation) -> pd.DataFrame:
    return relation.to_arrow_table().to_pandas(types_mapper=pd.ArrowDtype)


def _upload(con: duckdb.DuckDBPyConnection, table: Table, rows: pd.DataFrame, dataset: str) -> TableUpload:
    if list(rows.columns) != table.column_names:
        raise AssertionError(f"{table.suffix}: query columns {list(rows.columns)} != schema {table.column_names}")
    return TableUpload(
        table=table.name(dataset),
        schema=table.avro_schema(dataset),
        primary_keys=table.primary_key,
        csv=to_csv_bytes(con, rows),
        rows=len(rows),
    )


def to_csv_bytes(con: duckdb.DuckDBPyConnection, rows: pd.DataFrame) -> bytes:
    """RFC 4180 CSV, UTF-8, header row, CRLF line ends, empty cell for null, a value quoted only when it holds the
    delimiter, a quote or a line break.

    DuckDB writes it from the frame (pandas' own writer is 4.5 times slower). A value holding a lone
    `\\r` is quoted as one holding `\\n` is, so no reader splits its record. An empty text leaves as an empty
    cell, as null does (DuckDB alone would write `""`), the same bytes as before.
    """
    cells = ", ".join(
        f'nullif("{name}", \'\') AS "{name}"' if _is_text(dtype) else f'"{name}"' for name, dtype in rows.dtypes.items()
    )
    name = "csv_rows"
    con.register(name, rows)
    try:
        with tempfile.TemporaryDirectory(prefix="signavio-csv-") as tmp:
            path = Path(tmp) / "table.csv"
            con.execute(f"COPY (SELECT {cells} FROM {name}) TO '{path}' (FORMAT csv, HEADER, NEW_LINE '\r\n')")
            return path.read_bytes()
    finally:
        con.unregister(name)


def _is_text(dtype: object) -> bool:
    arrow = dtype.pyarrow_dtype if isinstance(dtype, pd.ArrowDtype) else None
    return arrow is not None and (pa.types.is_string(arrow) or pa.types.is_large_string(arrow))

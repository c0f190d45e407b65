"""Normalise the agent-telemetry payload shape (Extract and agent telemetry services) in DuckDB.

Everything is set-based: the whole batch is parsed, unnested, validated and paired in a handful of
SQL statements, so the cost grows with rows, not with Python-level loops over events.

A session fails (and only that session) when its payload is not UTF-8 / not JSON / has no `events`
list, or when one of its events has a timestamp that cannot be read. Unknown event types and fields
are kept: types become their own activities, fields stay in `attributes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa

from telemetry_pipeline.canonical.activity import SQL_MACROS as ACTIVITY_MACROS
from telemetry_pipeline.canonical.identity import AgentDefaults
from telemetry_pipeline.canonical.model import EVENTS, SESSIONS
from telemetry_pipeline.canonical.pairing import (
    CALL_KEYS,
    PAIRING_ORDER_SQL,
    TOOL_CALL_COMPLETED,
    TOOL_CALL_STARTED,
    call_key_sql,
)
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.replace import duckdb_transaction, replace_rows
from telemetry_pipeline.canonical.time import epoch_sql_macro

_MACROS = (
    epoch_sql_macro()
    + ACTIVITY_MACROS
    + """
CREATE OR REPLACE TEMP MACRO finite_ts(t) AS CASE WHEN isfinite(t) THEN t END;
-- A JSON scalar as a long: exact for integers, fractions rounded; NULL, never an error, for anything
-- else (text, NaN, beyond the long range), whose raw value stays in `attributes`.
CREATE OR REPLACE TEMP MACRO to_long(v) AS
    coalesce(try_cast(v AS BIGINT), try_cast(round(try_cast(v AS DOUBLE)) AS BIGINT));
"""
)

# A document is parsed twice, whatever its size: once for every path we read (one `json_extract` of a list of
# paths), once to split its events. Whole-document parses cost a batch's normalising most, in time and in memory
# (DuckDB's JSON functions hold every document of a chunk parsed at once), so a type is tested on the first
# character of the minified JSON `json_extract` wrote, here and for each event and payload.
_SESSION_FIELDS = ("agent_name", "service_name", "workflow_name", "workflow_version", "agent_type", "agent_state")
_PAYLOAD_FIELDS = (
    *CALL_KEYS, "success", "error", "error_details", "model", "latency_ms",
    "input_tokens", "prompt_tokens", "output_tokens", "completion_tokens", "tokens", "prompt", "response",
    "step_name", "provider", "cost", *_SESSION_FIELDS,
)


def _paths(fields: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'$.{f}'" for f in fields) + "]"


def _field(column: str, fields: tuple[str, ...], name: str) -> str:
    return f"{column}[{fields.index(name) + 1}]"


_P = {f: _field("pf", _PAYLOAD_FIELDS, f) for f in _PAYLOAD_FIELDS}
# The case's own attributes: the document's top level, else the Extract `metrics` block (aModels' sample
# carries them there), else the events (whose `service_name` is often the tool's or model's service).
_TOP = (*_SESSION_FIELDS, "metrics.last_user_prompt", *(f"metrics.{f}" for f in _SESSION_FIELDS))
_S = {f: f"coalesce({_field('top', _TOP, f)}, {_field('top', _TOP, 'metrics.' + f)})" for f in _SESSION_FIELDS}
_S["last_user_prompt"] = _field("top", _TOP, "metrics.last_user_prompt")
_DOCUMENT_PATHS = ("events", "metrics", *_TOP)  # one json_extract reads them all into `parts`
_D = {f: _field("parts", _DOCUMENT_PATHS, f) for f in _DOCUMENT_PATHS}

_VALIDATE = f"""
CREATE OR REPLACE TEMP TABLE nb AS
WITH p AS (
    -- JSON is an object exactly when it opens with a brace after JSON's whitespace: an object is parsed once
    -- (`try`: malformed JSON gives NULL), anything else only to tell malformed JSON from another value
    SELECT session_key, source, session_id, text,
           left(ltrim(text, ' ' || chr(9) || chr(10) || chr(13)), 1) = '{{' AS braced,
           CASE WHEN braced THEN try(json_extract(text, {_paths(_DOCUMENT_PATHS)})) END AS parts
    FROM batch_in
)
SELECT session_key, source, session_id, parts,
       CASE WHEN text IS NULL THEN 'payload is not valid UTF-8'
            WHEN parts IS NULL AND (braced OR NOT json_valid(text)) THEN 'payload is not valid JSON'
            WHEN parts IS NULL THEN 'payload is not a JSON object'
            WHEN coalesce(left({_D["events"]}, 1), '') <> '[' THEN 'payload has no "events" list'
       END AS problem
FROM p;
"""

_DOCUMENTS = f"""
CREATE OR REPLACE TEMP TABLE nj AS
SELECT session_key, source, session_id,
       json_extract({_D["events"]}, '$[*]') AS evs,
       [{", ".join(f"{_D[f]} ->> '$'" for f in _TOP)}] AS top,
       CASE WHEN left({_D["metrics"]}, 1) = '{{' THEN {_D["metrics"]} END AS metrics
FROM nb WHERE problem IS NULL;
"""

# One row per source event. `attrs` = the payload plus any unknown top-level keys of the event.
_UNNEST = f"""
CREATE OR REPLACE TEMP TABLE ev AS
WITH u AS (
    SELECT session_key, unnest(evs) AS e, generate_subscripts(evs, 1) - 1 AS seq FROM nj
), t AS (
    SELECT session_key, seq, e, parts[1] ->> '$' AS type_text, parts[2] AS ts_json,
           CASE WHEN left(parts[3], 1) = '{{' THEN parts[3] END AS payload
    FROM (SELECT session_key, seq, e,
                 CASE WHEN left(e, 1) = '{{' THEN json_extract(e, ['$.type', '$.timestamp', '$.payload'])
                 END AS parts
          FROM u)
), f AS (
    SELECT *, json_extract_string(payload, {_paths(_PAYLOAD_FIELDS)}) AS pf FROM t
)
SELECT session_key, seq, e,
       coalesce(nullif(type_text, ''), 'unknown') AS event_type,
       CASE WHEN left(e, 1) = '{{'
            THEN json_merge_patch(
                     -- a payload that is not an object stays, as it came, under "payload"
                     json_merge_patch(e, CASE WHEN payload IS NULL
                                              THEN '{{"timestamp":null,"session_id":null,"type":null}}'
                                              ELSE '{{"timestamp":null,"session_id":null,"type":null,"payload":null}}'
                                         END::JSON),
                     coalesce(payload, '{{}}'::JSON))
       END AS attrs,
       ts_json,
       finite_ts(CASE json_type(ts_json)  -- 'infinity' parses, but is no time
           WHEN 'VARCHAR' THEN coalesce(try_cast(ts_json->>'$' AS TIMESTAMPTZ),
                                        epoch_ts(try_cast(ts_json->>'$' AS DOUBLE)))
           WHEN 'UBIGINT' THEN epoch_ts(try_cast(ts_json->>'$' AS DOUBLE))
           WHEN 'BIGINT' THEN epoch_ts(try_cast(ts_json->>'$' AS DOUBLE))
           WHEN 'DOUBLE' THEN epoch_ts(try_cast(ts_json->>'$' AS DOUBLE))
       END) AS ts,
       {_P["tool_name"]} AS tool_name,
       {call_key_sql(_P.__getitem__)} AS call_key,
       try_cast({_P["success"]} AS BOOLEAN) AS success,
       error_message({_P["error"]}, {_P["error_details"]}) AS error,
       {_P["model"]} AS model,
       to_long({_P["latency_ms"]}) AS latency_ms,
       to_long(coalesce({_P["input_tokens"]}, {_P["prompt_tokens"]},
                        CASE WHEN type_text = 'user_prompt' THEN {_P["tokens"]} END)) AS input_tokens,
       to_long(coalesce({_P["output_tokens"]}, {_P["completion_tokens"]})) AS output_tokens,
       {_P["provider"]} AS provider, CASE WHEN isfinite(try_cast({_P["cost"]} AS DOUBLE))
                                          THEN try_cast({_P["cost"]} AS DOUBLE) END AS cost_usd,
       {_P["prompt"]} AS prompt, {_P["response"]} AS response, nullif({_P["step_name"]}, '') AS step_name,
       {_P["agent_name"]} AS agent_name, {_P["service_name"]} AS service_name,
       {_P["workflow_name"]} AS workflow_name, {_P["workflow_version"]} AS workflow_version,
       {_P["agent_type"]} AS agent_type, {_P["agent_state"]} AS agent_state
FROM f;
"""

_BAD_TIMESTAMPS = """
SELECT session_key, count(*) AS bad, min(seq) AS first_seq,
       arg_min(coalesce(ts_json::VARCHAR, 'missing'), seq) AS first_value
FROM ev WHERE ts IS NULL GROUP BY session_key
"""

# Who acted (canonical.identity): the case's agent is the document's agent name, else its events', else the
# operator's, else the agent type or service the document or its events give, else the host; an event's is its own
# agent name, else the case's (a prompt is the user's).
_WHO = f"""
CREATE OR REPLACE TEMP TABLE who AS
WITH named AS (
    SELECT session_key,
           arg_min(agent_name, seq) FILTER (WHERE agent_name IS NOT NULL) AS agent_name,
           arg_min(agent_type, seq) FILTER (WHERE agent_type IS NOT NULL) AS agent_type,
           arg_min(service_name, seq) FILTER (WHERE service_name IS NOT NULL) AS service_name
    FROM ev GROUP BY session_key
)
SELECT nj.session_key,
       coalesce({_S["agent_name"]}, named.agent_name, $operator, {_S["agent_type"]}, named.agent_type,
                {_S["service_name"]}, named.service_name, $host) AS agent
FROM nj LEFT JOIN named USING (session_key);
"""

# Activities: tool calls paired (canonical.pairing); every other event is an instant. The anchor event
# (the start, or a lone completion) gives the id.
_ACTIVITIES = f"""
CREATE OR REPLACE TEMP TABLE act AS
WITH ok AS NOT MATERIALIZED (SELECT * FROM ev WHERE session_key IN (SELECT session_key FROM ok_sessions)),
s AS (SELECT *, row_number() OVER (PARTITION BY session_key, call_key ORDER BY {PAIRING_ORDER_SQL}) AS n
      FROM ok WHERE event_type = '{TOOL_CALL_STARTED}'),
c AS (SELECT *, row_number() OVER (PARTITION BY session_key, call_key ORDER BY {PAIRING_ORDER_SQL}) AS n
      FROM ok WHERE event_type = '{TOOL_CALL_COMPLETED}'),
tools AS (
    SELECT coalesce(s.session_key, c.session_key) AS session_key,
           coalesce(s.seq, c.seq) AS seq,
           coalesce(s.e, c.e) AS anchor,
           coalesce(s.event_type, c.event_type) AS event_type,
           coalesce(s.tool_name, c.tool_name) AS tool_name,
           tool_call_activity(coalesce(s.tool_name, c.tool_name)) AS activity,
           coalesce(s.ts, try(c.ts - to_milliseconds(coalesce(c.latency_ms, 0))), c.ts) AS event_time,
           c.ts AS end_time,
           coalesce(s.agent_name, c.agent_name, who.agent) AS resource,
           CASE WHEN c.seq IS NULL THEN 'incomplete' ELSE event_status(c.success, c.error) END AS status,
           coalesce(c.model, s.model) AS model,
           coalesce(c.latency_ms, CASE WHEN s.ts IS NOT NULL AND c.ts IS NOT NULL
                                       THEN date_diff('millisecond', s.ts, c.ts) END) AS latency_ms,
           coalesce(c.input_tokens, s.input_tokens) AS input_tokens,
           coalesce(c.output_tokens, s.output_tokens) AS output_tokens,
           c.error AS error,
           json_merge_patch(coalesce(s.attrs, '{{}}'::JSON), coalesce(c.attrs, '{{}}'::JSON)) AS attributes,
           coalesce(c.provider, s.provider) AS provider, coalesce(c.cost_usd, s.cost_usd) AS cost_usd
    FROM s FULL OUTER JOIN c
      ON s.session_key = c.session_key AND s.call_key IS NOT DISTINCT FROM c.call_key AND s.n = c.n
    JOIN who ON who.session_key = coalesce(s.session_key, c.session_key)
),
instants AS (
    SELECT session_key, seq, e AS anchor, event_type, tool_name,
           event_activity(event_type, step_name, prompt IS NULL AND response IS NOT NULL) AS activity,
           ts AS event_time, NULL::TIMESTAMPTZ AS end_time,
           event_resource(event_type, coalesce(agent_name, who.agent)) AS resource,
           event_status(success, error) AS status,
           model, latency_ms, input_tokens, output_tokens, error, attrs AS attributes, provider, cost_usd
    FROM ok JOIN who USING (session_key) WHERE event_type NOT IN ('{TOOL_CALL_STARTED}', '{TOOL_CALL_COMPLETED}')
),
a AS (SELECT * FROM tools UNION ALL SELECT * FROM instants)
SELECT md5(concat_ws(chr(31), session_key, event_type, anchor::VARCHAR,
                     row_number() OVER (PARTITION BY session_key, event_type, anchor::VARCHAR ORDER BY seq)::VARCHAR))
           AS event_id,
       session_key, seq, activity, event_type, event_time, end_time, resource, status, tool_name, model,
       latency_ms, input_tokens, output_tokens, error, attributes, provider,
       NULL::BIGINT AS cache_read_tokens, NULL::BIGINT AS cache_write_tokens, NULL::BIGINT AS reasoning_tokens, cost_usd
FROM a;
"""

_SESSIONS = f"""
CREATE OR REPLACE TEMP TABLE sess AS
WITH src AS (
    SELECT session_key,
           arg_min(service_name, seq) FILTER (WHERE service_name IS NOT NULL) AS service_name,
           arg_min(workflow_name, seq) FILTER (WHERE workflow_name IS NOT NULL) AS workflow_name,
           arg_min(workflow_version, seq) FILTER (WHERE workflow_version IS NOT NULL) AS workflow_version,
           arg_min(agent_type, seq) FILTER (WHERE agent_type IS NOT NULL) AS agent_type,
           arg_max(agent_state, seq) FILTER (WHERE agent_state IS NOT NULL) AS agent_state,
           count(*) FILTER (WHERE event_type = 'user_prompt' AND prompt IS NOT NULL) AS prompt_count,
           arg_min(prompt, seq) FILTER (WHERE prompt IS NOT NULL) AS first_prompt,
           arg_min(ts, seq) FILTER (WHERE prompt IS NOT NULL) AS first_prompt_at,
           arg_min(response, seq) FILTER (WHERE response IS NOT NULL) AS first_response,
           arg_min(ts, seq) FILTER (WHERE response IS NOT NULL) AS first_response_at,
           sum(input_tokens) FILTER (WHERE event_type = 'user_prompt') AS prompt_input_tokens,
           sum(output_tokens) FILTER (WHERE event_type = 'user_prompt') AS prompt_output_tokens,
           count(*) AS event_count
    FROM ev WHERE session_key IN (SELECT session_key FROM ok_sessions) GROUP BY session_key
), acts AS (
    SELECT session_key, min(event_time) AS start_time, max(coalesce(end_time, event_time)) AS end_time,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           arg_max(status, (event_time, seq)) AS last_status
    FROM act GROUP BY session_key
)
SELECT nj.session_key, nj.source, nj.session_id,
       who.agent AS agent_name,
       left(coalesce(src.first_prompt, {_S["last_user_prompt"]}, 'Agent session ' || nj.session_id), 500)
           AS task_description,
       acts.start_time, acts.end_time,
       -- ended on a failure: its last activity failed, or the source says the agent did
       session_outcome(acts.last_status = 'failed'
                       OR lower(coalesce({_S["agent_state"]}, src.agent_state, '')) IN ('failed', 'error'),
                       coalesce(acts.failed, 0) > 0) AS status,
       coalesce({_S["service_name"]}, src.service_name) AS service_name,
       coalesce({_S["workflow_name"]}, src.workflow_name) AS workflow_name,
       coalesce({_S["workflow_version"]}, src.workflow_version) AS workflow_version,
       coalesce({_S["agent_type"]}, src.agent_type) AS agent_type,
       coalesce({_S["agent_state"]}, src.agent_state) AS agent_state,
       coalesce(src.event_count, 0) AS event_count,
       CASE WHEN src.first_prompt IS NOT NULL THEN json_object(
           'prompt_count', src.prompt_count,
           'prompt_length', length(src.first_prompt),
           'response_length', length(src.first_response),
           'input_tokens', src.prompt_input_tokens,
           'output_tokens', src.prompt_output_tokens,
           'prompt_latency_ms', date_diff('millisecond', src.first_prompt_at, src.first_response_at))
       END AS prompt_metrics,
       nj.metrics AS source_metrics,
       now() AS normalized_at,
       NULL::VARCHAR AS conformance  -- checked against the playbooks after normalising (policy.conformance)
FROM nj JOIN ok_sessions USING (session_key) JOIN who USING (session_key)
LEFT JOIN src USING (session_key) LEFT JOIN acts USING (session_key);
"""

def _insert(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(EVENTS.insert_sql("act"))
    con.execute(SESSIONS.insert_sql("sess"))


def normalize_agent_sessions(
    con: duckdb.DuckDBPyConnection, raw: Sequence[RawSession], agents: AgentDefaults
) -> dict[str, str]:
    """Replace the canonical rows of every good session in `raw`; return {key: why} for the rest."""
    if not raw:
        return {}
    texts: list[str | None] = []
    for r in raw:
        try:
            texts.append(r.body.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(None)
    batch = pa.table(
        {
            "session_key": [r.key for r in raw],
            "source": [r.source for r in raw],
            "session_id": [r.session_id for r in raw],
            "text": pa.array(texts, pa.large_string()),
        }
    )
    con.register("batch_in", batch)
    con.execute(_MACROS)
    con.execute(_VALIDATE)
    con.execute(_DOCUMENTS)
    errors: dict[str, str] = {
        key: f"{key}: {problem}"
        for key, problem in con.execute("SELECT session_key, problem FROM nb WHERE problem IS NOT NULL").fetchall()
    }
    con.execute(_UNNEST)
    for key, bad, first_seq, first_value in con.execute(_BAD_TIMESTAMPS).fetchall():
        more = f" ({bad} events in all)" if bad > 1 else ""
        errors[key] = f"{key}: event #{first_seq} has a timestamp that cannot be parsed: {first_value[:100]}{more}"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE ok_sessions AS SELECT session_key FROM nj WHERE session_key NOT IN "
        "(SELECT session_key FROM ev WHERE ts IS NULL)"
    )
    con.execute(_WHO, {"operator": agents.operator, "host": agents.host})
    con.execute(_ACTIVITIES)
    con.execute(_SESSIONS)
    ok = [key for (key,) in con.execute("SELECT session_key FROM ok_sessions").fetchall()]
    replace_rows(duckdb_transaction(con), (EVENTS, SESSIONS), ok, _insert)
    for table in ("ok_sessions", "act", "sess", "who", "ev", "nj", "nb"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.unregister("batch_in")
    return errors

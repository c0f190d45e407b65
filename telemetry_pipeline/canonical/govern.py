"""The content policy (`content.Governance`) applied to a batch's canonical rows, in the run's DuckDB workspace,
after the normalisers wrote them and before anything reads them: the warehouse's canonical tables, both Signavio
tables, the session summaries and the overview all read governed rows.

Set-based first: one vectorised RE2 scan per column (DuckDB's `regexp_matches`) finds the rows that hold a content
key, a secret, personal data, free text or a value over a bound, and only those pass through the Python functions
of `Governance` (registered as Arrow UDFs, a vector of values per call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import duckdb
import pyarrow as pa
from duckdb.func import PythonUDFType

from telemetry_pipeline.canonical.content import (
    FREE_TEXT_MIN_CHARS,
    STACK_TRACE_KEYS,
    ContentPolicy,
    Governance,
    content_keys_regex,
)
from telemetry_pipeline.canonical.redaction import candidates

_FUNCTIONS = ("tp_attributes", "tp_message", "tp_text", "tp_content")


def govern_batch(con: duckdb.DuckDBPyConnection, keys: Sequence[str], governance: Governance,
                 content_tasks: Sequence[str]) -> None:
    """Govern the `events` and `sessions` rows of `keys` in place; the task descriptions of `content_tasks` are
    text a person wrote (`SourceEntry.task_is_content`), the others are names."""
    if not keys:
        return
    _register(con, governance)
    found = candidates(governance.personal)
    attributes = [found]
    if governance.policy is ContentPolicy.NONE:
        stack = "|".join(k.replace(".", "\\.") for k in STACK_TRACE_KEYS)
        attributes += [content_keys_regex(), f'"(?:{stack})"\\s*:', f'(?:[^"\\\\]|\\\\.){{{FREE_TEXT_MIN_CHARS},}}']
    keys = list(keys)
    batch = "session_key IN (SELECT unnest($keys::VARCHAR[]))"
    con.execute(f"""
        UPDATE events
        SET attributes = tp_attributes(attributes::VARCHAR, regexp_matches(attributes::VARCHAR, $found))::JSON
        WHERE {batch} AND (regexp_matches(attributes::VARCHAR, $pattern) OR length(attributes::VARCHAR) > $bound)""",
                {"keys": keys, "pattern": "|".join(f"(?:{p})" for p in attributes), "found": found,
                 "bound": min(governance.attributes_max_chars, governance.value_max_chars)})
    con.execute(f"""
        UPDATE events SET error = tp_message(error)
        WHERE {batch} AND (regexp_matches(error, $found) OR strpos(trim(error), chr(10)) > 0 OR length(error) > $bound)
        """, {"keys": keys, "found": found, "bound": governance.value_max_chars})
    names = ("activity", "resource", "tool_name", "model")
    con.execute(f"""
        UPDATE events SET {", ".join(f"{c} = tp_text({c})" for c in names)}
        WHERE {batch} AND regexp_matches(concat_ws(chr(31), {", ".join(names)}), $found)""",
                {"keys": keys, "found": found})
    session_names = ("agent_name", "service_name", "workflow_name", "workflow_version", "agent_type", "agent_state")
    con.execute(f"""
        UPDATE sessions SET
               task_description = CASE WHEN session_key IN (SELECT unnest($tasks::VARCHAR[]))
                                       THEN tp_content(task_description) ELSE tp_text(task_description) END,
               {", ".join(f"{c} = tp_text({c})" for c in session_names)},
               source_metrics = tp_attributes(source_metrics::VARCHAR,
                                              regexp_matches(source_metrics::VARCHAR, $found))::JSON
        WHERE {batch}""", {"keys": keys, "tasks": list(content_tasks), "found": found})


def _register(con: duckdb.DuckDBPyConnection, governance: Governance) -> None:
    """The `Governance` of this batch as SQL functions of this connection (replacing a batch's before). Each takes
    a vector of values per call (Arrow); `tp_attributes` also whether RE2 found something to redact in each."""
    functions: dict[str, tuple[Callable[..., str | None], list[str], str]] = {
        "tp_attributes": (governance.attributes_json, ["VARCHAR", "BOOLEAN"], "VARCHAR"),
        "tp_message": (governance.message, ["VARCHAR"], "VARCHAR"),
        "tp_text": (governance.text, ["VARCHAR"], "VARCHAR"),
        "tp_content": (governance.content, ["VARCHAR"], "VARCHAR"),
    }
    for name, (function, parameters, result) in functions.items():
        try:
            con.remove_function(name)
        except duckdb.InvalidInputException:
            pass  # not registered on this connection yet
        con.create_function(name, _vectorised(function, len(parameters)), [duckdb.sqltype(p) for p in parameters],
                            duckdb.sqltype(result), type=PythonUDFType.ARROW)


def _vectorised(function: Callable[..., str | None], arity: int) -> Callable[..., pa.Array]:
    """`function` over Arrow vectors (DuckDB reads the arity off the signature: no `*args`)."""
    if arity == 1:
        def one(values: pa.Array) -> pa.Array:
            return pa.array([function(v) for v in values.to_pylist()], pa.string())

        return one

    def two(values: pa.Array, flags: pa.Array) -> pa.Array:
        return pa.array([function(v, f) for v, f in zip(values.to_pylist(), flags.to_pylist(), strict=True)],
                        pa.string())

    return two

"""Activity names, resources, event statuses and session outcomes, one rule for every normaliser.

Agent events' activities are human-readable and low-cardinality (no ids, no free text): a tool call is
`Call tool <name>`, a prompt `User prompt` (or `Agent response` when it only carries the answer), a model
change `Change model`, any other event its step name or its type made readable. The Python functions
serve the normalisers written in Python; `SQL_MACROS` are the same rules for the SQL normaliser,
generated from the same declarations. Trace spans are named by `span_activity`. An error reads
`<kind>: <message>` when the source gives both (`error` + `error_details`): the kind alone says too little.
"""

from __future__ import annotations

import re
from typing import Any

from telemetry_pipeline.canonical.identity import USER
from telemetry_pipeline.canonical.model import Outcome
from telemetry_pipeline.canonical.pairing import TOOL_CALL_COMPLETED, TOOL_CALL_STARTED
from telemetry_pipeline.canonical.values import text

USER_PROMPT = "user_prompt"
MODEL_CHANGE = "model_change"
TOOL_EVENTS = (TOOL_CALL_STARTED, TOOL_CALL_COMPLETED)
#: Event types with a fixed activity name (user prompts are named by what they carry).
FIXED_ACTIVITIES = {MODEL_CHANGE: "Change model"}
USER_PROMPT_ACTIVITY, AGENT_RESPONSE_ACTIVITY = "User prompt", "Agent response"
TOOL_CALL_ACTIVITY = "Call tool"
UNKNOWN_TOOL = "unknown"
MAX_LABEL = 200
MAX_ERROR = 2000  # characters of an error the Python normalisers keep (as they did before)
# Ids as they turn up in labels: UUIDs, long hex holding a digit (trace/span ids, hashes), runs of 6+ digits, inside
# a word too (`order1234567`). One rule: span names have them replaced, the `activity_alphabet` check looks for them.
_ID_LIKE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
                      r"|(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{16,}|[0-9]{6,}")
_BLANKS = " \t\n\r\v\f"


def looks_like_id(label: str) -> bool:
    """Whether `label` holds an id (an activity that does splits the process map into one activity per case)."""
    return _ID_LIKE.search(label) is not None


def humanize(label: Any) -> str:
    """`tool_call_started` -> `Tool call started`: trimmed, first letter upper case, `_` as spaces."""
    trimmed = str(label).strip(_BLANKS)
    return (trimmed[:1].upper() + trimmed[1:].replace("_", " "))[:MAX_LABEL] if trimmed else "Unknown"


def step_label(step_name: Any) -> str | None:
    """A step name as an activity: trimmed, cut to `MAX_LABEL`; None when blank or not text."""
    if not isinstance(step_name, str | int | float) or isinstance(step_name, bool):
        return None
    return str(step_name).strip(_BLANKS)[:MAX_LABEL] or None


def tool_call_activity(tool_name: str | None) -> str:
    return f"{TOOL_CALL_ACTIVITY} {UNKNOWN_TOOL if tool_name is None else tool_name}"


def event_activity(event_type: str, step_name: Any, *, response_only: bool) -> str:
    """The activity of an event that is not a tool call; `response_only`: a prompt event that carries
    the agent's response and no prompt."""
    if event_type == USER_PROMPT:
        return AGENT_RESPONSE_ACTIVITY if response_only else USER_PROMPT_ACTIVITY
    return FIXED_ACTIVITIES.get(event_type) or step_label(step_name) or humanize(event_type)


def event_resource(event_type: str, agent: str) -> str:
    """Who did it (`canonical.identity`): the user for a prompt, else the agent (tools and models are not actors:
    they have their own columns)."""
    return USER if event_type == USER_PROMPT else agent


def event_status(success: Any, error: Any) -> str:
    return "failed" if success is False or error else "success"


def session_outcome(ended_on_failure: bool, any_failure: bool) -> Outcome:
    """Failed when the session ended on a failure; partial when it recovered from failures; completed otherwise,
    also with no tool calls and no errors at all (the older exporter called that failed)."""
    if ended_on_failure:
        return Outcome.FAILED
    return Outcome.PARTIAL if any_failure else Outcome.COMPLETED


def error_message(kind: Any, message: Any) -> str | None:
    """`kind: message` when both are given and the message does not already start with the kind, else the one
    given; each read as `text()` reads the Python normalisers' other texts (the SQL macro keeps them verbatim,
    as the SQL normaliser keeps every text)."""
    kind, message = text(kind, MAX_ERROR), text(message, MAX_ERROR)
    if kind and message and not message.startswith(kind):
        return f"{kind}: {message}"[:MAX_ERROR]
    return message or kind


def span_activity(
    operation: str | None, kind: str | None, tool: str | None, agent: str | None, entity: str | None,
    workflow: str | None, name: str,
) -> str:
    """The activity of a trace span: by its GenAI operation (`canonical.genai.operation`), else its kind,
    else its name. A chat is `Chat` whatever the model; tools and agents are named, nothing else is.
    Ids never enter a name: a span name's long hex, UUID or digit runs read `{id}`."""

    def named(label: str, what: str | None) -> str:
        return f"{label} {what}" if what else label

    if operation == "execute_tool":  # a tool call is a tool call, whichever source reports it
        return tool_call_activity(tool)
    if operation == "invoke_agent":
        return named("Invoke agent", agent)
    if operation == "create_agent":
        return named("Create agent", agent)
    if operation:
        return humanize(operation)
    if kind == "workflow":
        return named("Workflow", workflow or entity)
    if kind == "task":
        return named("Task", entity)
    return _ID_LIKE.sub("{id}", name)[:MAX_LABEL] or "Span"


def _sql(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _trim(expr: str) -> str:
    return f"trim_blanks({expr})"


_FIXED_SQL = " ".join(f"WHEN event_type = {_sql(t)} THEN {_sql(a)}" for t, a in FIXED_ACTIVITIES.items())

SQL_MACROS = f"""
CREATE OR REPLACE TEMP MACRO trim_blanks(t) AS trim(t, {" || ".join(f"chr({ord(c)})" for c in _BLANKS)});
CREATE OR REPLACE TEMP MACRO humanize(t) AS CASE WHEN {_trim('t')} = '' THEN 'Unknown'
    ELSE left(upper(left({_trim('t')}, 1)) || replace(substr({_trim('t')}, 2), '_', ' '), {MAX_LABEL}) END;
CREATE OR REPLACE TEMP MACRO step_label(s) AS nullif(left({_trim('s')}, {MAX_LABEL}), '');
CREATE OR REPLACE TEMP MACRO tool_call_activity(tool) AS
    {_sql(TOOL_CALL_ACTIVITY + ' ')} || coalesce(tool, {_sql(UNKNOWN_TOOL)});
CREATE OR REPLACE TEMP MACRO event_activity(event_type, step_name, response_only) AS CASE
    WHEN event_type = {_sql(USER_PROMPT)}
        THEN CASE WHEN response_only THEN {_sql(AGENT_RESPONSE_ACTIVITY)} ELSE {_sql(USER_PROMPT_ACTIVITY)} END
    {_FIXED_SQL}
    ELSE coalesce(step_label(step_name), humanize(event_type)) END;
CREATE OR REPLACE TEMP MACRO event_resource(event_type, agent) AS CASE
    WHEN event_type = {_sql(USER_PROMPT)} THEN {_sql(USER)} ELSE agent END;
CREATE OR REPLACE TEMP MACRO event_status(success, error) AS
    CASE WHEN success = false OR error IS NOT NULL THEN 'failed' ELSE 'success' END;
CREATE OR REPLACE TEMP MACRO session_outcome(ended_on_failure, any_failure) AS CASE
    WHEN ended_on_failure THEN {_sql(Outcome.FAILED)} WHEN any_failure THEN {_sql(Outcome.PARTIAL)}
    ELSE {_sql(Outcome.COMPLETED)} END;
CREATE OR REPLACE TEMP MACRO error_message(kind, message) AS CASE
    WHEN nullif(kind, '') IS NOT NULL AND nullif(message, '') IS NOT NULL AND NOT starts_with(message, kind)
        THEN kind || ': ' || message
    ELSE coalesce(nullif(message, ''), nullif(kind, '')) END;
"""

"""What leaves of the text that people and models wrote, and what never leaves (`EXPORT_CONTENT`).

The warehouse keeps every payload verbatim (`raw_telemetry`): that is where content lives. The canonical rows
(`sessions`, `events`) hold what may leave under the operator's policy, so every way out (both Signavio tables,
the outbox, Dagster's metadata, tags and logs) is governed by construction (`govern.py` applies it to a batch):

- `none` (default): text that people or models wrote is not exported. What is left says that it was there: a
  content string becomes `[omitted: N chars]`, a message list keeps its roles and its length, tool arguments keep
  their names. Error messages stay (they say where agents fail), with personal data replaced and stack traces cut.
- `redacted`: the text leaves with personal data (e-mail, phone, card, IBAN) replaced by `[REDACTED:<kind>]`.
- `full`: the text leaves as captured.
Secrets (API keys, tokens, private keys, passwords in URLs) become `[REDACTED:<kind>]` in every mode
(`redaction.py`). Each value inside `attributes` is cut at `value_max_chars` and the whole cell at
`attributes_max_chars`, marked where cut, so no row is too large to load.

Which text is content: the keys of `CONTENT_KEYS`, one table for every source and convention, matched at any depth
(a span's events, a node run's inner spans), and any other string that reads as free text (`FREE_TEXT_MIN_CHARS`
or more, with spaces), so an instrumentation we have never seen does not leak by default.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import orjson
import re2

from telemetry_pipeline.canonical.redaction import candidates, redact


class ContentPolicy(StrEnum):
    NONE = "none"
    REDACTED = "redacted"
    FULL = "full"


#: Keys whose values are text that people or models wrote, by the convention that names them. A pattern matches a
#: whole key (`*` any characters, dots included); flattened keys (`llm.input_messages.0.message.content`) match by
#: their prefix, and their structural leaves (`….message.role`) stay (`STRUCTURE_KEYS`).
CONTENT_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "OpenTelemetry GenAI (current and deprecated)": (
        "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt",
        "gen_ai.completion", "gen_ai.prompt.*", "gen_ai.completion.*", "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result", "gen_ai.output", "gen_ai.content.*",
    ),
    "OpenTelemetry GenAI events (gen_ai.user.message, gen_ai.choice, …)": ("content", "message", "tool.result"),
    "OpenInference": (
        "input.value", "output.value", "llm.input_messages.*", "llm.output_messages.*", "llm.prompts*",
        "llm.prompt_template.template", "llm.prompt_template.variables*", "tool.parameters",
        "tool_call.function.arguments", "retrieval.documents.*", "reranker.*documents*", "reranker.query",
        "embedding.embeddings.*.embedding.text", "message.content", "message.contents.*",
    ),
    "OpenLLMetry / Traceloop": (
        "traceloop.entity.input", "traceloop.entity.output", "gen_ai.task.input", "gen_ai.task.output",
        "llm.content.completion.chunk",
    ),
    "Vercel AI SDK": (
        "ai.prompt", "ai.prompt.*", "ai.response.text", "ai.response.toolCalls", "ai.response.object",
        "ai.response.reasoning*", "ai.toolCall.args", "ai.toolCall.result", "ai.result.text", "ai.result.toolCalls",
        "ai.result.object", "ai.value", "ai.values",
    ),
    "Sentry": (
        "gen_ai.request.messages", "gen_ai.response.text", "gen_ai.response.tool_calls", "gen_ai.tool.input",
        "gen_ai.tool.output",
    ),
    "LiteLLM and any-agent": ("gen_ai.tool.args", "system_prompt", "litellm.messages*", "litellm.response*"),
    "Pydantic AI / Logfire": (
        "pydantic_ai.all_messages", "all_messages_events", "final_result", "tool_arguments", "tool_response",
    ),
    "LangWatch": ("langwatch.input", "langwatch.output"),
    "Agora (executions, nodes and tracer)": (
        "input_data", "output_data", "prep_result", "exec_result", "post_result", "agora.input*", "agora.output*",
    ),
    "Extract and agent telemetry services": (
        "prompt", "response", "parameters", "thought", "last_user_prompt", "output", "result", "query", "answer",
    ),
})
#: Inside content, or as the last segment of a flattened content key: structure, kept while short (roles, types,
#: tool names and ids say what the conversation was made of).
STRUCTURE_KEYS = frozenset({
    "role", "type", "name", "id", "finish_reason", "finish_reasons", "tool_call_id", "call_id", "index",
    "mime_type", "model", "tool_name", "message_content.type", "function.name", "tool_call.id",
    "tool_call.function.name", "toolName", "toolCallId", "part_kind",
})
STACK_TRACE_KEYS = frozenset({"exception.stacktrace", "stacktrace", "stack_trace", "traceback", "stack"})
FREE_TEXT_MIN_CHARS = 160
_STRUCTURE_MAX_CHARS = 100
_FREE_TEXT = re.compile(r"\s\S+\s")  # at least two spaces around a word: prose, a message, a document


def _glob(pattern: str) -> str:
    """A key pattern as a regex both engines read (`fnmatch.translate` writes atomic groups, which RE2 has not)."""
    return ".*".join(re.escape(part) for part in pattern.split("*"))


_KEY_PATTERNS = "|".join(_glob(p) for patterns in CONTENT_KEYS.values() for p in patterns)
_CONTENT = re.compile(f"(?:{_KEY_PATTERNS})")


@functools.lru_cache(maxsize=8192)
def is_content_key(key: str) -> bool:
    """Whether the value of `key` (a whole attribute key, or a key inside a nested value) is content."""
    return _CONTENT.fullmatch(key) is not None and not is_structure_key(key)


@functools.lru_cache(maxsize=8192)
def is_structure_key(key: str) -> bool:
    return key in STRUCTURE_KEYS or any(key.endswith("." + s) for s in STRUCTURE_KEYS)


def content_keys_regex() -> str:
    """An RE2 pattern matching a JSON text that holds a content key (`"key":`): the rows `govern.py` must read."""
    return f'"(?:{_KEY_PATTERNS})"\\s*:'


@dataclass(frozen=True)
class Governance:
    """The operator's content policy and the size bounds, applied to one value at a time."""

    policy: ContentPolicy = ContentPolicy.NONE
    attributes_max_chars: int = 32_000  # the whole `attributes` cell
    value_max_chars: int = 8_000  # one text value inside it, and a text cell (`error`, `task_description`)

    @property
    def personal(self) -> bool:
        """Whether personal data is replaced (in every mode but `full`)."""
        return self.policy is not ContentPolicy.FULL

    def text(self, value: str | None) -> str | None:
        """A name, a label, any short text that may leave: secrets (and personal data unless `full`) replaced."""
        if not value or not self._gate.search(value):
            return value
        return redact(value, self.personal)

    def message(self, value: str | None) -> str | None:
        """An error message: kept, with secrets and personal data replaced (personal data in every mode but
        `full`); under `none`, only its first line (a stack trace is not exported)."""
        if not value:
            return value
        if self.policy is ContentPolicy.NONE and "\n" in value.strip():
            first, _, rest = value.strip().partition("\n")
            value = f"{first} [stack trace omitted: {rest.count(chr(10)) + 1} lines]"
        return self._cut(self.text(value) or "")

    def content(self, value: str | None) -> str | None:
        """Text a person or a model wrote (a prompt as a task description): omitted under `none`."""
        if not value:
            return value
        if self.policy is ContentPolicy.NONE:
            return _omitted(value)
        return self._cut(self.text(value) or "")

    def attributes(self, value: Any) -> Any:
        """A JSON value of attributes (a dict), every string in it governed by its key and shape, then bounded."""
        return json.loads(self.attributes_json(json.dumps(value, ensure_ascii=False)) or "null")

    def attributes_json(self, text: str | None, found: bool | None = None) -> str | None:
        """`attributes` on JSON text. Text that is not JSON, or nested deeper than Python can walk, leaves as one
        JSON string governed as a whole (content under `none`). `found`: whether the text holds anything `redact`
        may replace, when the caller knows (`govern` asks RE2 in SQL); else one search of the whole text says."""
        if text is None:
            return None
        walk = _Walk(self, redact_leaves=self._gate.search(text) is not None if found is None else found)
        if self.policy is not ContentPolicy.NONE and not walk.redact_leaves and len(text) <= self.value_max_chars:
            return text  # nothing in it to replace, nothing to cut
        try:
            value = _loads(text)
            out = _dumps(walk(value, None, False))
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python walks (orjson's errors are both)
            if self.policy is ContentPolicy.NONE:
                return _dumps(self.content(text))
            if not walk.redact_leaves and len(text) <= self.attributes_max_chars:
                return text  # nothing in it to replace: as it is
            return _dumps(self.message(text))
        if len(out) > self.attributes_max_chars and isinstance(value, dict):
            out = _dumps(self._bounded(json.loads(out)))
        return out

    # -- the walk --------------------------------------------------------------------------------------------------

    @property
    def _gate(self) -> Any:
        return _gate(self.personal)

    def _cut(self, value: str) -> str:
        if len(value) <= self.value_max_chars:
            return value
        return value[: self.value_max_chars] + f"…[cut: {len(value) - self.value_max_chars} chars]"

    def _bounded(self, value: dict[str, Any]) -> dict[str, Any]:
        """The whole value under `attributes_max_chars` once serialised: its largest top-level entries are cut
        first, each to a marker saying how much was cut."""
        size = len(_dumps(value))
        sizes = {k: len(_dumps(v)) for k, v in value.items()}
        out = dict(value)
        for k in sorted(sizes, key=sizes.__getitem__, reverse=True):
            marker = f"[cut: {sizes[k]} chars]"
            out[k] = marker
            size -= sizes[k] - len(_dumps(marker))
            if size <= self.attributes_max_chars:
                break
        return out


class _Walk:
    """One value's walk: `redact_leaves` when its text holds something `redact` may replace."""

    def __init__(self, governance: Governance, redact_leaves: bool) -> None:
        self.governance, self.redact_leaves = governance, redact_leaves
        self.none = governance.policy is ContentPolicy.NONE
        # A shorter string outside content is left as it is (no rule applies to it): most leaves, decided at once.
        self.short = 0 if redact_leaves else min(FREE_TEXT_MIN_CHARS if self.none else 1 << 62,
                                                 governance.value_max_chars + 1)

    def __call__(self, value: Any, key: str | None, inside: bool) -> Any:
        """`inside`: within a content value, where only structure (`STRUCTURE_KEYS`) is kept under `none`."""
        kind = type(value)
        if kind is dict:  # the leaves decided in the loop: most of a walk's time is calls per leaf
            out = {}
            for k, v in value.items():
                within = inside or is_content_key(k)
                if type(v) is str:
                    out[k] = v if not within and len(v) < self.short and k not in STACK_TRACE_KEYS else (
                        self.text(v, k, within))
                else:
                    out[k] = self(v, k, within)
            return out
        if kind is str:
            if not inside and len(value) < self.short and key not in STACK_TRACE_KEYS:
                return value
            return self.text(value, key, inside)
        if kind is list:
            return [self(v, key, inside) for v in value]
        return value

    def text(self, value: str, key: str | None, inside: bool) -> str:
        if self.none:
            if inside and not (key is not None and len(value) <= _STRUCTURE_MAX_CHARS and is_structure_key(key)):
                return self.summary(value)
            if key in STACK_TRACE_KEYS:
                return f"[stack trace omitted: {value.count(chr(10)) + 1} lines]"
            if len(value) >= FREE_TEXT_MIN_CHARS and _FREE_TEXT.search(value):
                return self.summary(value)  # free text under a key no table names
        if self.redact_leaves and self.governance._gate.search(value):  # the leaves of a row that has something
            value = redact(value, self.governance.personal)
        return self.governance._cut(value)

    def summary(self, value: str) -> str:
        """Content under `none`: a JSON text keeps its structure (roles, keys, lengths), anything else its size."""
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                parsed = _loads(stripped)
            except ValueError:  # orjson's decode error too
                return _omitted(value)
            return _dumps(self(parsed, None, True))
        return _omitted(value)


def _omitted(value: str) -> str:
    return f"[omitted: {len(value)} chars]"


def _loads(text: str) -> Any:
    """orjson reads ~3 times faster than `json`, but an integer past 64 bits as a float: `json` keeps it exact."""
    value = orjson.loads(text)
    return json.loads(text) if _has_float(value) and _LONG_NUMBER.search(text) else value


_LONG_NUMBER = re.compile(r"[0-9]{19}")


def _has_float(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return True
    if kind is dict:
        return any(_has_float(v) for v in value.values() if type(v) in (float, dict, list))
    if kind is list:
        return any(_has_float(v) for v in value if type(v) in (float, dict, list))
    return False


def _dumps(value: Any) -> str:
    """Compact JSON text. orjson writes it ~10 times faster than `json`; it refuses integers past 64 bits (which
    `json.loads` keeps exact), and those take the slow path."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@functools.cache
def _gate(personal: bool) -> Any:
    """One RE2 search says whether a value holds anything `redact` would replace (~3 µs for a few hundred
    characters; Python's `re` took 20-300 µs for the same alternation): most values hold nothing and stay as they
    are."""
    return re2.compile(candidates(personal))


_LOGGED: list[Governance] = []  # the policy the log records of this process leave under (`govern_logs`)


def govern_logs(governance: Governance) -> None:
    """Every log record this process makes from now on leaves governed: secrets (and, unless `full`, personal data)
    replaced in its message, whoever logs it (our code, Dagster's events, a library). Called where our code starts
    (`build_definitions`, the CLI); called again, the new policy replaces the old."""
    if not _LOGGED:
        logging.setLogRecordFactory(_governed_records(logging.getLogRecordFactory()))
    _LOGGED[:] = [governance]


def _governed_records(base: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a call with the wrong arguments: logging reports it when the record is emitted
            return record
        governed = _LOGGED[0].text(message) if _LOGGED else message
        if governed != message:
            record.msg, record.args = governed, None
        return record

    return factory

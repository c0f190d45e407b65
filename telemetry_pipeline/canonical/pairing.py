"""Tool-call pairing, one rule for every normaliser: a `tool_call_started` and a `tool_call_completed`
with the same call key (`tool_call_id`, else `call_id`, else `tool_name`) are one call when the first
is the n-th start and the second the n-th completion of that key, both counted in time order (then
payload order). What is left unpaired is a call without end (a lone start) or without start (a lone
completion). `pair_tool_calls` serves the Python normalisers; `call_key_sql` and `PAIRING_ORDER_SQL`
give the SQL normaliser the same key and order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TOOL_CALL_STARTED = "tool_call_started"
TOOL_CALL_COMPLETED = "tool_call_completed"
#: Payload fields naming the call, first present wins.
CALL_KEYS = ("tool_call_id", "call_id", "tool_name")
PAIRING_ORDER_SQL = "ts, seq"


@dataclass(frozen=True)
class ToolEvent:
    kind: str  # TOOL_CALL_STARTED or TOOL_CALL_COMPLETED (other kinds are ignored)
    key: str | None  # call_key(payload)
    at: dt.datetime
    seq: int


def call_key(payload: Mapping[str, Any]) -> str | None:
    value = next((payload[k] for k in CALL_KEYS if payload.get(k) is not None), None)
    return None if value is None else str(value)


def call_key_sql(field: Callable[[str], str]) -> str:
    """The call key in SQL, `field(name)` being the SQL expression of payload field `name`."""
    return "coalesce(" + ", ".join(field(k) for k in CALL_KEYS) + ")"


def pair_tool_calls(events: Sequence[ToolEvent]) -> dict[int, int]:
    """{index of a start: index of its completion} over `events` (indexes into the sequence)."""
    starts: dict[str | None, list[int]] = {}
    completions: dict[str | None, list[int]] = {}
    for i, event in enumerate(events):
        if event.kind == TOOL_CALL_STARTED:
            starts.setdefault(event.key, []).append(i)
        elif event.kind == TOOL_CALL_COMPLETED:
            completions.setdefault(event.key, []).append(i)

    def order(i: int) -> tuple[dt.datetime, int]:
        return events[i].at, events[i].seq

    pairs: dict[int, int] = {}
    for key, started in starts.items():
        pairs.update(zip(sorted(started, key=order), sorted(completions.get(key, []), key=order), strict=False))
    return pairs

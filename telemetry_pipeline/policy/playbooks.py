"""`PLAYBOOKS_FILE`: what each agent may do, in a few lines of YAML (docs/INTERFACE.md, "Playbooks").

```yaml
playbooks:
  - name: sales-policy                  # unique; shown in `deviations`
    match: {agent: sales_agent}         # agent and/or workflow (exact names); omitted = every case
    allowed_tools: [search_crm, send_email]
    allowed_models: [gpt-4o, gpt-4o-mini]
    required_activities: ["Call tool search_crm"]
    forbidden_activities: ["Call tool delete_record"]
    precedence: [["Call tool search_crm", "Call tool send_email"]]
    max_steps: 50
    max_cost_usd: 0.50
    max_duration_s: 600
    max_tool_errors: 3
```

A bad file never passes silently: anything this reader does not understand (a key it does not know, a value of the
wrong kind, two playbooks of one name) refuses the whole file, with an error that names the file, the playbook and
the rule, where definitions load and in `telemetry-pipeline check`. A rule that names an activity, tool or model the
warehouse has never seen is only a warning (`unseen`): it may be about what an agent must never do.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ALLOW_LISTS = ("allowed_tools", "allowed_models")  # present and empty: nothing allowed; absent: anything
NAME_LISTS = (*ALLOW_LISTS, "required_activities", "forbidden_activities")
LIMITS = {"max_steps": int, "max_cost_usd": float, "max_duration_s": float, "max_tool_errors": int}
RULES = (*NAME_LISTS, "precedence", *LIMITS)
_MATCH_KEYS = ("agent", "workflow")


class PlaybookError(ValueError):
    """The playbooks file cannot be used; the message names the file, the playbook and the rule."""


@dataclass(frozen=True)
class Playbook:
    name: str
    agent: str | None = None  # matches cases whose agent (`agent_name`) is this; None: any
    workflow: str | None = None  # and whose workflow is this; None: any
    allowed_tools: tuple[str, ...] | None = None  # None: any tool
    allowed_models: tuple[str, ...] | None = None
    required_activities: tuple[str, ...] = ()
    forbidden_activities: tuple[str, ...] = ()
    precedence: tuple[tuple[str, str], ...] = ()  # (A, B): whenever B occurs, A occurred before it
    max_steps: int | None = None
    max_cost_usd: float | None = None
    max_duration_s: float | None = None
    max_tool_errors: int | None = None


def load_playbooks(path: Path | None) -> tuple[Playbook, ...]:
    """The playbooks of `path` (none when it is None), or `PlaybookError` saying what is wrong, and where."""
    if path is None:
        return ()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlaybookError(f"PLAYBOOKS_FILE {path}: cannot be read: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PlaybookError(f"PLAYBOOKS_FILE {path}: not YAML: {_first_line(exc)}") from None
    if not isinstance(document, Mapping) or set(document) != {"playbooks"} or not isinstance(
            document["playbooks"], list):
        raise PlaybookError(f"PLAYBOOKS_FILE {path}: expected one key, `playbooks:`, holding a list of playbooks")
    playbooks = [_playbook(path, n, entry) for n, entry in enumerate(document["playbooks"], 1)]
    names = [p.name for p in playbooks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PlaybookError(f"PLAYBOOKS_FILE {path}: playbook {twice[0]!r}: the name is used more than once")
    return tuple(playbooks)


def unseen(playbooks: Collection[Playbook], activities: Collection[str], tools: Collection[str],
           models: Collection[str]) -> list[str]:
    """Warnings: the names rules give that the data has never shown (a typo, or what must never happen)."""
    known = {"activity": set(activities), "tool": set(tools), "model": set(models)}
    warnings = []
    for p in playbooks:
        named = [("allowed_tools", "tool", p.allowed_tools or ()), ("allowed_models", "model", p.allowed_models or ()),
                 ("required_activities", "activity", p.required_activities),
                 ("forbidden_activities", "activity", p.forbidden_activities),
                 ("precedence", "activity", [name for pair in p.precedence for name in pair])]
        for rule, kind, names in named:
            warnings += [f"playbook {p.name!r}: rule {rule!r} names the {kind} {name!r}, which no exported session has"
                         for name in dict.fromkeys(names) if name not in known[kind]]
    return warnings


def _playbook(path: Path, position: int, entry: Any) -> Playbook:
    label = entry.get("name") if isinstance(entry, Mapping) else None
    where = f"PLAYBOOKS_FILE {path}: playbook {label!r}" if isinstance(label, str) and label else (
        f"PLAYBOOKS_FILE {path}: playbook #{position}")
    if not isinstance(entry, Mapping):
        raise PlaybookError(f"{where}: expected a mapping of `name`, `match` and rules, not {_kind(entry)}")
    if not isinstance(label, str) or not label.strip():
        raise PlaybookError(f"{where}: `name` must be a non-empty text")
    unknown = sorted(set(entry) - {"name", "match", *RULES})
    if unknown:
        raise PlaybookError(f"{where}: rule {unknown[0]!r} is not one of {', '.join(RULES)} (or `match`)")
    fields: dict[str, Any] = {"name": label.strip()}
    match = entry.get("match")
    if match is not None:
        if not isinstance(match, Mapping) or not set(match) <= set(_MATCH_KEYS) or not all(
                isinstance(v, str) and v for v in match.values()):
            raise PlaybookError(f"{where}: rule 'match': expected `agent` and/or `workflow`, each a name")
        fields |= dict(match)
    for rule in NAME_LISTS:
        if rule in entry:
            fields[rule] = _names(where, rule, entry[rule])
    if "precedence" in entry:
        pairs = entry["precedence"]
        if not isinstance(pairs, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(a, str) and a for a in p) for p in pairs):
            raise PlaybookError(f"{where}: rule 'precedence': expected a list of pairs [first, then], each an activity")
        fields["precedence"] = tuple(dict.fromkeys((a, b) for a, b in pairs))
    for rule, kind in LIMITS.items():
        if rule in entry:
            fields[rule] = _limit(where, rule, entry[rule], kind)
    return Playbook(**fields)


def _names(where: str, rule: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PlaybookError(f"{where}: rule {rule!r}: expected a list of names, not {_kind(value)}")
    return tuple(dict.fromkeys(value))


def _limit(where: str, rule: str, value: Any, kind: type) -> int | float:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or number < 0 or (kind is int and number != int(number)):
        what = "a whole number" if kind is int else "a number"
        raise PlaybookError(f"{where}: rule {rule!r}: expected {what}, 0 or more, not {value!r}")
    return kind(number)


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

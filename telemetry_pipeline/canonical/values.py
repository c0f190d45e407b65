"""Value conventions every normaliser shares: deterministic event ids, text, longs and JSON text."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import orjson

from telemetry_pipeline.canonical.model import Json


def event_id(*parts: object) -> str:
    """Deterministic: md5 over the parts' text, unit-separator joined."""
    return hashlib.md5(chr(31).join("" if p is None else str(p) for p in parts).encode("utf-8")).hexdigest()


def as_float(value: Any) -> float | None:
    """A finite number (or numeric text); None for anything else (booleans, NaN, infinities included)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_int(value: Any) -> int | None:
    """A number (or numeric text) as a long, fractions rounded; None for anything else."""
    number = as_float(value)
    return None if number is None else round(number)


def text(value: Any, limit: int = 500) -> str | None:
    """A non-empty string (numbers become text), cut at `limit`; None otherwise."""
    if value is None or isinstance(value, dict | list):
        return None
    out = str(value).strip()
    return out[:limit] if out else None


def json_text(value: Any) -> Json:
    """Valid JSON text for a JSON column (NaN/inf and odd types become strings). orjson writes it, several times
    faster; an integer past 64 bits, which it refuses, takes `json`."""
    plain = _jsonable(value)
    try:
        return Json(orjson.dumps(plain).decode())
    except TypeError:
        return Json(json.dumps(plain, ensure_ascii=False, separators=(",", ":")))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)

"""Reading OTLP/JSON (`ExportTraceServiceRequest`), whichever spelling the writer used: camelCase or
snake_case keys, ids as hex in any case or base64, nanoseconds as strings or numbers, enums (span kind,
status code) as ints or names, attribute values as `AnyValue` objects. Used by the OTLP source (to index
trace files) and its normaliser."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from typing import Any

from telemetry_pipeline.canonical.values import as_float

SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")
_HEX = re.compile(r"[0-9a-fA-F]+")
_MISSING = object()
_PLAIN = frozenset({"stringValue", "string_value", "boolValue", "bool_value", "bytesValue", "bytes_value"})


@functools.cache
def snake_case(camel: str) -> str:
    """`startTimeUnixNano` -> `start_time_unix_nano` (protobuf JSON's other spelling)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def get(obj: Mapping[str, Any] | Any, camel: str, default: Any = None) -> Any:
    """`obj[camel]`, or its snake_case spelling; `default` when neither is there (or obj is no dict). (A trace's
    spans are read through this a few hundred thousand times a second: the plain dict is tested first.)"""
    if type(obj) is not dict and not isinstance(obj, Mapping):
        return default
    value = obj.get(camel, _MISSING)
    return value if value is not _MISSING else obj.get(snake_case(camel), default)


def decode_value(value: Any) -> Any:
    """An OTLP `AnyValue` -> plain JSON: str, int, float, bool, list, dict; bytes stay base64 text."""
    if type(value) is not dict and not isinstance(value, Mapping):
        return value
    if len(value) == 1:  # the usual `{"stringValue": ...}`: one lookup
        ((key, v),) = value.items()
        if key in _PLAIN:
            return v
    for camel in ("stringValue", "boolValue", "bytesValue"):
        if (v := get(value, camel, _MISSING)) is not _MISSING:
            return v
    if (v := get(value, "intValue", _MISSING)) is not _MISSING:
        try:
            return int(v)
        except (TypeError, ValueError):
            return v
    if (v := get(value, "doubleValue", _MISSING)) is not _MISSING:
        try:
            number = float(v)
        except (TypeError, ValueError):
            return v
        return number if number == number and abs(number) != float("inf") else str(v)  # NaN/inf stay text
    if (v := get(value, "arrayValue", _MISSING)) is not _MISSING:
        return [decode_value(x) for x in (get(v, "values") or [])]
    if (v := get(value, "kvlistValue", _MISSING)) is not _MISSING:
        return attributes_of(v, "values")
    if not value:
        return None
    return dict(value)



def attributes_of(obj: Any, key: str = "attributes") -> dict[str, Any]:
    """`[{key, value}]` -> {key: plain value}. Already-plain dicts pass through."""
    items = get(obj, key)
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items or []:
        if (type(item) is dict or isinstance(item, Mapping)) and type(name := item.get("key")) is str:
            out[name] = decode_value(item.get("value"))
    return out


def hex_id(value: Any) -> str | None:
    """A trace/span id as lowercase hex: hex in any case, or base64 (protobuf's JSON mapping)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if _HEX.fullmatch(text) and len(text) in (16, 32):
        out = text.lower()
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        out = raw.hex() if len(raw) in (8, 16) else text.lower()
    return None if set(out) == {"0"} else out


def unix_nanos(value: Any) -> int | None:
    """Nanoseconds since the epoch from a number or a numeric string; None for absent or 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        nanos = value
    elif isinstance(value, str) and value.strip().isdecimal():
        nanos = int(value)  # as text, not through a float: nanoseconds since 1970 need more than its 53 bits
    else:
        number = as_float(value)  # a float, or numeric text with a fraction or an exponent
        nanos = 0 if number is None else int(number)
    return nanos if nanos > 0 else None


def enum_name(value: Any, names: tuple[str, ...], prefix: str) -> str | None:
    """`2`, `"2"`, `"SPAN_KIND_SERVER"`, `"SERVER"`, `"server"` -> `"SERVER"`."""
    if value is None:
        return None
    if (isinstance(value, int | float) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit()):
        index = int(value)
        return names[index] if 0 <= index < len(names) else str(index)
    text = str(value).strip().upper().removeprefix(prefix)
    return text or None


def resource_spans(request: Any) -> list[Any]:
    return get(request, "resourceSpans") or []


def scope_spans(resource_span: Any) -> list[Any]:
    return get(resource_span, "scopeSpans") or get(resource_span, "instrumentationLibrarySpans") or []


def scope_of(scope_span: Any) -> Any:
    return get(scope_span, "scope") or get(scope_span, "instrumentationLibrary") or {}

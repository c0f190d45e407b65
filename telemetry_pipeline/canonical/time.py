"""Timestamps, read one way everywhere: RFC 3339 text or epoch numbers -> aware UTC datetimes.

Epoch numbers arrive in seconds, milliseconds, microseconds or nanoseconds; the magnitude tells which
(`EPOCH_SCALES`). The SQL normaliser reads epoch numbers with the macro `epoch_ts`, generated from
the same table, so both paths place the same number at the same instant.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

#: (magnitude below which, divisor to seconds): s, ms, us, ns; beyond the last, past year 9999.
EPOCH_SCALES: tuple[tuple[float, float], ...] = ((1e11, 1.0), (1e14, 1e3), (1e17, 1e6), (253402300800e9, 1e9))
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_utc(value: Any) -> dt.datetime | None:
    """RFC 3339 text (any offset, fractional seconds or not; naive = UTC) or epoch s/ms/us/ns (number or
    numeric text) -> aware UTC datetime; None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    if isinstance(value, int | float):
        return _from_epoch(value)
    return None


def _from_epoch(value: float) -> dt.datetime | None:
    if not math.isfinite(value):
        return None
    divisor = next((d for bound, d in EPOCH_SCALES if abs(value) < bound), None)
    if divisor is None:
        return None
    try:
        return _EPOCH + dt.timedelta(microseconds=round(value * 1e6 / divisor))
    except OverflowError:
        return None


def nanos_to_datetime(nanos: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=nanos // 1000)


def format_time(value: dt.datetime) -> str:
    """RFC 3339 in UTC with a `Z`."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def ms_between(start: dt.datetime | None, end: dt.datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000)


def epoch_sql_macro() -> str:
    """DuckDB macro `epoch_ts(n)`: the epoch number `n` as a timestamp, by `EPOCH_SCALES`; NULL beyond them."""
    cases = " ".join(
        f"WHEN abs(n) < {bound!r} THEN n" + ("" if divisor == 1 else f" / {divisor!r}")
        for bound, divisor in EPOCH_SCALES
    )
    return f"CREATE OR REPLACE TEMP MACRO epoch_ts(n) AS to_timestamp(CASE {cases} END);\n"

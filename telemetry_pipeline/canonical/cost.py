"""What each model call cost, in USD (`events.cost_usd`): the trace's own figure when it states one (the normalisers
read it: `genai.stated_cost`), else the price a maintained table gives for its model on the day it was made
(`genai-prices`, Pydantic's table of the providers' published prices, shipped in the package: no call out).

Set-based: the batch's distinct (provider, model, day) are looked up once each, and every call of theirs is priced
in one SQL statement from its tokens: uncached input, input read from a cache and written to one, and output
(reasoning tokens are part of the output tokens, as OpenAI and the Vercel AI SDK report them, and priced as output).
A price that changes with the prompt's size (tiers) is computed per call by the library instead. A model the table
does not know leaves the cost empty: the `model_prices_known` check counts such calls and names their models.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
from genai_prices import Usage, calc_price
from genai_prices.types import ModelPrice

log = logging.getLogger(__name__)

_UNPRICED = """
SELECT DISTINCT coalesce(provider, '') AS provider, model, event_time::DATE AS day
FROM events
WHERE session_key IN (SELECT unnest($keys::VARCHAR[])) AND cost_usd IS NULL AND model IS NOT NULL
  AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL)
"""
_PRICE = """
UPDATE events e SET cost_usd = (
        greatest(coalesce(e.input_tokens, 0) - coalesce(e.cache_read_tokens, 0) - coalesce(e.cache_write_tokens, 0), 0)
            * p.input_mtok
        + coalesce(e.cache_read_tokens, 0) * coalesce(p.cache_read_mtok, p.input_mtok)
        + coalesce(e.cache_write_tokens, 0) * coalesce(p.cache_write_mtok, p.input_mtok)
        + coalesce(e.output_tokens, 0) * p.output_mtok) / 1e6
FROM prices p
WHERE e.session_key IN (SELECT unnest($keys::VARCHAR[])) AND e.cost_usd IS NULL
  AND coalesce(e.provider, '') = p.provider AND e.model = p.model AND e.event_time::DATE = p.day
"""
_TIERED = """
SELECT event_id, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens
FROM events
WHERE session_key IN (SELECT unnest($keys::VARCHAR[])) AND cost_usd IS NULL
  AND coalesce(provider, '') = $provider AND model = $model AND event_time::DATE = $day
"""
_COLUMNS = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")


def price_batch(con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> None:
    """Fill `cost_usd` of the model calls of `keys` that have tokens and no cost yet, where the model is known."""
    if not keys:
        return
    flat: list[dict[str, Any]] = []
    for provider, model, day in con.execute(_UNPRICED, {"keys": list(keys)}).fetchall():
        price = _model_price(provider, model, day)
        if price is None:
            continue
        figures = {c: getattr(price, c) for c in _COLUMNS}
        if any(v is not None and not isinstance(v, Decimal) for v in figures.values()):
            _price_each(con, keys, provider, model, day)  # tiers: the library knows which applies
            continue
        if figures["input_mtok"] is None or figures["output_mtok"] is None:
            continue
        flat.append({"provider": provider, "model": model, "day": day,
                     **{c: None if v is None else float(v) for c, v in figures.items()}})
    if not flat:
        return
    con.register("prices", pa.Table.from_pylist(flat))
    try:
        con.execute(_PRICE, {"keys": list(keys)})
    finally:
        con.unregister("prices")


def _price_each(con: duckdb.DuckDBPyConnection, keys: Sequence[str], provider: str, model: str, day: dt.date) -> None:
    rows = con.execute(_TIERED, {"keys": list(keys), "provider": provider, "model": model, "day": day}).fetchall()
    costs = []
    for event_id, input_tokens, output_tokens, cache_read, cache_write in rows:
        usage = Usage(input_tokens=input_tokens or 0, output_tokens=output_tokens or 0,
                      cache_read_tokens=cache_read or 0, cache_write_tokens=cache_write or 0)
        try:
            costs.append({"event_id": event_id, "cost": float(calc_price(
                usage, model, provider_id=provider or None, genai_request_timestamp=_noon(day)).total_price)})
        except (LookupError, ValueError) as exc:
            log.debug("no price for %s %s: %s", provider, model, exc)
    if costs:
        con.register("tiered_costs", pa.Table.from_pylist(costs))
        try:
            con.execute("UPDATE events e SET cost_usd = t.cost FROM tiered_costs t WHERE e.event_id = t.event_id")
        finally:
            con.unregister("tiered_costs")


@functools.lru_cache(maxsize=4096)
def _model_price(provider: str, model: str, day: dt.date) -> ModelPrice | None:
    """The model's price on `day`, by the provider the trace names (as `openai.responses`, `aws.bedrock`: its
    first part), else by the model alone; None when the table does not know it."""
    for provider_id in dict.fromkeys((provider or None, provider.split(".", 1)[0] or None, None)):
        try:
            return calc_price(Usage(input_tokens=0, output_tokens=0), model, provider_id=provider_id,
                              genai_request_timestamp=_noon(day)).model_price
        except LookupError:
            continue
    return None


def _noon(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)

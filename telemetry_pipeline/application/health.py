"""`check`: can we reach each configured source, the warehouse and the destination? Never uploads data."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from telemetry_pipeline.signavio.models import Destination
from telemetry_pipeline.sources.source_set import SourceSet
from telemetry_pipeline.warehouse import Warehouse

#: Opens the destination; raises ValueError when it is misconfigured (e.g. an endpoint without a token).
OpenDestination = Callable[[], AbstractContextManager[Destination]]


def run_checks(sources: SourceSet, warehouse: Warehouse, open_destination: OpenDestination) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    if not sources.sources:
        checks.append({"name": "sources", "ok": False, "detail": "no source configured"})
    for name, source in sources.sources.items():
        ok, detail = source.probe()
        checks.append({"name": f"source:{name}", "ok": ok, "detail": detail})
    ok, detail = warehouse.probe()  # names the store in use: a DuckDB file or a PostgreSQL server
    checks.append({"name": "warehouse", "ok": ok, "detail": detail})
    checks.append(_destination_check(open_destination))
    return checks


def _destination_check(open_destination: OpenDestination) -> dict[str, Any]:
    try:
        with open_destination() as destination:
            name = destination.name
            ok, detail = destination.probe()
    except ValueError as exc:  # configuration error (e.g. no token)
        return {"name": "signavio", "ok": False, "detail": str(exc)}
    return {"name": name, "ok": ok, "detail": detail}

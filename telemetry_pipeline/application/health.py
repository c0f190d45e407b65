"""`check`: can we reach each configured source, the warehouse and the destination? Never uploads data."""

from __future__ import annotations

from typing import Any

from telemetry_pipeline.defs.resources import SignavioResource, SourcesResource, WarehouseResource


def run_checks(
    sources: SourcesResource, signavio: SignavioResource, warehouse: WarehouseResource
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    with sources.open() as source_set:
        if not source_set.sources:
            checks.append({"name": "sources", "ok": False, "detail": "no source configured"})
        for name, source in source_set.sources.items():
            ok, detail = source.probe()
            checks.append({"name": f"source:{name}", "ok": ok, "detail": detail})
    ok, detail = warehouse.warehouse().probe()  # names the store in use: a DuckDB file or a PostgreSQL server
    checks.append({"name": "warehouse", "ok": ok, "detail": detail})
    checks.append(_destination_check(signavio))
    return checks


def _destination_check(signavio: SignavioResource) -> dict[str, Any]:
    try:
        with signavio.destination() as destination:
            name = destination.name
            ok, detail = destination.probe()
    except ValueError as exc:  # configuration error (e.g. no token)
        return {"name": "signavio", "ok": False, "detail": str(exc)}
    return {"name": name, "ok": ok, "detail": detail}

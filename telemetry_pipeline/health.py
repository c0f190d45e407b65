"""`check`: can we reach each configured source, the warehouse and the destination? Never uploads data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from telemetry_pipeline.resources import SignavioResource, SourcesResource, WarehouseResource


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
    if signavio.api_url:
        try:
            with signavio.destination() as client:
                ok, detail = client.probe()  # type: ignore[attr-defined]
        except ValueError as exc:  # configuration error (e.g. no token)
            ok, detail = False, str(exc)
        return {"name": "signavio", "ok": ok, "detail": detail}
    outbox = Path(signavio.outbox_dir)
    try:
        outbox.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=outbox, prefix=".check-"):
            pass
    except OSError as exc:
        return {"name": "outbox", "ok": False, "detail": f"{outbox} is not writable: {exc.strerror}"}
    return {"name": "outbox", "ok": True, "detail": f"writable: {outbox} ({_free_space(outbox)} free)"}


def _free_space(path: Path) -> str:
    stat = os.statvfs(path)
    return f"{stat.f_bavail * stat.f_frsize / 1e9:.1f} GB"

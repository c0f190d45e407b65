"""`check`: can we reach each configured source, the warehouse and the destination, and are the playbooks valid?
Never uploads data."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from telemetry_pipeline.policy.playbooks import PlaybookError, load_playbooks, unseen
from telemetry_pipeline.signavio.models import Destination
from telemetry_pipeline.sources.source_set import SourceSet
from telemetry_pipeline.warehouse import Warehouse

#: Opens the destination; raises ValueError when it is misconfigured (e.g. an endpoint without a token).
OpenDestination = Callable[[], AbstractContextManager[Destination]]


def run_checks(sources: SourceSet, warehouse: Warehouse, open_destination: OpenDestination,
               playbooks_file: Path | None = None) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    if not sources.sources:
        checks.append({"name": "sources", "ok": False, "detail": "no source configured"})
    for name, source in sources.sources.items():
        ok, detail = source.probe()
        checks.append({"name": f"source:{name}", "ok": ok, "detail": detail})
    ok, detail = warehouse.probe()  # names the store in use: a DuckDB file or a PostgreSQL server
    checks.append({"name": "warehouse", "ok": ok, "detail": detail})
    checks.append(_destination_check(open_destination))
    if playbooks_file is not None:
        checks.append(_playbooks_check(playbooks_file, warehouse if ok else None))
    return checks


def _playbooks_check(path: Path, warehouse: Warehouse | None) -> dict[str, Any]:
    """Refused when invalid (naming the playbook and the rule); a name no exported session has is a warning."""
    try:
        playbooks = load_playbooks(path)
    except PlaybookError as exc:
        return {"name": "playbooks", "ok": False, "detail": str(exc)}
    check: dict[str, Any] = {"name": "playbooks", "ok": True, "detail": f"{len(playbooks)} playbooks in {path}"}
    if warehouse is not None:
        seen = warehouse.seen_names()
        check["warnings"] = unseen(playbooks, seen["activity"], seen["tool"], seen["model"])
    return check


def _destination_check(open_destination: OpenDestination) -> dict[str, Any]:
    try:
        with open_destination() as destination:
            name = destination.name
            ok, detail = destination.probe()
    except ValueError as exc:  # configuration error (e.g. no token)
        return {"name": "signavio", "ok": False, "detail": str(exc)}
    return {"name": name, "ok": ok, "detail": detail}

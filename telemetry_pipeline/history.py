"""Export status read from Dagster's materialisation history of `signavio_export` (the only record
of it: nothing else says a session was exported)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from telemetry_pipeline.names import SIGNAVIO_EXPORT_KEY as EXPORT_KEY

_PAGE = 1000


@dataclass(frozen=True)
class ExportRecord:
    key: str
    exported_at: dt.datetime
    execution_id: str | None
    ingestion_status: str | None
    run_id: str


def exported_keys(instance: dg.DagsterInstance) -> set[str]:
    return set(instance.get_materialized_partitions(EXPORT_KEY))


def pending_keys(instance: dg.DagsterInstance, all_keys: Iterable[str]) -> list[str]:
    done = exported_keys(instance)
    return [k for k in all_keys if k not in done]


def latest_exports(instance: dg.DagsterInstance, keys: Sequence[str] | None = None) -> dict[str, ExportRecord]:
    """The newest materialisation of each key (all keys when None), paging through history."""
    latest: dict[str, ExportRecord] = {}
    chunks: list[Sequence[str] | None] = (
        [None] if keys is None else [keys[i : i + _PAGE] for i in range(0, len(keys), _PAGE)]
    )
    for chunk in chunks:
        records_filter = dg.AssetRecordsFilter(asset_key=EXPORT_KEY, asset_partitions=list(chunk) if chunk else None)
        cursor = None
        while True:
            page = instance.fetch_materializations(records_filter, limit=_PAGE, cursor=cursor, ascending=False)
            for record in page.records:
                entry = record.event_log_entry
                mat = entry.asset_materialization
                if mat is None or mat.partition is None or mat.partition in latest:
                    continue
                meta = mat.metadata
                latest[mat.partition] = ExportRecord(
                    key=mat.partition,
                    exported_at=dt.datetime.fromtimestamp(entry.timestamp, dt.UTC),
                    execution_id=_text(meta.get("execution_id")),
                    ingestion_status=_text(meta.get("ingestion_status")),
                    run_id=entry.run_id,
                )
            if not page.has_more:
                break
            cursor = page.cursor
    return latest


def _text(value: dg.MetadataValue | None) -> str | None:
    return None if value is None else str(value.value)

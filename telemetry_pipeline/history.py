"""Export status read from Dagster's materialisation history of `signavio_export`: the record of a session's
export while the run that wrote it exists (retention archives the records of the runs it deletes in the
warehouse, `export_archive`, which `status` reads for the keys Dagster no longer has)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import dagster as dg

from telemetry_pipeline.names import SIGNAVIO_EXPORT_KEY as EXPORT_KEY
from telemetry_pipeline.warehouse import Warehouse
from telemetry_pipeline.warehouse.schema import ExportRecord

_PAGE = 1000


def exported_keys(instance: dg.DagsterInstance) -> set[str]:
    return set(instance.get_materialized_partitions(EXPORT_KEY))


def pending_keys(instance: dg.DagsterInstance, all_keys: Iterable[str]) -> list[str]:
    done = exported_keys(instance)
    return [k for k in all_keys if k not in done]


def latest_exports(instance: dg.DagsterInstance, keys: Sequence[str]) -> dict[str, ExportRecord]:
    """The newest materialisation of each of `keys` that has one, paging through their history."""
    latest: dict[str, ExportRecord] = {}
    for begin in range(0, len(keys), _PAGE):
        records_filter = dg.AssetRecordsFilter(asset_key=EXPORT_KEY, asset_partitions=list(keys[begin:begin + _PAGE]))
        cursor = None
        while True:
            page = instance.fetch_materializations(records_filter, limit=_PAGE, cursor=cursor, ascending=False)
            for record in page.records:
                export = _record(record.event_log_entry)
                if export is not None and export.session_key not in latest:
                    latest[export.session_key] = export
            if not page.has_more:
                break
            cursor = page.cursor
    return latest


def export_records(instance: dg.DagsterInstance, warehouse: Warehouse, keys: Sequence[str]) -> dict[str, ExportRecord]:
    """What `status` reports: each key's latest export from Dagster's history, or, for a key whose export run
    retention deleted, from the warehouse's archive (asked only about the keys Dagster does not know)."""
    records = latest_exports(instance, keys)
    unknown = [k for k in keys if k not in records]
    return records | warehouse.archived_exports(unknown) if unknown else records


def run_exports(instance: dg.DagsterInstance, run_id: str) -> list[ExportRecord]:
    """The sessions one run exported (its materialisations of `signavio_export`)."""
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return [r for r in map(_record, entries) if r is not None]


def _record(entry: dg.EventLogEntry) -> ExportRecord | None:
    mat = entry.asset_materialization
    if mat is None or mat.partition is None or mat.asset_key != EXPORT_KEY:
        return None
    return ExportRecord(
        session_key=mat.partition,
        exported_at=dt.datetime.fromtimestamp(entry.timestamp, dt.UTC),
        execution_id=_text(mat.metadata.get("execution_id")),
        ingestion_status=_text(mat.metadata.get("ingestion_status")),
        run_id=entry.run_id,
    )


def _text(value: dg.MetadataValue | None) -> str | None:
    return None if value is None else str(value.value)

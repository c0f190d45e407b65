"""Export status read from Dagster's materialisation history of `signavio_export`: the record of a session's
export while the run that wrote it exists (retention archives the records of the runs it deletes in the
warehouse, `export_archive`, which `status` reads for the keys Dagster no longer has).

Only public instance reads (partition status, `fetch_materializations`, `fetch_run_status_changes`): they are
what Dagster keeps working across releases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import dagster as dg

from telemetry_pipeline.instance.keys import SIGNAVIO_EXPORT_KEY as EXPORT_KEY
from telemetry_pipeline.instance.partitions import agent_sessions
from telemetry_pipeline.names import AGENT_SESSIONS
from telemetry_pipeline.warehouse import Warehouse
from telemetry_pipeline.warehouse.schema import ExportRecord

_PAGE = 1000

_RunEvent = Literal[
    dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
]
_RUN_ENDS: tuple[_RunEvent, ...] = (
    dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED
)
# A later attempt that failed or is running hides an earlier export in Dagster's partition status.
_HIDING = (dg.AssetPartitionStatus.FAILED, dg.AssetPartitionStatus.IN_PROGRESS)


def exported_keys(instance: dg.DagsterInstance, keys: Sequence[str] | None = None) -> set[str]:
    """Which of `keys` (default: every known session) were exported at least once. Dagster's partition status
    says MATERIALIZED only while the latest attempt succeeded: a session re-exported by a run that failed, or
    that is running, had its rows confirmed all the same, so those few are looked up in the history."""
    keys = instance.get_dynamic_partitions(AGENT_SESSIONS) if keys is None else keys
    status = instance.get_status_by_partition(EXPORT_KEY, keys, agent_sessions)
    if status is None:  # Dagster has no status for the asset: nothing was ever recorded for it
        return set(latest_exports(instance, keys))
    done = {k for k, s in status.items() if s == dg.AssetPartitionStatus.MATERIALIZED}
    return done | set(latest_exports(instance, [k for k, s in status.items() if s in _HIDING]))


def exported_since(
    instance: dg.DagsterInstance, keys: Sequence[str], since: float, run_id: str | None = None
) -> dict[str, str]:
    """{key: the run that exported it} for those of `keys` a run (other than `run_id`) exported at or after
    `since` (epoch seconds)."""
    return {key: record.run_id for key, record in latest_exports(instance, keys).items()
            if record.run_id != run_id and record.exported_at.timestamp() >= since}


def pending_keys(instance: dg.DagsterInstance, all_keys: Sequence[str]) -> list[str]:
    done = exported_keys(instance, all_keys)
    return [k for k in all_keys if k not in done]


def latest_exports(instance: dg.DagsterInstance, keys: Sequence[str]) -> dict[str, ExportRecord]:
    """The newest materialisation of each of `keys` that has one."""
    return {key: record for key, entry in _latest(instance, keys).items() if (record := _record(entry))}


def export_datasets(instance: dg.DagsterInstance, keys: Sequence[str]) -> dict[str, str]:
    """The dataset (table-name prefix) each of `keys` was last exported to: where a re-check must upload it."""
    found = {key: _text(mat.metadata.get("dataset")) for key, entry in _latest(instance, keys).items()
             if (mat := entry.asset_materialization)}
    return {key: dataset for key, dataset in found.items() if dataset}


def _latest(instance: dg.DagsterInstance, keys: Sequence[str]) -> dict[str, dg.EventLogEntry]:
    """The newest `signavio_export` materialisation event of each of `keys` that has one, paging through their
    history."""
    latest: dict[str, dg.EventLogEntry] = {}
    for begin in range(0, len(keys), _PAGE):
        records_filter = dg.AssetRecordsFilter(asset_key=EXPORT_KEY, asset_partitions=list(keys[begin:begin + _PAGE]))
        cursor = None
        while True:
            page = instance.fetch_materializations(records_filter, limit=_PAGE, cursor=cursor, ascending=False)
            for record in page.records:
                partition = record.partition_key
                if partition is not None and partition not in latest:
                    latest[partition] = record.event_log_entry
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


@dataclass(frozen=True)
class RunSpan:
    """Where a run's events are in the event log: after its start event, before its end event (None: not
    ended, or the end event is missing)."""

    run_id: str
    start_id: int
    end_id: int | None


def run_spans(instance: dg.DagsterInstance, run_ids: Collection[str]) -> dict[str, RunSpan]:
    """The span of each of `run_ids` that started, from the run status events (one indexed read a page; a few
    events a run)."""
    starts = _run_event_ids(instance, dg.DagsterEventType.RUN_START, run_ids)
    ends: dict[str, int] = {}
    for event_type in _RUN_ENDS:
        ends.update(_run_event_ids(instance, event_type, run_ids))
    return {run_id: RunSpan(run_id, start, ends.get(run_id)) for run_id, start in starts.items()}


def run_exports(instance: dg.DagsterInstance, span: RunSpan) -> list[ExportRecord]:
    """The sessions one run exported: the materialisations of `signavio_export` within its span that it
    wrote (a run that overlapped it wrote the others)."""
    exports: list[ExportRecord] = []
    records_filter = dg.AssetRecordsFilter(
        asset_key=EXPORT_KEY, after_storage_id=span.start_id, before_storage_id=span.end_id
    )
    cursor = None
    while True:
        page = instance.fetch_materializations(records_filter, limit=_PAGE, cursor=cursor, ascending=True)
        for record in page.records:
            export = _record(record.event_log_entry) if record.run_id == span.run_id else None
            if export is not None:
                exports.append(export)
        if not page.has_more:
            return exports
        cursor = page.cursor


def _run_event_ids(instance: dg.DagsterInstance, event_type: _RunEvent, run_ids: Collection[str]) -> dict[str, int]:
    """Run id -> storage id of its `event_type` event, for those of `run_ids` that have one. (No job filter:
    the OSS storages refuse or ignore `job_names`.)"""
    found: dict[str, int] = {}
    cursor = None
    while True:
        page = instance.fetch_run_status_changes(event_type, limit=_PAGE, cursor=cursor, ascending=True)
        for record in page.records:
            if record.run_id in run_ids:
                found.setdefault(record.run_id, record.storage_id)
        if not page.has_more:
            return found
        cursor = page.cursor


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

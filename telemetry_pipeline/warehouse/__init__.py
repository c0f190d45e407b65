"""The warehouse: raw payloads, the canonical model and the export claims, in a DuckDB file (the embedded
default) or in PostgreSQL (`WAREHOUSE_URL`), behind one interface (`base.Warehouse`)."""

from __future__ import annotations

from pathlib import Path

from telemetry_pipeline.warehouse.base import (
    DEFAULT_LEASE_SECONDS,
    Claim,
    Holder,
    HolderCheck,
    Warehouse,
    WarehouseBusy,
    WarehouseError,
    WarehouseUnavailable,
    lease_decides,
)
from telemetry_pipeline.warehouse.duckdb_store import DuckDBWarehouse
from telemetry_pipeline.warehouse.postgres_store import PostgresWarehouse, is_postgres_url

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "Claim",
    "DuckDBWarehouse",
    "Holder",
    "HolderCheck",
    "PostgresWarehouse",
    "Warehouse",
    "WarehouseBusy",
    "WarehouseError",
    "WarehouseUnavailable",
    "lease_decides",
    "open_warehouse",
]


def open_warehouse(url: str | None, path: Path, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                   memory_limit: str | None = None) -> Warehouse:
    """PostgreSQL when `url` (WAREHOUSE_URL) is given, else the DuckDB file at `path`; `memory_limit` bounds each
    DuckDB database a run computes in (DUCKDB_MEMORY_LIMIT)."""
    if not url:
        return DuckDBWarehouse(path, lease_seconds=lease_seconds, memory_limit=memory_limit)
    if not is_postgres_url(url):  # the message never repeats the URL: it may hold a password
        raise ValueError("WAREHOUSE_URL must be a postgresql:// URL (postgresql://user:password@host:port/database)")
    return PostgresWarehouse(url, lease_seconds=lease_seconds, memory_limit=memory_limit)

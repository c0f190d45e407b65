"""DuckDB as the compute engine: every connection the pipeline opens, configured one way.

No progress bar (DuckDB draws one on stdout for a query over two seconds, which broke the CLI's JSON), and, where
the caller bounds it, a memory limit with a directory to spill to: a run's memory is set by configuration
(`DUCKDB_MEMORY_LIMIT`), not by the size of the data."""

from __future__ import annotations

from pathlib import Path

import duckdb


def connect(database: str | Path = ":memory:", *, read_only: bool = False, memory_limit: str | None = None,
            spill: Path | None = None) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | bool | int | float | list[str]] = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if spill is not None:
        spill.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(spill)
    con = duckdb.connect(str(database), read_only=read_only, config=config)
    con.execute("SET enable_progress_bar = false")  # a connection's own setting
    con.execute("SET TimeZone = 'UTC'")
    return con

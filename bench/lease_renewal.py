"""What renewing a run's claims costs, on both warehouses: the figure behind the default `CLAIM_LEASE_SECONDS`
(README, "Fault scenarios"). Claims N sessions, renews them 20 times, prints the median and the worst.

    .venv/bin/python bench/lease_renewal.py [N ...]     (PostgreSQL: a scratch database on TEST_POSTGRES_SERVER)
"""

import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2

from telemetry_pipeline.warehouse import DuckDBWarehouse, PostgresWarehouse, Warehouse

SERVER = os.environ.get("TEST_POSTGRES_SERVER", "postgresql://postgres@127.0.0.1:5432")
ROUNDS = 20


def renewals(warehouse: Warehouse, n: int) -> list[float]:
    keys = [f"extract:s-{i:06d}" for i in range(n)]
    warehouse.claim(keys, "bench-run")
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        warehouse.renew(keys, "bench-run")
        times.append(time.perf_counter() - start)
    warehouse.release(keys, "bench-run")
    return times


def main(sizes: list[int]) -> None:
    admin = psycopg2.connect(f"{SERVER}/postgres")
    admin.autocommit = True
    name = f"lease_bench_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory() as folder:
            stores = [DuckDBWarehouse(Path(folder) / "w.duckdb"), PostgresWarehouse(f"{SERVER}/{name}")]
            for n in sizes:
                for store in stores:
                    times = renewals(store, n)
                    print(f"{type(store).__name__:18} {n:6} claims: renewal median "
                          f"{1000 * statistics.median(times):6.1f} ms, max {1000 * max(times):6.1f} ms")
    finally:
        admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [500, 5000])

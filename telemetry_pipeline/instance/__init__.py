"""The Dagster instance under `<home>/dagster_home`: created with a sensible `dagster.yaml` on first
use, never overwritten (an operator's own file, e.g. the PostgreSQL instance `deploy/dagster.yaml`, wins);
and the Dagster settings our processes start with (`RUN_BOOKKEEPING`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster.version import __version__ as DAGSTER_VERSION

# Telemetry off (no outside calls); at most two runs at once: they share one DuckDB file, whose
# writers take turns, so more would only queue on its lock. Dagster's SQLite storage under the instance's
# directory, as by default, but with its event-log connections kept open (sqlite_storage.py). Runs' consoles at
# INFO (Dagster's default for them is DEBUG, a line per event, which floods `make run`'s terminal).
LOCAL_INSTANCE_YAML = """\
storage:
  custom:
    module: telemetry_pipeline.instance.sqlite_storage
    class: PooledSqliteStorage
    config:
      base_dir: {base_dir}
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 2
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
python_logs:
  python_log_level: INFO
"""


# `RUN_BOOKKEEPING` (README, Configuration) is our one setting over Dagster's internal knobs. They are read
# from the environment of the process that writes the events: the one that creates a run (CLI, daemon,
# webserver) writes its planned events. So they are set where our processes start: the CLI's commands, and
# `python -m telemetry_pipeline.instance COMMAND` for `make run` / `make deploy`.
#   full  a session that failed to export is under the UI's "Failed" filter, which an operator looks for first
#         (issue 13): Dagster writes one "planned" event per session of a run. It hands them to the storage as
#         one batch when DAGSTER_EVENT_BATCH_SIZE is set, and the pooled PostgreSQL storage writes that batch as
#         one INSERT (pooled_postgres.py); the embedded SQLite storage still writes them one by one.
#   lean  one planned event per run for signavio_export (DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS): the
#         sessions of a failed run show as missing, not red "failed" (the run is red and names them).
# DAGSTER_EVENT_BATCH_SIZE batches only events Dagster derives itself (the planned events of a run, the
# partitions of one Output); our per-session AssetMaterializations carry their own metadata and are written
# one by one (Dagster's per-partition metadata API re-reads every partition key per call).
BOOKKEEPING_MODES = ("lean", "full")
MEASURED_ON = ((1, 13), (1, 14))  # Dagster versions the knobs were measured on: >=1.13, <1.14
EVENT_BATCH_SIZE = 1000  # at least a run's planned events (EXPORT_BATCH_SIZE sessions + 4 checks) in one batch


class UnmeasuredDagsterVersion(RuntimeError):
    """The knobs are internal: another Dagster release may read them differently or not at all, and dropping
    them quietly would change what a run records (and what it costs) without anyone noticing."""


def dagster_environment(bookkeeping: str, version: str = DAGSTER_VERSION) -> dict[str, str]:
    """The Dagster environment variables `RUN_BOOKKEEPING` stands for; refused outside the measured versions."""
    if bookkeeping not in BOOKKEEPING_MODES:
        raise ValueError(f"RUN_BOOKKEEPING must be one of {', '.join(BOOKKEEPING_MODES)}, not {bookkeeping!r}")
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    if not MEASURED_ON[0] <= major_minor < MEASURED_ON[1]:
        measured = ".".join(map(str, MEASURED_ON[0]))
        raise UnmeasuredDagsterVersion(
            f"Dagster {version} is installed, but RUN_BOOKKEEPING sets Dagster's internal settings "
            f"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS and DAGSTER_EVENT_BATCH_SIZE, measured on Dagster "
            f"{measured} only: check that this release still reads them the same way (test_postgres_instance.py) "
            f"and widen MEASURED_ON in {__name__}, or install Dagster {measured}"
        )
    return {
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true" if bookkeeping == "lean" else "false",
        "DAGSTER_EVENT_BATCH_SIZE": str(EVENT_BATCH_SIZE),
    }


@contextmanager
def dagster_settings(bookkeeping: str) -> Iterator[None]:
    """`dagster_environment` in this process's environment while the block runs (the CLI's commands)."""
    values = dagster_environment(bookkeeping)
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def prepare_dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_INSTANCE_YAML.format(base_dir=json.dumps(str(path.resolve()))), encoding="utf-8")
    return path


def open_instance(path: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(prepare_dagster_home(path)))

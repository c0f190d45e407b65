"""The Dagster instance under `<home>/dagster_home`: created with a sensible `dagster.yaml` on first
use, never overwritten (an operator's own file, e.g. Postgres storage, wins)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

# Telemetry off (no outside calls); at most two runs at once: they share one DuckDB file, whose
# writers take turns, so more would only queue on its lock.
LOCAL_INSTANCE_YAML = """\
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 2
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
"""


def prepare_dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_INSTANCE_YAML, encoding="utf-8")
    return path


def open_instance(path: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(prepare_dagster_home(path)))


if __name__ == "__main__":  # `make run` prepares the home before `dagster dev` starts
    from telemetry_pipeline.settings import from_environment

    prepare_dagster_home(from_environment().dagster_home)

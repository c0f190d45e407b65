"""The Dagster wiring: what `definitions.py` loads (assets, their checks, sensors, schedules, resources, partitions)."""

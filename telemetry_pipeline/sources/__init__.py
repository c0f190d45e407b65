"""The telemetry sources: one folder per source (its adapter, normaliser and settings), registered once
in `registry.py`; `source_set.SourceSet` is a run's configured sources; `base` the protocol they share."""

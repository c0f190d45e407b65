"""The names users, scripts and outside checks rely on (docs/INTERFACE.md), each written once."""

# Partitions: one key per session, `<source>:<session_id>`.
AGENT_SESSIONS = "agent_sessions"

# Assets.
DISCOVERED_SESSIONS = "discovered_sessions"
RAW_TELEMETRY = "raw_telemetry"
TELEMETRY_EVENTS = "telemetry_events"
SIGNAVIO_CSV = "signavio_csv"
SIGNAVIO_EXPORT = "signavio_export"
PROCESS_OVERVIEW = "process_overview"

# The one step that produces the export assets (a multi-asset), and the jobs, sensor and schedules.
SESSION_EXPORT_STEP = "session_export"
EXPORT_JOB = "export_sessions"
OVERVIEW_JOB = "refresh_process_overview"
NEW_SESSIONS_SENSOR = "new_sessions_sensor"
HOURLY_EXPORT_SCHEDULE = "hourly_export_schedule"

# Retention: one name throughout (job, op, schedule, setting RETENTION_DAYS, CLI `prune`).
RETENTION_JOB = "retention"
RETENTION_OP = "apply_retention"
RETENTION_SCHEDULE = "retention_schedule"

# Tags an export run puts on itself: the process that holds its claims (`liveness`).
HOST_TAG = "telemetry_pipeline/host"
PID_TAG = "telemetry_pipeline/pid"
PROCESS_STARTED_TAG = "telemetry_pipeline/process_started"
RECOVERS_TAG = "telemetry_pipeline/recovers"  # on a run that exports again the sessions of a cut-off run
# Metadata the export step writes and the CLI reads back from its runs' events (`instance/runs.py`): on the
# step's failure, {key: error}; on its observation of `signavio_export`, {key: run id} of the sessions it left to
# another run, and {key: error} of those their source does not have (not a failure of the run: nothing to export).
FAILED_SESSIONS_META = "failed_sessions"
SESSIONS_NOT_FOUND_META = "sessions_not_found"
IN_FLIGHT_META = "in_flight"
EXPORTED_MEANWHILE_META = "exported_meanwhile"
# On a run the CLI starts: when it saw the run's sessions unexported (epoch seconds). A session another run exported
# since then is done, not exported again (`history.exported_since`); other runs count from their creation.
PENDING_AS_OF_TAG = "telemetry_pipeline/pending_as_of"
RECOVERY_ATTEMPT_TAG = "telemetry_pipeline/recovery_attempt"  # 1 for the first such run, 2 if it was cut off too…

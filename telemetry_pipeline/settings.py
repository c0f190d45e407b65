"""The pipeline's settings, read once from the environment (docs/INTERFACE.md, README "Configuration").

`from_environment` is the only function that reads configuration from the environment; `definitions.py` builds
`Definitions` from the `Settings` it returns, and tests build `Settings` directly. Durations and sizes are parsed
here, once, into seconds and bytes. Secrets keep the name of the variable they came from, so Dagster binds them
with `EnvVar` and their value never reaches run config, the UI or the definitions snapshot.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from telemetry_pipeline.canonical.content import ContentPolicy, Governance
from telemetry_pipeline.signavio.schema import DEFAULT_DATASET
from telemetry_pipeline.sources.base import Variable
from telemetry_pipeline.sources.registry import VARIABLES
from telemetry_pipeline.sources.settings import SourcesSettings
from telemetry_pipeline.transport.config import MB, HttpSettings, Secret
from telemetry_pipeline.transport.http import parse_duration
from telemetry_pipeline.warehouse import DEFAULT_LEASE_SECONDS, Warehouse, is_postgres_url, open_warehouse

DEFAULT_HOME = "./.telemetry_pipeline"

# Every variable, named once (README "Configuration" documents each); a source's own are in its folder.
HOME = "TELEMETRY_PIPELINE_HOME"
DAGSTER_HOME = "DAGSTER_HOME"
SOURCE_TIMEOUT = "SOURCE_TIMEOUT"
SOURCE_MAX_RETRIES = "SOURCE_MAX_RETRIES"
HTTP_RETRY_WAIT_INITIAL = "HTTP_RETRY_WAIT_INITIAL"
FETCH_CONCURRENCY = "FETCH_CONCURRENCY"
SESSION_SETTLE_SECONDS = "SESSION_SETTLE_SECONDS"
AGENT_NAME = "AGENT_NAME"
SERVICE_NAME = "SERVICE_NAME"
SIGNAVIO_API_URL = "SIGNAVIO_API_URL"
SIGNAVIO_API_KEY = "SIGNAVIO_API_KEY"
SIGNAVIO_STATUS_URL = "SIGNAVIO_STATUS_URL"
SIGNAVIO_DATASET = "SIGNAVIO_DATASET"
SIGNAVIO_TIMEOUT = "SIGNAVIO_TIMEOUT"
SIGNAVIO_MAX_RETRIES = "SIGNAVIO_MAX_RETRIES"
SIGNAVIO_TENANT_ID = "SIGNAVIO_TENANT_ID"
SIGNAVIO_POLL_INTERVAL = "SIGNAVIO_POLL_INTERVAL"
SIGNAVIO_POLL_DEADLINE = "SIGNAVIO_POLL_DEADLINE"
SIGNAVIO_MAX_BODY_MB = "SIGNAVIO_MAX_BODY_MB"
EXPORT_BATCH_SIZE = "EXPORT_BATCH_SIZE"
EXPORT_BATCH_MAX_MB = "EXPORT_BATCH_MAX_MB"
EXPORT_WORKERS = "EXPORT_WORKERS"
SENSOR_INTERVAL_SECONDS = "SENSOR_INTERVAL_SECONDS"
RETENTION_DAYS = "RETENTION_DAYS"
WAREHOUSE_URL = "WAREHOUSE_URL"
CLAIM_LEASE_SECONDS = "CLAIM_LEASE_SECONDS"
DUCKDB_MEMORY_LIMIT = "DUCKDB_MEMORY_LIMIT"
RUN_BOOKKEEPING = "RUN_BOOKKEEPING"
ACTIVITY_ALPHABET_LIMIT = "ACTIVITY_ALPHABET_LIMIT"
PROCESS_OVERVIEW_WINDOW_HOURS = "PROCESS_OVERVIEW_WINDOW_HOURS"
EXPORT_CONTENT = "EXPORT_CONTENT"
EXPORT_ATTRIBUTES_MAX_CHARS = "EXPORT_ATTRIBUTES_MAX_CHARS"
EXPORT_VALUE_MAX_CHARS = "EXPORT_VALUE_MAX_CHARS"
RAW_RETENTION_DAYS = "RAW_RETENTION_DAYS"
PLAYBOOKS_FILE = "PLAYBOOKS_FILE"

# `<home>/settings.env`: what `make run` / `make deploy` started the pipeline with, so that the CLI in another shell
# works on the same sources, destination and warehouse. Secrets are named in it, never written.
SETTINGS_FILE = "settings.env"
_NOT_WRITTEN = "<secret: not written here>"


# Never written to a file (a URL may hold a password).
SECRETS = (SIGNAVIO_API_KEY, WAREHOUSE_URL, *(v.env for v in VARIABLES if v.secret))


class ConfigurationError(ValueError):
    """A setting is missing or unreadable; the message names the variable (never a secret's value)."""


@dataclass(frozen=True)
class SignavioSettings:
    """The destination: the Ingestion API when `api_url` is set, else the outbox under the home."""

    api_url: str | None = None
    api_key: Secret | None = None
    status_url: str | None = None  # template with {execution_id}; None: derived from api_url
    dataset: str = DEFAULT_DATASET
    http: HttpSettings = HttpSettings()
    tenant_id: str | None = None
    poll_interval: float = 1.0  # seconds, first wait between status polls
    poll_deadline: float = 600.0  # seconds
    max_body_bytes: int = 50 * MB

    def check(self) -> None:
        """Refuse a destination that cannot work (checked where one is built, not on every read)."""
        if self.api_url and not self.api_key:
            raise ConfigurationError(f"configuration error: {SIGNAVIO_API_URL} is set but {SIGNAVIO_API_KEY} is empty")


@dataclass(frozen=True)
class WarehouseSettings:
    """Where runs keep payloads, the canonical model and their claims: PostgreSQL when `url` is set (it may hold
    a password: a secret), else the DuckDB file under the home."""

    url: Secret | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # how long a claim lasts unrenewed (warehouse/base.py says why)
    memory_limit: str = "512MB"  # each DuckDB database a run computes in; it spills to disk beyond (warehouse/engine)

    def check(self) -> None:
        if self.url and not is_postgres_url(self.url.value):  # never echo the URL: it may hold a password
            raise ConfigurationError(f"configuration error: {WAREHOUSE_URL} must be a postgresql:// URL")
        if self.lease_seconds <= 0:
            raise ConfigurationError(f"configuration error: {CLAIM_LEASE_SECONDS} must be positive")


@dataclass(frozen=True)
class Settings:
    home: Path
    dagster_home: Path
    sources: SourcesSettings = SourcesSettings()
    signavio: SignavioSettings = SignavioSettings()
    warehouse: WarehouseSettings = WarehouseSettings()
    batch_size: int = 500
    # Processes the CLI's `export` runs its batched runs in, side by side: one batch's own work overlaps another's
    # recording in Dagster (bench/README.md). Dagster's own runs are bounded by `run_queue.max_concurrent_runs`.
    export_workers: int = 2
    sensor_interval_seconds: int = 30
    retention_days: float = 30.0
    raw_retention_days: float = 30.0  # raw payloads of sessions exported this long ago are pruned (content's lifetime)
    content: Governance = Governance()  # what leaves of people's and models' text (canonical/content.py)
    playbooks_file: Path | None = None  # what each agent may do (policy/playbooks.py); None: every case unchecked
    run_bookkeeping: str = "full"  # what Dagster records per run: full | lean (instance/__init__.py)
    activity_alphabet_limit: int = 200  # distinct activities per upload before the data-quality check warns
    overview_window_hours: float = 168.0  # sessions normalised this recently feed process_overview

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"

    @property
    def inbox_dir(self) -> Path:
        return self.home / "inbox"

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def for_home(home: Path, **changes: object) -> Settings:
    """Defaults for a pipeline home (the instance under `<home>/dagster_home`)."""
    home = home.resolve()
    return Settings(home=home, dagster_home=home / "dagster_home").replace(**changes)


def from_environment(environ: Mapping[str, str] | None = None, *, settings_file: bool = False) -> Settings:
    """The settings from the environment: unset or empty variables take their defaults, which are the
    dataclasses' own (each default is written once, on its field). With `settings_file` (the CLI), the variables
    the environment does not set are read from `<home>/settings.env` when the running pipeline wrote one."""
    env = os.environ if environ is None else environ
    if settings_file:
        env = _with_settings_file(env)

    def get(name: str, default: str | None = None) -> str | None:
        value = env.get(name, "").strip()
        return value or default

    def number(name: str, default: float, kind: type[int] | type[float]) -> float:
        raw = get(name)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be a number, not {raw!r}") from None

    def seconds(name: str, default: float) -> float:
        raw = get(name)
        try:
            return default if raw is None else parse_duration(raw)
        except ValueError as exc:
            raise ConfigurationError(f"{name}: {exc}") from None

    def secret(name: str) -> Secret | None:
        value = get(name)
        return Secret(value, env_var=name) if value else None

    def variable(v: Variable) -> str | Secret | None:
        """A source's variable (sources/<name>/); unset, its default from the home, if it has one."""
        if v.secret:
            return secret(v.env)
        raw = env.get(v.env) if v.keep_empty else get(v.env)
        return raw if raw is not None or v.default is None else v.default(home)

    home = Path(get(HOME) or DEFAULT_HOME).resolve()
    retry_wait = number(HTTP_RETRY_WAIT_INITIAL, HttpSettings.retry_wait_initial, float)
    signavio = SignavioSettings(
        api_url=get(SIGNAVIO_API_URL),
        api_key=secret(SIGNAVIO_API_KEY),
        status_url=get(SIGNAVIO_STATUS_URL),
        dataset=get(SIGNAVIO_DATASET) or SignavioSettings.dataset,
        http=HttpSettings(
            timeout=seconds(SIGNAVIO_TIMEOUT, HttpSettings.timeout),
            max_retries=int(number(SIGNAVIO_MAX_RETRIES, HttpSettings.max_retries, int)),
            retry_wait_initial=retry_wait,
        ),
        tenant_id=get(SIGNAVIO_TENANT_ID),
        poll_interval=seconds(SIGNAVIO_POLL_INTERVAL, SignavioSettings.poll_interval),
        poll_deadline=seconds(SIGNAVIO_POLL_DEADLINE, SignavioSettings.poll_deadline),
        max_body_bytes=int(number(SIGNAVIO_MAX_BODY_MB, SignavioSettings.max_body_bytes / MB, float) * MB),
    )
    sources = SourcesSettings(
        values={v.field: variable(v) for v in VARIABLES},
        http=HttpSettings(
            timeout=seconds(SOURCE_TIMEOUT, HttpSettings.timeout),
            max_retries=int(number(SOURCE_MAX_RETRIES, HttpSettings.max_retries, int)),
            retry_wait_initial=retry_wait,
        ),
        fetch_concurrency=int(number(FETCH_CONCURRENCY, SourcesSettings.fetch_concurrency, int)),
        settle_seconds=number(SESSION_SETTLE_SECONDS, SourcesSettings.settle_seconds, float),
        chunk_max_bytes=int(number(EXPORT_BATCH_MAX_MB, SourcesSettings.chunk_max_bytes / MB, float) * MB),
        agent_name=get(AGENT_NAME) or get(SERVICE_NAME),
    )
    policy = get(EXPORT_CONTENT) or Governance.policy
    if policy not in tuple(ContentPolicy):
        raise ConfigurationError(f"{EXPORT_CONTENT} must be one of {', '.join(ContentPolicy)}, not {policy!r}")
    content = Governance(
        policy=ContentPolicy(policy),
        attributes_max_chars=int(number(EXPORT_ATTRIBUTES_MAX_CHARS, Governance.attributes_max_chars, int)),
        value_max_chars=int(number(EXPORT_VALUE_MAX_CHARS, Governance.value_max_chars, int)),
    )
    if min(content.attributes_max_chars, content.value_max_chars) < 100:
        raise ConfigurationError(f"{EXPORT_ATTRIBUTES_MAX_CHARS} and {EXPORT_VALUE_MAX_CHARS} must be 100 or more")
    bookkeeping = get(RUN_BOOKKEEPING) or Settings.run_bookkeeping
    workers = int(number(EXPORT_WORKERS, Settings.export_workers, int))
    if workers < 1:
        raise ConfigurationError(f"{EXPORT_WORKERS} must be at least 1, not {workers}")
    if bookkeeping not in ("lean", "full"):
        raise ConfigurationError(f"{RUN_BOOKKEEPING} must be lean or full, not {bookkeeping!r}")
    return Settings(
        home=home,
        dagster_home=Path(get(DAGSTER_HOME) or home / "dagster_home").resolve(),
        sources=sources,
        signavio=signavio,
        warehouse=WarehouseSettings(
            url=secret(WAREHOUSE_URL),
            lease_seconds=number(CLAIM_LEASE_SECONDS, WarehouseSettings.lease_seconds, float),
            memory_limit=get(DUCKDB_MEMORY_LIMIT) or WarehouseSettings.memory_limit,
        ),
        batch_size=int(number(EXPORT_BATCH_SIZE, Settings.batch_size, int)),
        export_workers=workers,
        sensor_interval_seconds=int(number(SENSOR_INTERVAL_SECONDS, Settings.sensor_interval_seconds, int)),
        retention_days=number(RETENTION_DAYS, Settings.retention_days, float),
        raw_retention_days=number(RAW_RETENTION_DAYS, Settings.raw_retention_days, float),
        content=content,
        playbooks_file=Path(playbooks).resolve() if (playbooks := get(PLAYBOOKS_FILE)) else None,
        run_bookkeeping=bookkeeping,
        activity_alphabet_limit=int(number(ACTIVITY_ALPHABET_LIMIT, Settings.activity_alphabet_limit, int)),
        overview_window_hours=number(PROCESS_OVERVIEW_WINDOW_HOURS, Settings.overview_window_hours, float),
    )


def write_settings_file(settings: Settings) -> Path:
    """`<home>/settings.env` with `settings` (those of the pipeline being started), secrets named, not written."""
    lines = [
        "# The settings the running pipeline was started with (`make run` / `make deploy`). `telemetry-pipeline`",
        "# reads the variables its own environment does not set from here; secrets must be set in its environment.",
        *(f"{name}={_NOT_WRITTEN if name in SECRETS else value}" for name, value in to_environment(settings).items()),
    ]
    path = settings.home / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _with_settings_file(env: Mapping[str, str]) -> Mapping[str, str]:
    path = Path(env.get(HOME, "").strip() or DEFAULT_HOME).resolve() / SETTINGS_FILE
    if not path.is_file():
        return env
    written = dict(
        line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.startswith("#")
    )
    unset = sorted(name for name, value in written.items() if value == _NOT_WRITTEN and not env.get(name, "").strip())
    if unset:
        raise ConfigurationError(
            f"configuration error: the running pipeline was started with {', '.join(unset)} ({path}); "
            "set the same in this shell"
        )
    return {**{k: v for k, v in written.items() if v != _NOT_WRITTEN}, **env}


def to_environment(settings: Settings) -> dict[str, str]:
    """The variables that `from_environment` reads back as `settings`: what a process we start (a test's
    exporter, a benchmark's) needs to run with these settings."""
    src, sig = settings.sources, settings.signavio
    values: dict[str, str | float | Path | None] = {
        HOME: settings.home,
        DAGSTER_HOME: settings.dagster_home,
        SOURCE_TIMEOUT: src.http.timeout,
        SOURCE_MAX_RETRIES: src.http.max_retries,
        HTTP_RETRY_WAIT_INITIAL: src.http.retry_wait_initial,
        FETCH_CONCURRENCY: src.fetch_concurrency,
        SESSION_SETTLE_SECONDS: src.settle_seconds,
        EXPORT_BATCH_MAX_MB: src.chunk_max_bytes / MB,
        AGENT_NAME: src.agent_name,
        SIGNAVIO_API_URL: sig.api_url,
        SIGNAVIO_API_KEY: sig.api_key.value if sig.api_key else None,
        SIGNAVIO_STATUS_URL: sig.status_url,
        SIGNAVIO_DATASET: sig.dataset,
        SIGNAVIO_TIMEOUT: sig.http.timeout,
        SIGNAVIO_MAX_RETRIES: sig.http.max_retries,
        SIGNAVIO_TENANT_ID: sig.tenant_id,
        SIGNAVIO_POLL_INTERVAL: sig.poll_interval,
        SIGNAVIO_POLL_DEADLINE: sig.poll_deadline,
        SIGNAVIO_MAX_BODY_MB: sig.max_body_bytes / MB,
        EXPORT_BATCH_SIZE: settings.batch_size,
        EXPORT_WORKERS: settings.export_workers,
        SENSOR_INTERVAL_SECONDS: settings.sensor_interval_seconds,
        RETENTION_DAYS: settings.retention_days,
        RAW_RETENTION_DAYS: settings.raw_retention_days,
        EXPORT_CONTENT: settings.content.policy.value,
        EXPORT_ATTRIBUTES_MAX_CHARS: settings.content.attributes_max_chars,
        EXPORT_VALUE_MAX_CHARS: settings.content.value_max_chars,
        PLAYBOOKS_FILE: settings.playbooks_file,
        WAREHOUSE_URL: settings.warehouse.url.value if settings.warehouse.url else None,
        CLAIM_LEASE_SECONDS: settings.warehouse.lease_seconds,
        DUCKDB_MEMORY_LIMIT: settings.warehouse.memory_limit,
        RUN_BOOKKEEPING: settings.run_bookkeeping,
        ACTIVITY_ALPHABET_LIMIT: settings.activity_alphabet_limit,
        PROCESS_OVERVIEW_WINDOW_HOURS: settings.overview_window_hours,
    }
    plain = src.plain()
    values.update({v.env: plain[v.field] for v in VARIABLES})
    return {name: str(value) for name, value in values.items() if value is not None}


def configured_warehouse(settings: Settings) -> Warehouse:
    """The warehouse `settings` name (what the runs' `WarehouseResource` opens), for the CLI's own commands."""
    url = settings.warehouse.url.value if settings.warehouse.url else None
    return open_warehouse(url, settings.warehouse_path, lease_seconds=settings.warehouse.lease_seconds,
                          memory_limit=settings.warehouse.memory_limit)

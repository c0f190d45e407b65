"""Dagster resources: typed configuration in, plain domain objects out. No environment reads here
(definitions.py binds `EnvVar`s), no network at construction."""


import contextlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

from telemetry_pipeline.http import RetryPolicy, parse_duration
from telemetry_pipeline.signavio.models import Destination
from telemetry_pipeline.signavio.outbox import Outbox
from telemetry_pipeline.signavio.schema import DEFAULT_DATASET
from telemetry_pipeline.sources import SourceSet, SourceSettings
from telemetry_pipeline.warehouse import Warehouse


class SourcesResource(dg.ConfigurableResource):
    """The telemetry sources. A source is enabled by giving its URL."""

    extract_url: str | None = Field(default=None, description="EXTRACT_SERVICE_URL")
    agent_telemetry_url: str | None = Field(default=None, description="AGENT_METRICS_BASE_URL")
    agora_url: str | None = Field(default=None, description="AGORA_PLATFORM_URL")
    agora_token: str | None = Field(default=None, description="AGORA_API_TOKEN (secret: bind with EnvVar)")
    otlp_dir: str | None = Field(default=None, description="OTLP_INBOX_DIR (else <home>/inbox when it exists)")
    extract_list_path: str | None = Field(default=None, description="EXTRACT_SESSIONS_PATH; '' = no listing")
    agent_telemetry_list_path: str | None = Field(default=None, description="AGENT_METRICS_SESSIONS_PATH; '' = no listing")
    timeout: str = Field(default="30s", description="per-request timeout (Go-style duration or seconds)")
    max_retries: int = Field(default=3, description="retries of transient failures (429, 5xx, transport)")
    retry_wait_initial: float = Field(default=0.5, description="first backoff in seconds; doubles, with jitter")
    max_in_flight: int = Field(default=16, description="concurrent session fetches")
    settle_seconds: float = Field(
        default=0.0, description="a session counts as finished when its last event is this old"
    )
    agent_name_fallback: str = Field(default="agent", description="agent name when the data names none")

    def settings(self) -> SourceSettings:
        return SourceSettings(
            extract_url=self.extract_url or None,
            agent_telemetry_url=self.agent_telemetry_url or None,
            agora_url=self.agora_url or None,
            agora_token=self.agora_token or None,
            otlp_dir=self.otlp_dir or None,
            timeout=parse_duration(self.timeout),
            retry=RetryPolicy(max_retries=self.max_retries, wait_initial=self.retry_wait_initial),
            max_in_flight=self.max_in_flight,
            list_paths={
                name: path
                for name, path in (("extract", self.extract_list_path), ("agent_telemetry", self.agent_telemetry_list_path))
                if path is not None
            },
        )

    def open(self) -> SourceSet:
        return SourceSet(self.settings())


class WarehouseResource(dg.ConfigurableResource):
    path: str = Field(description="the DuckDB file, <home>/warehouse.duckdb")
    lock_wait_seconds: float = 300.0

    def warehouse(self) -> Warehouse:
        return Warehouse(Path(self.path), lock_wait=self.lock_wait_seconds)


class SignavioResource(dg.ConfigurableResource):
    """Where the tables go: the Ingestion API when `api_url` is set, else the outbox."""

    api_url: str | None = Field(default=None, description="SIGNAVIO_API_URL")
    api_key: str | None = Field(default=None, description="SIGNAVIO_API_KEY (secret: bind with EnvVar)")
    status_url: str | None = Field(default=None, description="SIGNAVIO_STATUS_URL, with {execution_id}")
    dataset: str = Field(default=DEFAULT_DATASET, description="SIGNAVIO_DATASET, the table-name prefix")
    timeout: str = Field(default="30s", description="SIGNAVIO_TIMEOUT")
    max_retries: int = Field(default=3, description="SIGNAVIO_MAX_RETRIES")
    retry_wait_initial: float = 0.5
    tenant_id: str | None = Field(default=None, description="SIGNAVIO_TENANT_ID (sent as X-Tenant-ID)")
    max_body_mb: float = Field(default=50.0, description="split a table into several requests above this")
    poll_deadline: str = Field(default="10m", description="give up waiting for a load's final state after this")
    poll_interval: float = Field(default=1.0, description="SIGNAVIO_POLL_INTERVAL: first wait between status polls (s)")
    outbox_dir: str = Field(description="<home>/outbox")

    @contextlib.contextmanager
    def destination(self) -> Iterator[Destination]:
        if not self.api_url:
            yield Outbox(Path(self.outbox_dir))
            return
        from telemetry_pipeline.signavio.client import SignavioClient

        with SignavioClient(
            api_url=self.api_url,
            api_key=self.api_key or "",
            status_url_template=self.status_url or None,
            timeout=parse_duration(self.timeout),
            retry=RetryPolicy(max_retries=self.max_retries, wait_initial=self.retry_wait_initial),
            max_body_bytes=int(self.max_body_mb * 1024 * 1024),
            poll_interval=self.poll_interval,
            poll_deadline=parse_duration(self.poll_deadline),
            tenant_id=self.tenant_id or None,
        ) as client:
            yield client

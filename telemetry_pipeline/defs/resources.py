"""Dagster resources: the Dagster-facing form of `settings` (typed fields shown in the UI, secrets bound with
`EnvVar`), handing out plain domain objects. Built only by `from_settings`; no environment reads here,
no network at construction."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, create_model

from telemetry_pipeline.canonical.content import ContentPolicy, Governance
from telemetry_pipeline.canonical.identity import AgentDefaults
from telemetry_pipeline.policy.playbooks import Playbook, load_playbooks
from telemetry_pipeline.settings import (
    MB,
    HttpSettings,
    Secret,
    Settings,
    SignavioSettings,
    SourcesSettings,
    WarehouseSettings,
)
from telemetry_pipeline.signavio.models import Destination
from telemetry_pipeline.signavio.outbox import Outbox
from telemetry_pipeline.sources.registry import VARIABLES
from telemetry_pipeline.sources.source_set import SourceSet
from telemetry_pipeline.warehouse import DEFAULT_LEASE_SECONDS, Warehouse, open_warehouse


def _bound(secret: Secret | None) -> str | dg.EnvVar | None:
    """A secret as a resource field: an `EnvVar` when it came from the environment (never its value)."""
    if secret is None:
        return None
    return dg.EnvVar(secret.env_var) if secret.env_var else secret.value


class _HttpResource(dg.ConfigurableResource):
    """The fields of `HttpSettings`, for a resource whose domain objects call out over HTTP."""

    # Defaults: the settings' own (the resource is built from them; these matter only in hand-written config).
    timeout_seconds: float = HttpSettings.timeout
    max_retries: int = HttpSettings.max_retries
    retry_wait_initial: float = HttpSettings.retry_wait_initial

    @property
    def http(self) -> HttpSettings:
        return HttpSettings(self.timeout_seconds, self.max_retries, self.retry_wait_initial)


def _http_fields(http: HttpSettings) -> dict[str, Any]:
    return {"timeout_seconds": http.timeout, "max_retries": http.max_retries,
            "retry_wait_initial": http.retry_wait_initial}


class SourcesResource(_HttpResource):
    """The telemetry sources (`SourcesSettings`). The fields shared by every source are declared here; each
    source's own (its variables, e.g. `agora_url`) are added from the registry by `_with_source_fields`, and
    `from_settings` builds that class."""

    fetch_concurrency: int = SourcesSettings.fetch_concurrency
    settle_seconds: float = SourcesSettings.settle_seconds
    chunk_max_mb: float = Field(default=SourcesSettings.chunk_max_bytes / MB, description="EXPORT_BATCH_MAX_MB: a "
                                "run fetches about this much payload, exports it, then fetches more")
    agent_name: str | None = Field(default=None, description="AGENT_NAME / SERVICE_NAME: the agent when the data "
                                   "names none (before the data's agent type or service, and the host name)")

    @classmethod
    def from_settings(cls, s: SourcesSettings) -> SourcesResource:
        # A source's fields are added by `_with_source_fields`: typed here as what they are given.
        values: dict[str, Any] = {
            v.field: _bound(val) if isinstance(val := s.values[v.field], Secret) else val for v in VARIABLES
        }
        return _WITH_SOURCE_FIELDS(
            **values,
            **_http_fields(s.http),
            fetch_concurrency=s.fetch_concurrency,
            settle_seconds=s.settle_seconds,
            chunk_max_mb=s.chunk_max_bytes / MB,
            agent_name=s.agent_name,
        )

    @property
    def settings(self) -> SourcesSettings:
        values: dict[str, str | Secret | None] = {}
        for v in VARIABLES:
            value = getattr(self, v.field, None)
            values[v.field] = Secret(value) if v.secret and value else value
        return SourcesSettings(
            values=values,
            http=self.http,
            fetch_concurrency=self.fetch_concurrency,
            settle_seconds=self.settle_seconds,
            chunk_max_bytes=int(self.chunk_max_mb * MB),
            agent_name=self.agent_name,
        )

    def open(self) -> SourceSet:
        return SourceSet(self.settings)

    def agents(self) -> AgentDefaults:
        """The names a run falls back on when the data names no agent (`canonical.identity`)."""
        return AgentDefaults(self.agent_name or None, socket.gethostname() or AgentDefaults.host)


def _with_source_fields() -> type[SourcesResource]:
    """`SourcesResource` with a typed field for each source's variable (the registry's), as the UI shows it."""
    fields: dict[str, Any] = {v.field: (str | None, Field(default=None, description=v.description)) for v in VARIABLES}
    return create_model(SourcesResource.__name__, __base__=SourcesResource, __module__=__name__, **fields)


_WITH_SOURCE_FIELDS = _with_source_fields()


class WarehouseResource(dg.ConfigurableResource):
    """Where a run keeps payloads, the canonical model and its claims (`WarehouseSettings`): PostgreSQL when
    `url` is set, else the DuckDB file at `path`."""

    path: str = Field(description="the DuckDB file, <home>/warehouse.duckdb (used when url is unset)")
    url: str | None = Field(default=None, description="postgresql://... (secret: bound with EnvVar)")
    lease_seconds: float = Field(default=DEFAULT_LEASE_SECONDS, description="a claim lasts this long unless renewed")
    memory_limit: str = Field(default=WarehouseSettings.memory_limit,
                              description="DUCKDB_MEMORY_LIMIT: each DuckDB database a run computes in")

    @classmethod
    def from_settings(cls, settings: Settings) -> WarehouseResource:
        return cls(
            path=str(settings.warehouse_path),
            url=_bound(settings.warehouse.url),  # an EnvVar when read from the environment
            lease_seconds=settings.warehouse.lease_seconds,
            memory_limit=settings.warehouse.memory_limit,
        )

    def warehouse(self) -> Warehouse:
        return open_warehouse(self.url or None, Path(self.path), lease_seconds=self.lease_seconds,
                              memory_limit=self.memory_limit)


class SignavioResource(_HttpResource):
    """Where the tables go (`SignavioSettings`): the Ingestion API when `api_url` is set, else the outbox."""

    api_url: str | None = None
    api_key: str | None = Field(default=None, description="secret: bound with EnvVar")
    status_url: str | None = Field(default=None, description="status URL template, with {execution_id}")
    dataset: str = Field(description="the table-name prefix")
    tenant_id: str | None = None
    poll_interval_seconds: float = SignavioSettings.poll_interval
    poll_deadline_seconds: float = SignavioSettings.poll_deadline
    max_body_bytes: int = Field(description="a table above this is split into several requests")
    outbox_dir: str = Field(description="<home>/outbox")

    @classmethod
    def from_settings(cls, s: SignavioSettings, outbox_dir: Path) -> SignavioResource:
        return cls(
            api_url=s.api_url,
            api_key=_bound(s.api_key),
            status_url=s.status_url,
            dataset=s.dataset,
            **_http_fields(s.http),
            tenant_id=s.tenant_id,
            poll_interval_seconds=s.poll_interval,
            poll_deadline_seconds=s.poll_deadline,
            max_body_bytes=s.max_body_bytes,
            outbox_dir=str(outbox_dir),
        )

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
            timeout=self.timeout_seconds,
            retry=self.http.retry,
            max_body_bytes=self.max_body_bytes,
            poll_interval=self.poll_interval_seconds,
            poll_deadline=self.poll_deadline_seconds,
            tenant_id=self.tenant_id or None,
        ) as client:
            yield client


class MonitoringResource(dg.ConfigurableResource):
    """What the UI shows beyond the export: the data-quality limit and the process overview's window."""

    activity_alphabet_limit: int = Field(description="distinct activities per upload before the check warns")
    overview_window_hours: float = Field(description="sessions normalised this recently feed process_overview")
    overview_dir: str = Field(description="where process_overview writes its picture (`<home>/overview`)")


class ContentResource(dg.ConfigurableResource):
    """What leaves of the text that people and models wrote (`EXPORT_CONTENT`; secrets never leave):
    `canonical.content.Governance`."""

    policy: str = Field(default=Governance.policy.value, description="none | redacted | full")
    attributes_max_chars: int = Field(default=Governance.attributes_max_chars,
                                      description="an event's attributes cell is cut to this, marked where cut")
    value_max_chars: int = Field(default=Governance.value_max_chars,
                                 description="one text value (in attributes, an error, a task) is cut to this")

    @classmethod
    def from_settings(cls, governance: Governance) -> ContentResource:
        return cls(policy=governance.policy.value, attributes_max_chars=governance.attributes_max_chars,
                   value_max_chars=governance.value_max_chars)

    def governance(self) -> Governance:
        return Governance(ContentPolicy(self.policy), self.attributes_max_chars, self.value_max_chars)


class PlaybooksResource(dg.ConfigurableResource):
    """What each agent may do (`PLAYBOOKS_FILE`, `policy.playbooks`). The file is read when a run starts, so a
    changed playbook applies to the exports after it (definitions refuse an invalid one when they load)."""

    path: str | None = Field(default=None, description="the YAML file of playbooks; unset: every case unchecked")

    def playbooks(self) -> tuple[Playbook, ...]:
        return load_playbooks(Path(self.path) if self.path else None)
